"""LazyConfig twin of dino_r50.yaml: DINO-4scale-R50, 12 COCO epochs at batch 16."""
from ....configs.common.data.detr_coco import dataloader
from ....configs.common.models.deformable_detr_r50 import model, use_dino
from ....configs.common.optim import AdamW as optimizer
from ....configs.common.schedule import epoch_schedule
from ....configs.common.train import train

use_dino(model)
model.transformer.update(dim_feedforward=2048, dropout=0.0)
model.test_topk = 300

optimizer.lr = 1e-4
optimizer.params.offset_multiplier = 0.1  # sampling offsets and reference points
dataloader.train.total_batch_size = 16

# Step decay by 10x after 11 of 12 epochs (7393 iterations an epoch at batch 16).
lr_multiplier = epoch_schedule(train, epochs=12, decay_epoch=11, iters_per_epoch=7393)
train.output_dir = "./output/dino_r50_lazy"
