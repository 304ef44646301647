"""Plain layers shared by the project's DETR-family models. Nothing here imports from
the rest of the package (``modeling``, ``methods``, ``data``, ``engine``)."""
from .attention import MultiheadAttention, build_attention_mask
from .box_ops import (
    box_cxcywh_to_xyxy,
    box_xyxy_to_cxcywh,
    elementwise_generalized_box_iou,
    generalized_box_iou,
    inverse_sigmoid,
)
from .encoder_memory import EncoderMemory
from .mlp import MLP

__all__ = [
    "EncoderMemory",
    "MLP",
    "MultiheadAttention",
    "box_cxcywh_to_xyxy",
    "box_xyxy_to_cxcywh",
    "build_attention_mask",
    "elementwise_generalized_box_iou",
    "generalized_box_iou",
    "inverse_sigmoid",
]
