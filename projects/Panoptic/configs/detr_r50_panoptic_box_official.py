"""LazyConfig twin of detr_r50_panoptic_box_official.yaml: the box stage of DETR-R50 panoptic
for official weights, with their preprocessing (RGB, ImageNet mean/std from the base,
batches padded to the largest image only, test resize 800 / 1333), as
configs/detr/detr_r50_official.py for detection."""
from .detr_r50_panoptic_box import dataloader, lr_multiplier, model, optimizer, train

__all__ = ["dataloader", "lr_multiplier", "model", "optimizer", "train"]  # the whole config, re-exported

# Padding to a multiple of 32 moves the official weights' outputs.
model.size_divisibility = 0
dataloader.test.mapper.image_format = "RGB"
dataloader.test.mapper.augmentations[0].short_edge_length = 800
dataloader.test.mapper.augmentations[0].max_size = 1333
train.output_dir = "./output/detr_r50_panoptic_box_official_lazy"
