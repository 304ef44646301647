"""LazyConfig twin of detr_R18_demo.yaml: a small DETR (ResNet-18 GN from scratch, 128-wide
2+2-layer pre-norm transformer, 20 queries) on the generated demo data."""
from ..common.data.detr_coco import dataloader
from ..common.demo import use_demo_detr_data, use_demo_model, use_demo_optimizer, use_demo_schedule
from ..common.models.detr_r50 import model
from ..common.optim import AdamW as optimizer
from ..common.train import train

use_demo_model(model, num_queries=20)
model.transformer.normalize_before = True
use_demo_detr_data(dataloader)
use_demo_optimizer(optimizer)
lr_multiplier = use_demo_schedule(train)
train.output_dir = "./output/demo_detr_lazy"
