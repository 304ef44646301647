"""LazyConfig twin of co_deformable_detr_R18_demo.yaml: the demo Deformable DETR (4 levels)
trained with Faster R-CNN and ATSS auxiliary heads and their positive queries."""
from ....configs.common.models.co_deformable_detr_r50 import add_co_detr
from ...DeformableDETR.configs.deformable_detr_R18_demo import (  # noqa: F401
    dataloader,
    lr_multiplier,
    model,
    optimizer,
    train,
)

model.transformer.num_feature_levels = 4
add_co_detr(model, num_decoder_layers=2)
train.output_dir = "./output/demo_co_deformable_detr_lazy"
