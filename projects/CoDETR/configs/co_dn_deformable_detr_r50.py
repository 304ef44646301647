"""LazyConfig twin of co_dn_deformable_detr_r50.yaml: Co-DETR on DN-Deformable-DETR-R50."""
from ....configs.common.models.deformable_detr_r50 import dn_query_generator
from .co_deformable_detr_r50 import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401

model.update(two_stage=False, query_generator=dn_query_generator())
model.transformer.update(two_stage=False, anchor_queries=True)
model.positive_queries.anchor_queries = True
train.output_dir = "./output/co_dn_deformable_detr_r50_lazy"
