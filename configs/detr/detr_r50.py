"""LazyConfig twin of detr_r50.yaml: DETR-R50, 500 COCO epochs at batch 64."""
from ..common.data.detr_coco import dataloader
from ..common.models.detr_r50 import model
from ..common.optim import AdamW as optimizer
from ..common.schedule import epoch_schedule
from ..common.train import train

# Step decay by 10x after 400 of 500 epochs (1848 iterations an epoch at batch 64).
lr_multiplier = epoch_schedule(train, epochs=500, decay_epoch=400, iters_per_epoch=1848)
train.output_dir = "./output/detr_r50_lazy"
