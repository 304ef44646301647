"""Noise on the ground truth of denoising queries: DN-DETR's label flipping and box
jitter (the DN-DETR paper, section 3) and DINO's contrastive box noise, which makes
positive and negative copies (the DINO paper, section 3.3)."""
from typing import Optional

import torch
from torch import Tensor

__all__ = ["apply_box_noise", "apply_contrastive_box_noise", "apply_label_noise"]


def apply_label_noise(
    labels: Tensor, flip_prob: float, num_classes: int, generator: Optional[torch.Generator] = None
) -> Tensor:
    """Label flipping: each label independently, with probability ``flip_prob``, is
    replaced by a class drawn uniformly from the ``num_classes - 1`` OTHER classes.

    This follows the paper, so the flip rate equals the setting. (The official code
    resamples uniformly from all classes, so it may keep the true label: its
    effective flip rate is ``p * (1 - 1/C)``.) With one class there is nothing to
    flip to and the labels are returned unchanged. ``generator`` must live on the
    labels' device. Returns a new long tensor of the labels' shape.
    """
    if not 0.0 <= flip_prob <= 1.0:
        raise ValueError(f"label flip probability must be in [0, 1]; got {flip_prob}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1; got {num_classes}")
    if num_classes == 1 or labels.numel() == 0:
        return labels.clone()
    flip = torch.rand(labels.shape, generator=generator, device=labels.device) < flip_prob
    # uniform over {0..C-2}, shifted past the true label -> uniform over the other C-1 classes
    other = torch.randint(0, num_classes - 1, labels.shape, generator=generator, device=labels.device)
    other = other + (other >= labels).to(other.dtype)
    return torch.where(flip, other, labels)


def apply_box_noise(boxes: Tensor, noise_scale: float, generator: Optional[torch.Generator] = None) -> Tensor:
    """Box noise on normalised cxcywh boxes [..., 4] (DN-DETR): with
    ``u ~ U(-1, 1)^4`` per box and ``lambda = noise_scale``,
    ``cx' = cx + u1*lambda*w/2``, ``cy' = cy + u2*lambda*h/2`` (the centre stays in the
    box for lambda <= 1), ``w' = w + u3*lambda*w``, ``h' = h + u4*lambda*h``; every
    coordinate is then clamped to [0, 1]. ``generator`` must live on the boxes' device.
    """
    if noise_scale < 0:
        raise ValueError(f"box noise scale must be >= 0; got {noise_scale}")
    if boxes.shape[-1] != 4:
        raise ValueError(f"boxes must be [..., 4] cxcywh; got {tuple(boxes.shape)}")
    if noise_scale == 0 or boxes.numel() == 0:
        return boxes.clamp(0, 1)
    u = torch.rand(boxes.shape, generator=generator, device=boxes.device, dtype=boxes.dtype) * 2 - 1
    wh = boxes[..., 2:]
    spread = torch.cat([wh / 2, wh], dim=-1)  # max |shift| of (cx, cy, w, h) per unit of lambda
    return (boxes + u * spread * noise_scale).clamp(0, 1)


def apply_contrastive_box_noise(
    boxes: Tensor, noise_scale: float, negative: Tensor, generator: Optional[torch.Generator] = None
) -> Tensor:
    """DINO's contrastive box noise on normalised cxcywh boxes [n, 4]: every corner
    coordinate moves by ``s * u * (w/2 or h/2) * noise_scale`` with a random sign ``s``,
    ``u ~ U(0, 1)`` for positive copies and ``u ~ U(1, 2)`` for the negatives
    (``negative``: bool [n]). So a positive lies inside the square of half-size
    lambda1 = ``noise_scale`` around its ground truth (in units of half its sides) and
    a negative between that square and the one of 2 * lambda1: near enough to be
    confusable, far enough to be "no object" (the DINO paper, section 3.3).

    Coordinates are clamped to [0, 1]. Corners that crossed over (a negative's left
    corner can move past its right one) give the box they span: DINO's code keeps the
    negative width, which its logit then clamps to a zero-width box.
    """
    if noise_scale < 0:
        raise ValueError(f"box noise scale must be >= 0; got {noise_scale}")
    if boxes.dim() != 2 or boxes.shape[-1] != 4 or negative.shape != boxes.shape[:1]:
        raise ValueError(f"boxes must be [n, 4] cxcywh with negative [n]; got {tuple(boxes.shape)}, "
                         f"{tuple(negative.shape)}")
    if boxes.numel() == 0:
        return boxes.clone()
    centre, size = boxes[:, :2], boxes[:, 2:]
    corners = torch.cat([centre - size / 2, centre + size / 2], dim=-1)
    half = torch.cat([size, size], dim=-1) / 2
    u = torch.rand(boxes.shape, generator=generator, device=boxes.device, dtype=boxes.dtype)
    u = u + negative[:, None].to(boxes.dtype)
    sign = torch.randint(0, 2, boxes.shape, generator=generator, device=boxes.device).to(boxes.dtype) * 2 - 1
    corners = (corners + sign * u * half * noise_scale).clamp(0, 1)
    low = torch.minimum(corners[:, :2], corners[:, 2:])
    high = torch.maximum(corners[:, :2], corners[:, 2:])
    return torch.cat([(low + high) / 2, high - low], dim=-1)
