"""Layers shared by the project's DETR-family models."""
from .box_ops import (
    box_cxcywh_to_xyxy,
    box_xyxy_to_cxcywh,
    elementwise_generalized_box_iou,
    generalized_box_iou,
    inverse_sigmoid,
)

__all__ = [
    "box_cxcywh_to_xyxy",
    "box_xyxy_to_cxcywh",
    "elementwise_generalized_box_iou",
    "generalized_box_iou",
    "inverse_sigmoid",
]
