"""LazyConfig twin of co_deformable_detr_r50.yaml: Co-Deformable-DETR-R50, 12 COCO epochs
at batch 16."""
from detectron2.config import LazyCall as L
from detectron2.solver import WarmupParamScheduler
from fvcore.common.param_scheduler import MultiStepParamScheduler

from ....configs.common.data.detr_coco import dataloader
from ....configs.common.models.co_deformable_detr_r50 import model
from ....configs.common.optim import AdamW as optimizer
from ....configs.common.train import train

optimizer.lr = 2e-4
optimizer.params.offset_multiplier = 0.1  # sampling offsets and reference points

# Step decay by 10x after 11 of 12 epochs (7393 iterations an epoch at batch 16).
lr_multiplier = L(WarmupParamScheduler)(
    scheduler=L(MultiStepParamScheduler)(values=[1.0, 0.1], milestones=[81323], num_updates=88716),
    warmup_length=0.0,
    warmup_factor=1.0,
)
dataloader.train.total_batch_size = 16

train.max_iter = 88716
train.checkpointer.period = 5000
train.eval_period = 5000
train.output_dir = "./output/co_deformable_detr_r50_lazy"
