"""Box helpers for DETR-family models.

Boxes are ``[..., 4]`` tensors. Models predict normalised ``(cx, cy, w, h)``
boxes; IoU-style measures want corners ``(x1, y1, x2, y2)``. Conversions and the
pairwise GIoU come from ``torchvision.ops``; only the element-wise GIoU of
matched pairs (what the GIoU loss needs, without building an N x N matrix) is
written here.
"""
import torch
from torch import Tensor
from torchvision.ops import box_convert, generalized_box_iou

__all__ = [
    "box_cxcywh_to_xyxy",
    "box_xyxy_to_cxcywh",
    "generalized_box_iou",
    "elementwise_generalized_box_iou",
    "inverse_sigmoid",
]


def box_cxcywh_to_xyxy(boxes: Tensor) -> Tensor:
    """``(cx, cy, w, h)`` -> ``(x1, y1, x2, y2)``, any leading shape."""
    return box_convert(boxes, "cxcywh", "xyxy")


def box_xyxy_to_cxcywh(boxes: Tensor) -> Tensor:
    """``(x1, y1, x2, y2)`` -> ``(cx, cy, w, h)``, any leading shape."""
    return box_convert(boxes, "xyxy", "cxcywh")


# ``generalized_box_iou(boxes1 [N, 4], boxes2 [M, 4]) -> [N, M]`` (xyxy) is
# torchvision's, re-exported. It divides without an eps, so a pair of two
# zero-area boxes gives NaN; the matcher turns that into a clear error.


def elementwise_generalized_box_iou(boxes1: Tensor, boxes2: Tensor, eps: float = 1e-7) -> Tensor:
    """GIoU of corresponding xyxy boxes: ``[..., 4]`` x ``[..., 4]`` -> ``[...]``.

    Shapes broadcast. ``eps`` in both denominators keeps degenerate boxes (zero
    width or height, e.g. a saturated sigmoid) finite, values and gradients.
    Half-precision inputs are computed in float32 (areas underflow otherwise).
    """
    if boxes1.dtype in (torch.float16, torch.bfloat16):
        boxes1 = boxes1.float()
    if boxes2.dtype in (torch.float16, torch.bfloat16):
        boxes2 = boxes2.float()
    area1 = (boxes1[..., 2] - boxes1[..., 0]) * (boxes1[..., 3] - boxes1[..., 1])
    area2 = (boxes2[..., 2] - boxes2[..., 0]) * (boxes2[..., 3] - boxes2[..., 1])

    # Intersection (empty -> 0 through the clamp).
    lt = torch.max(boxes1[..., :2], boxes2[..., :2])
    rb = torch.min(boxes1[..., 2:], boxes2[..., 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = area1 + area2 - inter
    iou = inter / (union + eps)

    # Smallest enclosing box.
    lt_c = torch.min(boxes1[..., :2], boxes2[..., :2])
    rb_c = torch.max(boxes1[..., 2:], boxes2[..., 2:])
    wh_c = (rb_c - lt_c).clamp(min=0)
    area_c = wh_c[..., 0] * wh_c[..., 1]
    return iou - (area_c - union) / (area_c + eps)


def inverse_sigmoid(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """logit(x) with x clamped to [0, 1] and both x and 1 - x to at least ``eps``
    (boxes at the image border stay finite)."""
    x = x.clamp(0, 1)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))
