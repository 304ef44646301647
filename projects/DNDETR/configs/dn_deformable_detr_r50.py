"""LazyConfig twin of dn_deformable_detr_r50.yaml: anchor-query Deformable DETR-R50 with box
refinement, trained with 5 denoising groups; 50 COCO epochs at batch 16."""
from ....configs.common.data.detr_coco import dataloader
from ....configs.common.models.deformable_detr_r50 import model, use_dn_queries
from ....configs.common.optim import AdamW as optimizer
from ....configs.common.schedule import epoch_schedule
from ....configs.common.train import train

model.with_box_refine = True
use_dn_queries(model)

optimizer.lr = 1e-4
optimizer.params.offset_multiplier = 0.1
dataloader.train.total_batch_size = 16

# Step decay by 10x after 40 of 50 epochs (7393 iterations an epoch at batch 16).
lr_multiplier = epoch_schedule(train, epochs=50, decay_epoch=40, iters_per_epoch=7393)
train.output_dir = "./output/dn_deformable_detr_r50_lazy"
