"""Set-prediction losses (DETR, Carion et al. 2020) with pluggable loss terms.

:class:`SetCriterion` matches predictions to targets (or takes fixed
assignments), then applies a list of *loss terms* to the final decoder output
and to each auxiliary one, and returns the **weighted** losses only.

Loss-term interface
-------------------
A loss term is an ``nn.Module`` (subclass :class:`LossTerm`) with

* ``name`` (str): identifies the term (unique within a criterion);
* ``forward(outputs, targets, indices, num_boxes) -> Dict[str, Tensor]``:
  **unweighted** scalar losses keyed ``loss_*``, where

  - ``outputs``: one decoder layer's output dict (``pred_logits`` [B, Q, ...],
    ``pred_boxes`` [B, Q, 4] normalised cxcywh, plus whatever the model adds);
  - ``targets``: B dicts with ``labels`` [n_i] and ``boxes`` [n_i, 4] (normalised
    cxcywh), plus whatever the model adds;
  - ``indices``: B pairs ``(pred_idx, tgt_idx)`` from the matcher (or given);
  - ``num_boxes``: the float to normalise per-box sums by (the batch's target
    count averaged over workers, >= 1);
* ``apply_to_aux`` (bool, default True): False for terms that only make sense
  on the final output (they are then skipped on ``aux_outputs``);
* optionally ``metrics(outputs, targets, indices) -> Dict[str, Tensor|float]``:
  numbers to log, not to optimise (computed on the final output only).

A new term (e.g. UP-DETR's feature reconstruction) is a new subclass; its keys
must be in the criterion's ``weight_dict``.

Output keys and weights
-----------------------
Keys of the final layer are the terms' keys; those of ``aux_outputs[i]`` get
the suffix ``_{i}``. ``weight_dict`` maps *base* keys (``loss_ce``) to weights,
used for every layer. Keys weighted 0 are left out; a key missing from
``weight_dict`` raises ``KeyError`` so that no loss is silently dropped.
Detectron2's trainer sums every returned value, so metrics (``class_error``)
are never returned: they go to the event storage and ``criterion.last_metrics``.

Tags (query denoising and other extra query sets)
-------------------------------------------------
``forward(..., tag="_dn")`` puts the tag between the base key and the layer
suffix (``loss_bbox`` -> ``loss_bbox_dn``, ``loss_bbox_dn_0``); weights are still
looked up by the base key, so the extra set is weighted like the matching part.
Metrics are computed and logged only for untagged calls (``tag == ""``): they
describe the matching queries, and ``last_metrics`` is not overwritten by a
DN call.

Query validity
--------------
A layer's dict may carry ``"query_valid"`` (bool [B, Q], False = padding slot,
e.g. DN-DETR's groups padded to the batch's largest object count, see
``denoising.DenoisingGroups.split``). The classification terms then ignore the
invalid slots (:class:`LabelFocal` zeroes their per-element loss, and
:class:`LabelCrossEntropy` averages over the valid slots only); box terms only see
matched pairs and are unaffected.
"""
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from detectron2.utils import comm
from detectron2.utils.events import get_event_storage
from torch import Tensor, nn
from torch.nn import functional as F
from torchvision.ops import sigmoid_focal_loss

from ..layers.box_ops import box_cxcywh_to_xyxy, elementwise_generalized_box_iou
from ..layers.precision import float32_region

__all__ = ["average_over_workers", "LossTerm", "LabelCrossEntropy", "LabelFocal", "BoxL1GIoU", "SetCriterion"]

Indices = Sequence[Tuple[Tensor, Tensor]]


# --- helpers for loss terms -------------------------------------------------------
def average_over_workers(values: Tensor) -> Tensor:
    """The sum over workers divided by the world size (``values`` itself on one process):
    loss normalisers (box, positive counts) computed this way are the same on every
    worker, so DDP's gradient averaging is exact."""
    world_size = comm.get_world_size()
    if world_size > 1:
        values = values.clone()
        torch.distributed.all_reduce(values)
    return values / world_size


