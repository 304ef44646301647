"""LazyConfig twin of dino_R18_demo.yaml: the demo Deformable DETR (ResNet-18) with DINO's
parts, on the generated demo data."""
from ....configs.common.models.deformable_detr_r50 import use_dino
from ...DeformableDETR.configs.deformable_detr_R18_demo import (  # noqa: F401
    dataloader,
    lr_multiplier,
    model,
    optimizer,
    train,
)

use_dino(model, num_queries=30)
train.output_dir = "./output/demo_dino_lazy"
