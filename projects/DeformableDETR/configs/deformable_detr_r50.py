"""LazyConfig twin of deformable_detr_r50.yaml: Deformable DETR-R50, 50 COCO epochs at batch 32.

Variants in a few lines, e.g. box refinement and two-stage (300 proposals as queries)::

    model.update(with_box_refine=True, two_stage=True, query_generator=None, num_queries=300)
    model.transformer.two_stage = True
"""
from ....configs.common.data.detr_coco import dataloader
from ....configs.common.models.deformable_detr_r50 import model
from ....configs.common.optim import AdamW as optimizer
from ....configs.common.schedule import epoch_schedule
from ....configs.common.train import train

optimizer.lr = 2e-4
optimizer.params.offset_multiplier = 0.1  # sampling offsets and reference points
dataloader.train.total_batch_size = 32

# Step decay by 10x after 40 of 50 epochs (3697 iterations an epoch at batch 32).
lr_multiplier = epoch_schedule(train, epochs=50, decay_epoch=40, iters_per_epoch=3697)
train.output_dir = "./output/deformable_detr_r50_lazy"
