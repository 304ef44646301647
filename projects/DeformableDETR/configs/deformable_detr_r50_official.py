"""LazyConfig twin of deformable_detr_r50_official.yaml: Deformable DETR-R50 for official
weights, with their preprocessing (RGB, ImageNet mean/std from the base, batches padded
to the largest image only, test resize 800 / 1333)."""
from ....configs.common.official import use_official_preprocessing
from .deformable_detr_r50 import dataloader, lr_multiplier, model, optimizer, train

__all__ = ["dataloader", "lr_multiplier", "model", "optimizer", "train"]  # the whole config, re-exported

model.num_classes = 80
use_official_preprocessing(model, dataloader)
train.output_dir = "./output/deformable_detr_r50_official_lazy"
