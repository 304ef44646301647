"""Hungarian matching between predictions and ground truth (DETR, Carion et al. 2020).

Each image's predictions are assigned one-to-one to its targets by minimising

    cost = cost_class * C_class + cost_bbox * L1(cxcywh) + cost_giou * (-GIoU)

with ``scipy.optimize.linear_sum_assignment``. The cost of the whole batch is
computed in one batched pass (every prediction against every target of the
batch), then each image's block is solved on its own.

Class costs:

* ``"ce"`` (DETR): ``-p(target class)`` with ``p`` the softmax over C+1 logits.
* ``"focal"`` (Deformable DETR): ``pos - neg`` with, for ``p = sigmoid(logit)``
  of the target class, ``pos = alpha (1-p)^gamma (-log p)`` and
  ``neg = (1-alpha) p^gamma (-log(1-p))``; logits have C columns.
"""
from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn
from torch.nn import functional as F

from ..layers.box_ops import box_cxcywh_to_xyxy, generalized_box_iou
from ..layers.precision import float32_region

__all__ = ["HungarianMatcher"]

Indices = List[Tuple[Tensor, Tensor]]


class HungarianMatcher(nn.Module):
    """One-to-one assignment of predictions to targets, per image.

    ``forward(outputs, targets)``:

    * ``outputs["pred_logits"]`` [B, Q, C+1] (``"ce"``) or [B, Q, C] (``"focal"``),
      ``outputs["pred_boxes"]`` [B, Q, 4], normalised cxcywh; other keys ignored.
    * ``targets``: B dicts with ``labels`` LongTensor[n_i] and ``boxes`` [n_i, 4]
      (normalised cxcywh).

    Returns B pairs ``(pred_idx, tgt_idx)`` of int64 CPU tensors of length
    ``min(Q, n_i)``, sorted by ``pred_idx``. Raises ``ValueError`` when the cost
    has NaN/inf (diverged predictions, invalid boxes).

    Subclasses can change the class cost by overriding :meth:`class_cost`.
    """

    CLASS_COST_TYPES = ("ce", "focal")

    def __init__(
        self,
        cost_class: float = 1.0,
        cost_bbox: float = 5.0,
        cost_giou: float = 2.0,
        class_cost_type: str = "ce",
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
    ):
        super().__init__()
        if class_cost_type not in self.CLASS_COST_TYPES:
            raise ValueError(f"class_cost_type must be one of {self.CLASS_COST_TYPES}, got {class_cost_type!r}")
        if cost_class == 0 and cost_bbox == 0 and cost_giou == 0:
            raise ValueError("HungarianMatcher: all cost weights are 0, every assignment would be equal")
        self.cost_class = cost_class
        self.cost_bbox = cost_bbox
        self.cost_giou = cost_giou
        self.class_cost_type = class_cost_type
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma

    def extra_repr(self) -> str:
        return (
            f"cost_class={self.cost_class}, cost_bbox={self.cost_bbox}, cost_giou={self.cost_giou}, "
            f"class_cost_type={self.class_cost_type!r}"
        )

    def class_cost(self, logits: Tensor, tgt_labels: Tensor) -> Tensor:
        """Cost [P, N] of predictions (``logits`` [P, C(+1)]) for target labels [N]."""
        if self.class_cost_type == "ce":
            # The constant 1 of "1 - p" does not change the assignment, so it is left out.
            return -logits.softmax(-1)[:, tgt_labels]
        # Focal: softplus(-x) = -log(sigmoid(x)), softplus(x) = -log(1 - sigmoid(x)),
        # stable for large |x| where log(p) of a rounded p would be -inf.
        x = logits[:, tgt_labels]
        p = x.sigmoid()
        pos = self.focal_alpha * (1 - p) ** self.focal_gamma * F.softplus(-x)
        neg = (1 - self.focal_alpha) * p**self.focal_gamma * F.softplus(x)
        return pos - neg

    @torch.no_grad()
    def cost_matrix(self, outputs: Dict[str, Tensor], targets: Sequence[Dict[str, Tensor]]) -> Tensor:
        """Cost of every prediction against every target of the batch: [B, Q, sum n_i].

        Targets are concatenated in image order; image i's block is
        ``[i, :, sum(n[:i]) : sum(n[:i+1])]``.
        """
        logits, boxes = outputs["pred_logits"], outputs["pred_boxes"]
        B, Q = logits.shape[:2]
        device = logits.device
        # float32 at least: half-precision costs tie too often and cdist needs float.
        logits = logits.flatten(0, 1).float()
        boxes = boxes.flatten(0, 1).float()
        tgt_labels = torch.cat([t["labels"] for t in targets]).to(device=device, dtype=torch.long)
        tgt_boxes = torch.cat([t["boxes"] for t in targets]).to(device=device, dtype=torch.float32)
        num_classes = logits.shape[-1] - (1 if self.class_cost_type == "ce" else 0)
        if len(tgt_labels) and (int(tgt_labels.min()) < 0 or int(tgt_labels.max()) >= num_classes):
            raise ValueError(
                f"HungarianMatcher: target labels must be in [0, {num_classes}) for a model with "
                f"{num_classes} classes ({logits.shape[-1]} logits"
                + (", the last one no-object" if self.class_cost_type == "ce" else "")
                + f"); got labels from {int(tgt_labels.min())} to {int(tgt_labels.max())} "
                "(does MODEL.DETR.NUM_CLASSES match the dataset?)"
            )

        terms = {
            "class": (self.cost_class, lambda: self.class_cost(logits, tgt_labels)),
            "bbox": (self.cost_bbox, lambda: torch.cdist(boxes, tgt_boxes, p=1)),
            "giou": (
                self.cost_giou,
                lambda: -generalized_box_iou(box_cxcywh_to_xyxy(boxes), box_cxcywh_to_xyxy(tgt_boxes)),
            ),
        }
        cost = torch.zeros(B * Q, len(tgt_labels), device=device)
        for name, (weight, compute) in terms.items():
            if weight == 0:  # skipped, also so that it cannot inject NaN via 0 * NaN
                continue
            term = compute()
            if not torch.isfinite(term).all():
                bad = (~torch.isfinite(term)).view(B, Q, -1).flatten(1).any(1).nonzero().flatten().tolist()
                raise ValueError(
                    f"HungarianMatcher: the {name} cost has NaN/inf entries (images {bad} of the batch); "
                    "check outputs['pred_logits'] / outputs['pred_boxes'] (diverged training?) and the "
                    "target boxes (normalised cxcywh, non-empty)."
                )
            cost += weight * term
        return cost.view(B, Q, -1)

    @torch.no_grad()
    @float32_region  # costs in float32 under mixed precision (layers/precision.py)
    def forward(self, outputs: Dict[str, Tensor], targets: Sequence[Dict[str, Tensor]]) -> Indices:
        B = outputs["pred_logits"].shape[0]
        if len(targets) != B:
            raise ValueError(f"HungarianMatcher: {B} images of predictions but {len(targets)} targets")
        sizes = [len(t["boxes"]) for t in targets]
        empty = torch.empty(0, dtype=torch.int64)
        if sum(sizes) == 0:
            return [(empty, empty.clone()) for _ in range(B)]

        cost = self.cost_matrix(outputs, targets).cpu()  # one device->host copy for the batch
        indices = []
        for i, block in enumerate(cost.split(sizes, dim=-1)):
            if sizes[i] == 0:
                indices.append((empty.clone(), empty.clone()))
                continue
            # Rectangular is fine: with Q < n every prediction gets a target.
            rows, cols = linear_sum_assignment(block[i].numpy())
            order = np.argsort(rows)  # scipy sorts rows already; make the contract explicit
            pred_idx = torch.as_tensor(rows[order], dtype=torch.int64)
            indices.append((pred_idx, torch.as_tensor(cols[order], dtype=torch.int64)))
        return indices
