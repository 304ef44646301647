"""ATSS's label assignment (Zhang et al., "Bridging the Gap Between Anchor-based and
Anchor-free Detection via Adaptive Training Sample Selection", CVPR 2020) as pure
functions on one image's anchors and GT boxes; :mod:`.atss` runs it per image.

Boxes are xyxy; labels ``0..num_classes-1``, background ``num_classes``.
"""
from typing import NamedTuple, Optional, Sequence, Union

import torch
from detectron2.structures import Boxes, pairwise_iou
from torch import Tensor

__all__ = ["ATSSAssignment", "assign_atss"]

# A candidate's centre must be at least this far (pixels) inside the GT box; the margin of
# the official ATSS code and mmdet (``> 0.01``), i.e. "strictly inside" up to rounding.
_CENTER_INSIDE_MARGIN = 0.01


class ATSSAssignment(NamedTuple):
    """Result of :func:`assign_atss` (unpacks as a tuple).

    labels: [A] long, the assigned class, ``num_classes`` for background.
    matched_idxs: [A] long, index of the assigned GT, -1 for background.
    thresholds: [G] the IoU threshold (mean + std of the candidates' IoUs) of each GT.
    """

    labels: Tensor
    matched_idxs: Tensor
    thresholds: Tensor


def assign_atss(
    anchors: Union[Boxes, Tensor],
    num_anchors_per_level: Sequence[int],
    gt_boxes: Union[Boxes, Tensor],
    gt_labels: Tensor,
    num_classes: int,
    topk: int = 9,
    *,
    anchor_centers: Optional[Tensor] = None,
    valid: Optional[Tensor] = None,
) -> ATSSAssignment:
    """Adaptive Training Sample Selection for one image.

    Args:
        anchors: [A, 4] xyxy, the levels concatenated in order.
        num_anchors_per_level: anchors of each level (sum = A); a level may have 0.
        gt_boxes: [G, 4] xyxy (G may be 0); gt_labels: [G] long in ``0..num_classes-1``.
        topk: candidates per level and GT: the ``topk`` anchors whose centres are
            nearest (L2) to the GT centre; all of a level's (valid) anchors if fewer.
        anchor_centers: [A, 2] the points used for distances and the inside test
            (default: the anchors' centres).
        valid: [A] bool, anchors allowed to be candidates (default: all); the others stay
            background and do not enter the threshold statistics.

    For each GT the candidates' IoUs give the threshold ``mean + std``; candidates with
    IoU >= threshold whose centre lies strictly inside the GT are positive. ``std`` is the
    unbiased (n - 1) one, as ``Tensor.std`` in the official ATSS code and mmdet's
    ``ATSSAssigner`` (0 when there is a single candidate). An anchor positive for several
    GTs goes to the one it overlaps most (highest IoU).
    """
    anchors = anchors.tensor if isinstance(anchors, Boxes) else anchors
    gt_boxes = gt_boxes.tensor if isinstance(gt_boxes, Boxes) else gt_boxes
    if anchors.dim() != 2 or anchors.shape[1] != 4:
        raise ValueError(f"assign_atss: anchors must be [A, 4], got {tuple(anchors.shape)}")
    if gt_boxes.dim() != 2 or gt_boxes.shape[1] != 4 or gt_labels.shape != (gt_boxes.shape[0],):
        raise ValueError(
            f"assign_atss: gt_boxes {tuple(gt_boxes.shape)} / gt_labels {tuple(gt_labels.shape)} must be [G, 4] / [G]"
        )
    num_anchors, num_gt = anchors.shape[0], gt_boxes.shape[0]
    if sum(num_anchors_per_level) != num_anchors:
        raise ValueError(
            f"assign_atss: num_anchors_per_level {list(num_anchors_per_level)} do not sum to {num_anchors}"
        )
    if anchor_centers is None:
        anchor_centers = (anchors[:, :2] + anchors[:, 2:]) / 2
    if anchor_centers.shape != (num_anchors, 2):
        raise ValueError(f"assign_atss: anchor_centers must be [{num_anchors}, 2], got {tuple(anchor_centers.shape)}")
    if valid is not None and valid.shape != (num_anchors,):
        raise ValueError(f"assign_atss: valid must be [{num_anchors}], got {tuple(valid.shape)}")

    device = anchors.device
    labels = torch.full((num_anchors,), num_classes, dtype=torch.long, device=device)
    matched_idxs = torch.full((num_anchors,), -1, dtype=torch.long, device=device)
    thresholds = torch.zeros(num_gt, dtype=torch.float32, device=device)
    if num_gt == 0 or num_anchors == 0:
        return ATSSAssignment(labels, matched_idxs, thresholds)

    anchors = anchors.float()
    gt_boxes = gt_boxes.float().to(device)
    anchor_centers = anchor_centers.float()
    ious = pairwise_iou(Boxes(anchors), Boxes(gt_boxes))  # [A, G]
    gt_centers = (gt_boxes[:, :2] + gt_boxes[:, 2:]) / 2
    # Explicit differences, not torch.cdist (its matmul path is inexact and would reorder ties).
    distances = (anchor_centers[:, None, :] - gt_centers[None, :, :]).pow(2).sum(-1).sqrt()  # [A, G]
    if valid is not None:
        distances = distances.masked_fill(~valid[:, None], float("inf"))

    # The same k for every GT of a level (it only depends on the level's valid anchors).
    candidate_idxs = []
    start = 0
    for n in num_anchors_per_level:
        n_valid = n if valid is None else int(valid[start : start + n].sum())
        k = min(topk, n_valid)
        if k > 0:
            idx = distances[start : start + n].topk(k, dim=0, largest=False).indices  # [k, G]
            candidate_idxs.append(idx + start)
        start += n
    if not candidate_idxs:
        return ATSSAssignment(labels, matched_idxs, thresholds)
    candidate_idxs = torch.cat(candidate_idxs, dim=0)  # [K, G], distinct per column

    candidate_ious = ious.gather(0, candidate_idxs)  # [K, G]
    mean = candidate_ious.mean(0)
    std = candidate_ious.std(0) if candidate_ious.shape[0] > 1 else torch.zeros_like(mean)
    thresholds = mean + std
    is_pos = candidate_ious >= thresholds[None, :]

    centers = anchor_centers[candidate_idxs]  # [K, G, 2]
    dist_to_sides = torch.stack(
        [
            centers[..., 0] - gt_boxes[None, :, 0],
            centers[..., 1] - gt_boxes[None, :, 1],
            gt_boxes[None, :, 2] - centers[..., 0],
            gt_boxes[None, :, 3] - centers[..., 1],
        ],
        dim=-1,
    )
    is_pos &= dist_to_sides.min(dim=-1).values > _CENTER_INSIDE_MARGIN

    # Scatter the positives' IoUs back to [A, G]; -inf elsewhere. Highest IoU wins conflicts.
    pos_ious = torch.full_like(ious, float("-inf"))
    pos_ious.scatter_(0, candidate_idxs, candidate_ious.masked_fill(~is_pos, float("-inf")))
    best_iou, best_gt = pos_ious.max(dim=1)
    positive = best_iou > float("-inf")
    matched_idxs[positive] = best_gt[positive]
    labels[positive] = gt_labels.to(device)[best_gt[positive]]
    return ATSSAssignment(labels, matched_idxs, thresholds)