def matched_pred_index(indices: Indices, device) -> Tuple[Tensor, Tensor]:
    """(batch_idx, pred_idx) to gather matched predictions out of a [B, Q, ...] tensor."""
    batch_idx = torch.cat([torch.full_like(src, i) for i, (src, _) in enumerate(indices)])
    pred_idx = torch.cat([src for src, _ in indices])
    return batch_idx.to(device), pred_idx.to(device)


def matched_targets(targets: Sequence[Dict[str, Tensor]], indices: Indices, key: str, device) -> Tensor:
    """``targets[i][key]`` of the matched targets, in the order of :func:`matched_pred_index`."""
    return torch.cat([t[key][tgt.to(t[key].device)] for t, (_, tgt) in zip(targets, indices)]).to(device)


def class_error(logits: Tensor, indices: Indices, targets) -> Dict[str, Tensor]:
    """100 - top-1 accuracy (%) of the matched predictions; nothing when none matched."""
    idx = matched_pred_index(indices, logits.device)
    if idx[0].numel() == 0:
        return {}
    labels = matched_targets(targets, indices, "labels", logits.device)
    accuracy = (logits[idx].argmax(-1) == labels).float().mean() * 100
    return {"class_error": 100 - accuracy}


def query_valid_mask(outputs, logits: Tensor) -> Optional[Tensor]:
    """``outputs["query_valid"]`` (bool [B, Q], False = padding slot) checked against
    ``logits`` [B, Q, ...] and moved to its device, or None when absent."""
    valid = outputs.get("query_valid")
    if valid is None:
        return None
    if valid.dtype != torch.bool or tuple(valid.shape) != tuple(logits.shape[:2]):
        raise ValueError(
            f"query_valid must be bool [B, Q] = {tuple(logits.shape[:2])}; got {valid.dtype} {tuple(valid.shape)}"
        )
    return valid.to(logits.device)


class LossTerm(nn.Module):
    """Base class of loss terms; see the module docstring for the interface."""

    name: str = ""
    apply_to_aux: bool = True

    def forward(self, outputs, targets, indices: Indices, num_boxes: float) -> Dict[str, Tensor]:
        raise NotImplementedError

    def metrics(self, outputs, targets, indices: Indices) -> Dict[str, Tensor]:
        return {}


# --- DETR's loss terms ------------------------------------------------------------
class LabelCrossEntropy(LossTerm):
    """DETR's classification loss ``loss_ce``: cross-entropy over C+1 logits.

    Unmatched predictions target no-object (index C), whose weight is ``eos_coef``
    (the many no-object queries would otherwise dominate). As in DETR, it is the
    weighted mean over all queries (of all workers), not a sum over num_boxes.
    """

    name = "labels"

    def __init__(self, num_classes: int, eos_coef: float = 0.1):
        super().__init__()
        self.num_classes = num_classes
        self.eos_coef = eos_coef
        weight = torch.ones(num_classes + 1)
        weight[-1] = eos_coef
        # A buffer so it follows .to(device); non-persistent since it is config,
        # not a learned value, and checkpoints should not depend on it.
        self.register_buffer("empty_weight", weight, persistent=False)

    def forward(self, outputs, targets, indices, num_boxes):
        logits = outputs["pred_logits"]
        if logits.shape[-1] != self.num_classes + 1:
            raise ValueError(
                f"LabelCrossEntropy expects {self.num_classes} + 1 (no-object) logits, got {logits.shape[-1]}"
            )
        target_classes = torch.full(logits.shape[:2], self.num_classes, dtype=torch.long, device=logits.device)
        target_classes[matched_pred_index(indices, logits.device)] = matched_targets(
            targets, indices, "labels", logits.device
        )
        valid = query_valid_mask(outputs, logits)
        nll = F.cross_entropy(logits.transpose(1, 2), target_classes, reduction="none")
        w = self.empty_weight.to(logits.dtype)[target_classes]
        if valid is not None:  # padding slots count for nothing
            w = w * valid.to(logits.dtype)
            nll = torch.where(valid, nll, torch.zeros_like(nll))  # garbage in padding must not give NaN
        # The weighted mean over every query of the whole batch: the weight sum is averaged
        # over workers like num_boxes, so that N processes give one process's loss and
        # gradients. DETR's code takes the mean per process (F.cross_entropy with weights),
        # which differs when the processes' shares of no-object queries differ; on one
        # process both are the same number.
        return {"loss_ce": (w * nll).sum() / average_over_workers(w.sum()).clamp(min=torch.finfo(w.dtype).tiny)}

    @torch.no_grad()
    def metrics(self, outputs, targets, indices):
        return class_error(outputs["pred_logits"], indices, targets)


