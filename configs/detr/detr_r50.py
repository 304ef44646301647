"""LazyConfig twin of detr_r50.yaml: DETR-R50, 500 COCO epochs at batch 64."""
from detectron2.config import LazyCall as L
from detectron2.solver import WarmupParamScheduler
from fvcore.common.param_scheduler import MultiStepParamScheduler

from ..common.data.detr_coco import dataloader
from ..common.models.detr_r50 import model
from ..common.optim import AdamW as optimizer
from ..common.train import train

# Step decay by 10x after 400 of 500 epochs (1848 iterations an epoch at batch 64).
lr_multiplier = L(WarmupParamScheduler)(
    scheduler=L(MultiStepParamScheduler)(values=[1.0, 0.1], milestones=[739200], num_updates=924000),
    warmup_length=0.0,
    warmup_factor=1.0,
)

train.max_iter = 924000
train.checkpointer.period = 5000
train.eval_period = 5000
train.output_dir = "./output/detr_r50_lazy"
