"""LazyConfig twin of deformable_detr_R18_demo.yaml: a small Deformable DETR (ResNet-18 GN from
scratch, 3 levels, 128-wide 2+2-layer deformable transformer, 30 queries, box refinement) on
the generated demo data."""
from ....configs.common.data.detr_coco import dataloader
from ....configs.common.demo import use_demo_detr_data, use_demo_model, use_demo_optimizer, use_demo_schedule
from ....configs.common.models.deformable_detr_r50 import model
from ....configs.common.optim import AdamW as optimizer
from ....configs.common.train import train

use_demo_model(model, num_queries=30)
model.transformer.num_feature_levels = 3
model.with_box_refine = True
use_demo_detr_data(dataloader)
use_demo_optimizer(optimizer)
optimizer.params.offset_multiplier = 0.1  # sampling offsets and reference points
lr_multiplier = use_demo_schedule(train)
train.output_dir = "./output/demo_deformable_detr_lazy"