class LabelFocal(LossTerm):
    """Deformable DETR's classification loss ``loss_focal``: sigmoid focal loss over
    C logits (no no-object column; unmatched predictions have all-zero targets),
    summed over queries and classes and divided by ``num_boxes``."""

    name = "labels_focal"

    def __init__(self, num_classes: int, alpha: float = 0.25, gamma: float = 2.0):
        super().__init__()
        self.num_classes = num_classes
        self.alpha = alpha
        self.gamma = gamma

    def forward(self, outputs, targets, indices, num_boxes):
        logits = outputs["pred_logits"]
        if logits.shape[-1] != self.num_classes:
            raise ValueError(f"LabelFocal expects {self.num_classes} logits (no no-object), got {logits.shape[-1]}")
        onehot = torch.zeros_like(logits)
        batch_idx, pred_idx = matched_pred_index(indices, logits.device)
        onehot[batch_idx, pred_idx, matched_targets(targets, indices, "labels", logits.device)] = 1
        loss = sigmoid_focal_loss(logits, onehot, alpha=self.alpha, gamma=self.gamma, reduction="none")
        valid = query_valid_mask(outputs, logits)
        if valid is not None:
            # Padding slots contribute nothing (DN-DETR's official loss; detrex instead
            # trains DN padding as background).
            loss = torch.where(valid[..., None], loss, torch.zeros_like(loss))
        # Deformable DETR writes loss.mean(1).sum() / num_boxes * Q, i.e. the plain sum / num_boxes.
        return {"loss_focal": loss.sum() / num_boxes}

    @torch.no_grad()
    def metrics(self, outputs, targets, indices):
        return class_error(outputs["pred_logits"], indices, targets)


class BoxL1GIoU(LossTerm):
    """Box regression on matched pairs: ``loss_bbox`` (L1 on normalised cxcywh) and
    ``loss_giou`` (1 - GIoU), each summed over pairs and divided by ``num_boxes``."""

    name = "boxes"

    def forward(self, outputs, targets, indices, num_boxes):
        pred_boxes = outputs["pred_boxes"]
        src = pred_boxes[matched_pred_index(indices, pred_boxes.device)]
        tgt = matched_targets(targets, indices, "boxes", pred_boxes.device).to(src.dtype)
        loss_bbox = F.l1_loss(src, tgt, reduction="none").sum() / num_boxes
        giou = elementwise_generalized_box_iou(box_cxcywh_to_xyxy(src), box_cxcywh_to_xyxy(tgt))
        loss_giou = (1 - giou).sum() / num_boxes
        return {"loss_bbox": loss_bbox, "loss_giou": loss_giou}


