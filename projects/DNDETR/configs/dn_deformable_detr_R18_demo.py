"""LazyConfig twin of dn_deformable_detr_R18_demo.yaml: the demo Deformable DETR with anchor
queries, trained with denoising."""
from detectron2.config import LazyCall as L

from updetr_d2.modeling.denoising import DenoisingQueries
from updetr_d2.modeling.queries import AnchorQueries

from ...DeformableDETR.configs.deformable_detr_R18_demo import (  # noqa: F401
    dataloader,
    lr_multiplier,
    model,
    optimizer,
    train,
)

model.transformer.anchor_queries = True
model.query_generator = L(DenoisingQueries)(
    base=L(AnchorQueries)(num_queries="${...num_queries}", hidden_dim="${...hidden_dim}", with_indicator=True),
    num_classes="${..num_classes}",
    hidden_dim="${..hidden_dim}",
    num_heads="${..transformer.nhead}",
    num_groups=5,
    label_noise_prob=0.2,
    box_noise_scale=0.4,
    mask_padding=True,
)
train.output_dir = "./output/demo_dn_deformable_detr_lazy"
