"""LazyConfig twin of co_deformable_detr_r50.yaml: Co-Deformable-DETR-R50, 12 COCO epochs
at batch 16."""
from ....configs.common.data.detr_coco import dataloader
from ....configs.common.models.co_deformable_detr_r50 import model
from ....configs.common.optim import AdamW as optimizer
from ....configs.common.schedule import epoch_schedule
from ....configs.common.train import train

optimizer.lr = 2e-4
optimizer.params.offset_multiplier = 0.1  # sampling offsets and reference points
dataloader.train.total_batch_size = 16

# Step decay by 10x after 11 of 12 epochs (7393 iterations an epoch at batch 16).
lr_multiplier = epoch_schedule(train, epochs=12, decay_epoch=11, iters_per_epoch=7393)
train.output_dir = "./output/co_deformable_detr_r50_lazy"
