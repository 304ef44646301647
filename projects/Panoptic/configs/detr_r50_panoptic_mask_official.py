"""LazyConfig twin of detr_r50_panoptic_mask_official.yaml: DETR-R50 panoptic with the mask
head for the official DETRsegm weights, with their preprocessing (RGB, ImageNet mean/std
from the base, batches padded to the largest image only, test resize 800 / 1333), as
configs/detr/detr_r50_official.py for detection."""
from ....configs.common.official import use_official_preprocessing
from .detr_r50_panoptic_mask import dataloader, lr_multiplier, model, optimizer, train

__all__ = ["dataloader", "lr_multiplier", "model", "optimizer", "train"]  # the whole config, re-exported

use_official_preprocessing(model, dataloader)
train.output_dir = "./output/detr_r50_panoptic_mask_official_lazy"
