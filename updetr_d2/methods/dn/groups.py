"""Where DN-DETR's denoising queries sit among the decoder's queries, and their losses.

:class:`DenoisingGroups` is also the loss route the denoising query generator puts in
``QueryBundle.meta["loss_routes"]``: it cuts the DN part off the model's outputs and
supervises it with the clean ground truth under the fixed assignment (slot ``g*M + i``
reconstructs ground truth ``i``), keys tagged ``_dn``; padding slots are left out of
the classification loss through ``query_valid`` (see the criterion's module docstring).

Contrastive groups (DINO): each group holds a positive copy of every ground truth in
slots ``g*2M + i`` and a negative copy in ``g*2M + M + i``. Only the positives are
assigned (box and class losses); the negatives are valid, unassigned slots, so the
classification loss trains them as "no object" and they get no box loss.
"""
from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple

import torch
from torch import Tensor

__all__ = ["DenoisingGroups"]


@dataclass(eq=False)  # eq=False: tensors have no truth value
class DenoisingGroups:
    """Where the DN queries are: ``num_groups`` (P) groups of ``group_size`` slots, in
    front of the matching queries. With M the batch's largest GT count, a group has
    M slots (slot ``g*M + i`` of image b holds a noised copy of its GT ``i`` when
    ``i < #GT_b``) or, ``contrastive``, 2M: positives then negatives.

    valid: bool [B, P*group_size], False = padding slot.
    """

    num_groups: int
    group_size: int
    valid: Tensor
    contrastive: bool = False

    def __post_init__(self):
        n = self.num_groups * self.group_size
        v = self.valid
        if v.dtype != torch.bool or v.dim() != 2 or v.shape[1] != n:
            raise ValueError(f"DenoisingGroups.valid must be bool [B, {n}]; got {v.dtype} {tuple(v.shape)}")
        if self.contrastive and self.group_size % 2:
            raise ValueError(f"contrastive groups hold positives and negatives: group_size must be even, "
                             f"got {self.group_size}")

    @property
    def gt_slots(self) -> int:
        """M: the slots of one copy of the batch's ground truth in a group."""
        return self.group_size // 2 if self.contrastive else self.group_size

    @property
    def num_queries(self) -> int:
        """P * group_size, the number of DN queries (the index where the matching queries start)."""
        return self.num_groups * self.group_size

    def indices(self) -> List[Tuple[Tensor, Tensor]]:
        """Per image ``(slot_idx, tgt_idx)`` (int64, on ``valid``'s device): each valid
        positive slot paired with the GT it copies (``i`` for slot ``g*M + i``, or
        ``g*2M + i`` in contrastive groups), group-major; the fixed assignment given to
        ``SetCriterion(indices=...)``. Negative slots are not assigned."""
        out = []
        for valid in self.valid:
            slots = valid.nonzero().flatten()
            if self.group_size == 0:
                out.append((slots, slots))
                continue
            within = slots % self.group_size
            positive = within < self.gt_slots
            out.append((slots[positive], within[positive]))
        return out

    # --- loss route (``QueryBundle.meta["loss_routes"]``) ---------------------------
    def losses(self, criterion, dn_outputs: Dict, targets: Sequence[Dict[str, Tensor]]) -> Dict[str, Tensor]:
        """Reconstruction losses of the DN part cut off by :meth:`split`, keyed
        ``loss_*_dn`` (``loss_*_dn_{i}`` for aux layer i), weighted like the matching
        part by the same ``criterion``; ``targets`` is the CLEAN ground truth.

        Padding slots are left out of the classification loss (DN-DETR; detrex trains
        them as background, which teaches the model nothing about the real objects).

        Normaliser: ``P * criterion.get_num_boxes(targets)``. DN-DETR divides by the
        local P*#GT; we use the all-reduced mean count like the matching part (detrex):
        it is the local one on a single process, and under DDP every worker then divides
        by the same number, so the averaged gradients stay consistent.

        Without ground truth (M == 0) the same keys come back as zeros tied to the
        outputs (``backward`` works), so the loss dict has stable keys.
        """
        device = dn_outputs["pred_boxes"].device
        # Called on every path: it all-reduces under DDP, and every worker must join.
        num_boxes = criterion.get_num_boxes(targets, device)
        if self.num_queries == 0:
            keys = criterion(dn_outputs, targets, indices=self.indices(), num_boxes=1.0, tag="_dn")
            # The (empty) DN slice is still a view of the outputs: its sum is a zero
            # that backward accepts.
            zero = dn_outputs["pred_boxes"].sum() * 0
            return {key: zero.clone() for key in keys}
        return criterion(
            dn_outputs, targets, indices=self.indices(), num_boxes=self.num_groups * num_boxes, tag="_dn"
        )

    def split(self, outputs: Dict) -> Tuple[Dict, Dict]:
        """``(dn_outputs, matching_outputs)``: every per-query tensor (``[B, T, ...]``
        with T the second dim of the layer's ``pred_logits`` / ``pred_boxes``) is cut
        at ``num_queries``, in the final layer and in each ``aux_outputs`` entry.
        Everything else (``enc_outputs``, ...) goes to ``matching_outputs`` only.
        Each DN layer dict also gets ``"query_valid"`` (= ``valid``) so the criterion
        leaves the padding slots out of the classification loss.
        """
        dn, match = self._split_layer(outputs)
        if "aux_outputs" in outputs:
            pairs = [self._split_layer(aux) for aux in outputs["aux_outputs"]]
            dn["aux_outputs"] = [d for d, _ in pairs]
            match["aux_outputs"] = [m for _, m in pairs]
        return dn, match

    def _split_layer(self, layer: Dict) -> Tuple[Dict, Dict]:
        ref = layer.get("pred_logits", layer.get("pred_boxes"))
        if ref is None:
            raise KeyError("DenoisingGroups.split: a layer has neither 'pred_logits' nor 'pred_boxes'")
        B, T = ref.shape[:2]
        n = self.num_queries
        if B != self.valid.shape[0] or T < n:
            raise ValueError(
                f"DenoisingGroups.split: outputs are [B={B}, T={T}, ...] but the groups were built for "
                f"B={self.valid.shape[0]} with {n} DN queries in front of the matching ones"
            )
        dn: Dict = {"query_valid": self.valid.to(ref.device)}
        match: Dict = {}
        for key, value in layer.items():
            if key == "aux_outputs":
                continue
            if isinstance(value, Tensor) and value.dim() >= 2 and tuple(value.shape[:2]) == (B, T):
                dn[key], match[key] = value[:, :n], value[:, n:]
            else:
                match[key] = value
        return dn, match