# --- the criterion ----------------------------------------------------------------
class SetCriterion(nn.Module):
    """Matching + loss terms over the final and auxiliary decoder outputs.

    Args:
        matcher: callable ``(outputs, targets) -> indices`` (e.g. ``HungarianMatcher``).
        loss_terms: :class:`LossTerm` instances, applied in order.
        weight_dict: base loss key -> weight (see the module docstring).
        aux_loss: also supervise each entry of ``outputs["aux_outputs"]``.
    """

    def __init__(
        self,
        matcher: nn.Module,
        loss_terms: Sequence[LossTerm],
        weight_dict: Mapping[str, float],
        aux_loss: bool = True,
    ):
        super().__init__()
        names = [term.name for term in loss_terms]
        if len(set(names)) != len(names):
            raise ValueError(f"SetCriterion: loss term names must be unique, got {names}")
        self.matcher = matcher
        self.loss_terms = nn.ModuleList(loss_terms)
        self.weight_dict = dict(weight_dict)
        self.aux_loss = aux_loss
        self.last_metrics: Dict[str, float] = {}

    def extra_repr(self) -> str:
        return f"weight_dict={self.weight_dict}, aux_loss={self.aux_loss}"

    def add_loss_term(self, term: LossTerm, weights: Mapping[str, float]) -> None:
        """Append ``term`` with the weights of its keys (a plug-in's head, e.g. masks);
        a name or key the criterion already has is an error, not an override."""
        if term.name in {t.name for t in self.loss_terms}:
            raise ValueError(f"SetCriterion already has a loss term named {term.name!r}")
        clash = sorted(set(weights) & set(self.weight_dict))
        if clash:
            raise ValueError(f"SetCriterion already weights {clash}; loss term {term.name!r} cannot redefine them")
        self.loss_terms.append(term)
        self.weight_dict.update(weights)

    @staticmethod
    def get_num_boxes(targets: Sequence[Dict[str, Tensor]], device) -> float:
        """Target boxes per worker, averaged over workers (see :func:`average_over_workers`); at least 1."""
        num_boxes = torch.as_tensor([float(sum(len(t["labels"]) for t in targets))], device=device)
        return max(average_over_workers(num_boxes).item(), 1.0)

    def _weighted(self, term: LossTerm, losses: Dict[str, Tensor], suffix: str, out: Dict[str, Tensor]):
        for key, value in losses.items():
            if key not in self.weight_dict:
                raise KeyError(
                    f"SetCriterion: loss term {term.name!r} produced {key!r}, which is not in weight_dict "
                    f"{sorted(self.weight_dict)}; give it a weight (0 to disable it)"
                )
            weight = self.weight_dict[key]
            if weight == 0:
                continue
            if key + suffix in out:
                raise ValueError(f"SetCriterion: loss key {key + suffix!r} produced by more than one term")
            out[key + suffix] = value * weight

    @float32_region  # losses in float32 under mixed precision (layers/precision.py)
    def forward(
        self,
        outputs: Dict,
        targets: Sequence[Dict[str, Tensor]],
        indices: Optional[Indices] = None,
        num_boxes: Optional[float] = None,
        tag: str = "",
    ) -> Dict[str, Tensor]:
        """Weighted losses.

        ``indices``: fixed assignments (e.g. DN-DETR's denoising queries) used for the
        final and every auxiliary layer instead of running the matcher.
        ``num_boxes``: normaliser to use instead of the batch's (all-reduced) target count.
        ``tag``: inserted between base key and layer suffix (``"_dn"`` gives
        ``loss_bbox_dn``, ``loss_bbox_dn_0``); weights by base key; metrics are
        logged only when the tag is empty.
        """
        final = {k: v for k, v in outputs.items() if k != "aux_outputs"}
        layers: List[Tuple[str, Dict]] = [("", final)]
        if self.aux_loss:
            layers += [(f"_{i}", aux) for i, aux in enumerate(outputs.get("aux_outputs", []))]
        if num_boxes is None:
            num_boxes = self.get_num_boxes(targets, final["pred_logits"].device)

        losses: Dict[str, Tensor] = {}
        for suffix, layer_outputs in layers:
            layer_indices = indices if indices is not None else self.matcher(layer_outputs, targets)
            for term in self.loss_terms:
                if suffix and not term.apply_to_aux:
                    continue
                self._weighted(term, term(layer_outputs, targets, layer_indices, num_boxes), tag + suffix, losses)
            if not suffix and not tag:
                self._log_metrics(final, targets, layer_indices)
        return losses

    def _log_metrics(self, outputs, targets, indices):
        metrics = {}
        for term in self.loss_terms:
            metrics.update({k: float(v) for k, v in term.metrics(outputs, targets, indices).items()})
        self.last_metrics = metrics
        try:
            storage = get_event_storage()
        except AssertionError:  # not inside a Detectron2 EventStorage (tests, scripts)
            return
        for key, value in metrics.items():
            storage.put_scalar(key, value)
