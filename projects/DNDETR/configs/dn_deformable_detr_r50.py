"""LazyConfig twin of dn_deformable_detr_r50.yaml: anchor-query Deformable DETR-R50 with box
refinement, trained with 5 denoising groups; 50 COCO epochs at batch 16."""
from detectron2.config import LazyCall as L
from detectron2.solver import WarmupParamScheduler
from fvcore.common.param_scheduler import MultiStepParamScheduler

from ....configs.common.data.detr_coco import dataloader
from ....configs.common.models.deformable_detr_r50 import dn_query_generator, model
from ....configs.common.optim import AdamW as optimizer
from ....configs.common.train import train

model.with_box_refine = True
model.transformer.anchor_queries = True
model.query_generator = dn_query_generator()

optimizer.lr = 1e-4
optimizer.params.offset_multiplier = 0.1

# Step decay by 10x after 40 of 50 epochs (7393 iterations an epoch at batch 16).
lr_multiplier = L(WarmupParamScheduler)(
    scheduler=L(MultiStepParamScheduler)(values=[1.0, 0.1], milestones=[295720], num_updates=369650),
    warmup_length=0.0,
    warmup_factor=1.0,
)
dataloader.train.total_batch_size = 16

train.max_iter = 369650
train.checkpointer.period = 5000
train.eval_period = 5000
train.output_dir = "./output/dn_deformable_detr_r50_lazy"
