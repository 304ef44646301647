"""LazyConfig twin of co_dn_deformable_detr_r50.yaml: Co-DETR on DN-Deformable-DETR-R50
(single-stage: the two-stage proposals' 300 become 300 denoised anchor queries)."""
from ....configs.common.models.deformable_detr_r50 import use_dn_queries
from .co_deformable_detr_r50 import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401

model.two_stage = False
model.transformer.two_stage = False
use_dn_queries(model)
model.positive_queries.anchor_queries = True
train.output_dir = "./output/co_dn_deformable_detr_r50_lazy"
