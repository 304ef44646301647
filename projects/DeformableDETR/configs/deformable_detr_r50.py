"""LazyConfig twin of deformable_detr_r50.yaml: Deformable DETR-R50, 50 COCO epochs at batch 32.

Variants in a few lines, e.g. box refinement and two-stage::

    model.update(with_box_refine=True, two_stage=True, query_generator=None)
    model.transformer.two_stage = True
"""
from detectron2.config import LazyCall as L
from detectron2.solver import WarmupParamScheduler
from fvcore.common.param_scheduler import MultiStepParamScheduler

from ....configs.common.data.detr_coco import dataloader
from ....configs.common.models.deformable_detr_r50 import model
from ....configs.common.optim import AdamW as optimizer
from ....configs.common.train import train

optimizer.lr = 2e-4
optimizer.params.offset_multiplier = 0.1  # sampling offsets and reference points

# Step decay by 10x after 40 of 50 epochs (3697 iterations an epoch at batch 32).
lr_multiplier = L(WarmupParamScheduler)(
    scheduler=L(MultiStepParamScheduler)(values=[1.0, 0.1], milestones=[147880], num_updates=184850),
    warmup_length=0.0,
    warmup_factor=1.0,
)
dataloader.train.total_batch_size = 32

train.max_iter = 184850
train.checkpointer.period = 5000
train.eval_period = 5000
train.output_dir = "./output/deformable_detr_r50_lazy"
