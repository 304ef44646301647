"""LazyConfig twin of dn_deformable_detr_R18_demo.yaml: the demo Deformable DETR with anchor
queries, trained with denoising."""
from ....configs.common.models.deformable_detr_r50 import use_dn_queries
from ...DeformableDETR.configs.deformable_detr_R18_demo import (  # noqa: F401
    dataloader,
    lr_multiplier,
    model,
    optimizer,
    train,
)

use_dn_queries(model)
train.output_dir = "./output/demo_dn_deformable_detr_lazy"
