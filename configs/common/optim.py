"""DETR's optimiser: AdamW, backbone at a tenth of the LR, full-model gradient clipping.
``params.model`` is filled in by the training loop."""
from detectron2.config import LazyCall as L

from updetr_d2.solver import adamw, detr_param_groups

AdamW = L(adamw)(
    params=L(detr_param_groups)(base_lr="${..lr}", weight_decay="${..weight_decay}", backbone_multiplier=0.1),
    lr=1e-4,
    weight_decay=1e-4,
    clip_max_norm=0.1,
)
