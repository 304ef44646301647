"""DN-DETR query denoising (Li et al., CVPR 2022) as a reusable query generator + loss.

Any anchor-query DETR (content + reference box per query, e.g. ``AnchorQueries``)
switches denoising on by wrapping its query generator::

    queries = DenoisingQueries(AnchorQueries(N, d), num_classes, d, nhead)
    bundle = queries(B, targets=targets)          # training: [dn (P*M) ; match (N)]
    outputs = decoder_and_heads(bundle)           # every per-query tensor [B, P*M + N, ...]
    groups = bundle.meta.get("dn")                # DenoisingGroups, or None in eval
    if groups is not None:
        _, match_outputs = groups.split(outputs)
    losses = criterion(match_outputs, targets)
    losses.update(dn_losses(criterion, outputs, targets, groups))

Training only: in eval mode (or without targets) the generator returns exactly the
base generator's bundle, so the model is the base detector.

The DN part (``notes/methods/dn_detr.md`` section 3): all ground-truth (GT) objects
of the batch are copied into P groups; group g holds image b's i-th object in slot
``g*M + i`` with M the largest GT count of the batch, so images with fewer objects
leave padding slots. Each copy gets label noise (the label is flipped to another
class with probability p) and box noise (centre shift up to lambda*w/2, size change
up to lambda*w). Content = ``label_enc(noised label) ++ [1]`` (the indicator: 1 for
DN queries, 0 for matching queries); reference box = noised box. Padding slots have
zero content and the box (0.5, 0.5, 0.5, 0.5) (logit 0).

Self-attention mask (project builder, True = blocked): DN groups do not see each
other, matching queries see no DN query, DN queries see their group and every
matching query, and (``mask_padding``, on by default) padding slots are hidden from
every query of their image.

Losses: each valid DN slot is trained to reconstruct its CLEAN GT with the same
:class:`~updetr_d2.modeling.criterion.SetCriterion` (terms, weights, aux layers) as
the matching part, with the fixed assignment of :meth:`DenoisingGroups.indices`;
keys are tagged ``_dn``; padding slots are left out of the classification loss
through ``query_valid`` (see the criterion's module docstring).
"""
import dataclasses
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from .attention_masks import (
    QueryLayout,
    Segment,
    build_self_attn_mask,
    expand_to_heads,
    isolate,
    pad_invalid,
    within_groups,
)
from .queries import QueryBundle, per_image

__all__ = [
    "apply_label_noise",
    "apply_box_noise",
    "DenoisingGroups",
    "DenoisingQueries",
    "dn_losses",
]


# ------------------------------------------------------------------ noise


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
    """Box noise on normalised cxcywh boxes [..., 4] (``dn_detr.md`` 3.5): with
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


# ------------------------------------------------------------------ groups


@dataclass(eq=False)  # eq=False: tensors have no truth value
class DenoisingGroups:
    """Where the DN queries are: ``num_groups`` (P) groups of ``group_size`` (M, the
    batch's largest GT count) slots, in front of the matching queries; slot
    ``g*M + i`` of image b holds a noised copy of its GT ``i`` when ``i < #GT_b``.

    valid: bool [B, P*M], False = padding slot.
    """

    num_groups: int
    group_size: int
    valid: Tensor

    def __post_init__(self):
        n = self.num_groups * self.group_size
        v = self.valid
        if v.dtype != torch.bool or v.dim() != 2 or v.shape[1] != n:
            raise ValueError(f"DenoisingGroups.valid must be bool [B, {n}]; got {v.dtype} {tuple(v.shape)}")

    @property
    def num_queries(self) -> int:
        """P*M, the number of DN queries (the index where the matching queries start)."""
        return self.num_groups * self.group_size

    def indices(self) -> List[Tuple[Tensor, Tensor]]:
        """Per image ``(slot_idx, tgt_idx)`` (int64, on ``valid``'s device): slot
        ``g*M + i`` paired with GT ``i``, valid slots only, group-major; the fixed
        assignment given to ``SetCriterion(indices=...)``."""
        out = []
        for valid in self.valid:
            slots = valid.nonzero().flatten()
            tgt = slots % self.group_size if self.group_size > 0 else slots
            out.append((slots, tgt))
        return out

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


# ------------------------------------------------------------------ the generator


class DenoisingQueries(nn.Module):
    """Wraps an anchor-query generator and, in training, puts P noised groups of the
    batch's ground truth in front of its queries (see the module docstring).

    Args:
        base: a generator with ``num_queries`` and ``forward(batch_size, **context)``
            returning a :class:`QueryBundle` with ``tgt`` [N, d] or [B, N, d] and
            ``reference_points`` [N, 4] or [B, N, 4] (e.g. ``AnchorQueries``; its content
            should end with the 0 indicator, ``with_indicator=True``).
        num_classes: C, the classes of the labels (0..C-1).
        hidden_dim: d, the decoder width.
        num_heads: decoder heads (a per-image mask is expanded to [B*nhead, T, T]).
        num_groups: P, DN groups; 0 disables denoising (the base bundle always).
        label_noise_prob: p, label flip probability.
        box_noise_scale: lambda, box noise scale.
        mask_padding: hide padding slots from every query (on by default). DN-DETR
            leaves them unmasked; but a padding slot carries no information, must not
            influence the real queries, and which slots are padding differs per image
            (so, unmasked, the DN queries of an image with fewer objects would attend a
            different number of zero queries than those of another image).

    ``label_enc`` is ``Embedding(C + 1, d - 1)``: index C ("unknown" class, the
    matching content of DN-DAB-DETR) is unused here, where the matching content
    comes from the base generator, but kept as in DN-DETR so checkpoints converted
    from it load without reshaping.
    """

    def __init__(
        self,
        base: nn.Module,
        num_classes: int,
        hidden_dim: int,
        num_heads: int,
        num_groups: int = 5,
        label_noise_prob: float = 0.2,
        box_noise_scale: float = 0.4,
        mask_padding: bool = True,
    ):
        super().__init__()
        if num_groups < 0:
            raise ValueError(f"MODEL.DN.NUM_GROUPS must be >= 0 (0 disables denoising); got {num_groups}")
        if not 0.0 <= label_noise_prob <= 1.0:
            raise ValueError(f"MODEL.DN.LABEL_NOISE_PROB must be in [0, 1]; got {label_noise_prob}")
        if not 0.0 <= box_noise_scale <= 1.0:
            raise ValueError(f"MODEL.DN.BOX_NOISE_SCALE must be in [0, 1]; got {box_noise_scale}")
        if num_classes < 1:
            raise ValueError(f"DenoisingQueries: num_classes must be >= 1; got {num_classes}")
        if hidden_dim < 2:
            raise ValueError(f"DenoisingQueries: hidden_dim must be >= 2 (content + indicator); got {hidden_dim}")
        if num_heads < 1:
            raise ValueError(f"DenoisingQueries: num_heads must be >= 1; got {num_heads}")
        self.base = base
        self.num_classes = num_classes
        self.hidden_dim = hidden_dim
        self.num_heads = num_heads
        self.num_groups = num_groups
        self.label_noise_prob = label_noise_prob
        self.box_noise_scale = box_noise_scale
        self.mask_padding = mask_padding
        self.label_enc = nn.Embedding(num_classes + 1, hidden_dim - 1)

    @property
    def num_queries(self) -> int:
        """Matching queries (the base's); the DN count varies per batch."""
        return self.base.num_queries

    def extra_repr(self) -> str:
        return (
            f"num_groups={self.num_groups}, label_noise_prob={self.label_noise_prob}, "
            f"box_noise_scale={self.box_noise_scale}, mask_padding={self.mask_padding}"
        )

    def forward(
        self, batch_size: int, targets: Optional[Sequence[Dict[str, Tensor]]] = None, **context
    ) -> QueryBundle:
        """The base bundle, with (training, targets given, P > 0) the DN groups in front:
        ``tgt`` [B, T, d], ``reference_points`` [B, T, 4], ``self_attn_mask`` [T, T] or
        [B*nhead, T, T], ``meta["dn"]`` a :class:`DenoisingGroups`; T = P*M + N.

        targets: B dicts with ``labels`` long [n_b] and ``boxes`` [n_b, 4] normalised
        cxcywh (w.r.t. the unpadded image).
        """
        base = self.base(batch_size, **context)
        if not self.training or targets is None or self.num_groups == 0:
            return base
        if len(targets) != batch_size:
            raise ValueError(f"DenoisingQueries: {len(targets)} targets for a batch of {batch_size}")
        if base.tgt is None or base.reference_points is None or base.query_pos is not None:
            raise ValueError(
                "DenoisingQueries needs an anchor-query generator (content 'tgt' + 'reference_points', "
                "no 'query_pos'): DN queries are made of a label embedding and a noised box"
            )
        if base.tgt.shape[-1] != self.hidden_dim:
            raise ValueError(
                f"DenoisingQueries: hidden_dim={self.hidden_dim} but the base content is {base.tgt.shape[-1]}-d"
            )

        device = targets[0]["labels"].device if targets else base.tgt.device
        P, B = self.num_groups, batch_size
        counts = [len(t["labels"]) for t in targets]
        M = max(counts, default=0)
        if M == 0:  # nothing to denoise: the base bundle, empty groups
            groups = DenoisingGroups(P, 0, torch.zeros(B, 0, dtype=torch.bool, device=device))
            return dataclasses.replace(base, meta={**base.meta, "dn": groups})

        # every GT of the batch, P times, group-major (group g, image b, instance i)
        labels = torch.cat([t["labels"] for t in targets]).to(device).repeat(P)
        boxes = torch.cat([t["boxes"] for t in targets]).to(device=device, dtype=base.reference_points.dtype)
        boxes = boxes.repeat(P, 1)
        image = torch.cat([torch.full((n,), b, dtype=torch.long, device=device) for b, n in enumerate(counts)])
        instance = torch.cat([torch.arange(n, device=device) for n in counts])
        group = torch.arange(P, device=device)[:, None]
        batch_idx = image.repeat(P)
        slot_idx = (group * M + instance[None, :]).flatten()

        noised_labels = apply_label_noise(labels, self.label_noise_prob, self.num_classes)
        noised_boxes = apply_box_noise(boxes, self.box_noise_scale)
        emb = self.label_enc(noised_labels).to(base.tgt.dtype)
        emb = torch.cat([emb, emb.new_ones(emb.shape[0], 1)], dim=1)  # indicator 1

        pad = P * M
        dn_tgt = base.tgt.new_zeros(B, pad, self.hidden_dim)
        dn_tgt[batch_idx, slot_idx] = emb
        dn_boxes = base.reference_points.new_full((B, pad, 4), 0.5)
        dn_boxes[batch_idx, slot_idx] = noised_boxes
        valid = torch.zeros(B, pad, dtype=torch.bool, device=device)
        valid[batch_idx, slot_idx] = True
        groups = DenoisingGroups(P, M, valid)

        N = base.tgt.shape[-2]
        tgt = torch.cat([dn_tgt, per_image(base.tgt, B)], dim=1)
        reference_points = torch.cat([dn_boxes, per_image(base.reference_points, B)], dim=1)
        has_padding = self.mask_padding and min(counts) < M  # from the counts: no device sync
        mask = self._mask(groups, N, base.self_attn_mask, has_padding)
        return dataclasses.replace(
            base,
            tgt=tgt,
            reference_points=reference_points,
            self_attn_mask=mask,
            meta={**base.meta, "dn": groups},
        )

    def _mask(
        self, groups: DenoisingGroups, num_matching: int, base_mask: Optional[Tensor], has_padding: bool
    ) -> Tensor:
        pad, device = groups.num_queries, groups.valid.device
        dn = Segment(
            "dn",
            pad,
            group_ids=torch.arange(pad, device=device) // groups.group_size,
            valid=groups.valid if has_padding else None,
        )
        layout = QueryLayout([dn, Segment("match", num_matching)])
        rules = [within_groups("dn"), isolate("match", "dn")]
        if has_padding:
            rules.append(pad_invalid("dn"))
        if base_mask is not None:
            if base_mask.dim() != 2:
                raise ValueError(
                    "DenoisingQueries: only a shared [N, N] self-attention mask of the base generator can be "
                    f"combined with the DN mask; got {tuple(base_mask.shape)}"
                )
            rules.append(_inside("match", base_mask.to(device)))
        return expand_to_heads(build_self_attn_mask(layout, rules), self.num_heads)


def _inside(name: str, blocked: Tensor):
    """Rule: the given [n, n] mask inside segment ``name`` (the base generator's own mask)."""

    def rule(layout: QueryLayout) -> Tensor:
        s = layout.slice(name)
        out = torch.zeros(layout.num_queries, layout.num_queries, dtype=torch.bool, device=blocked.device)
        out[s, s] = blocked
        return out

    return rule


# ------------------------------------------------------------------ losses


def dn_losses(
    criterion,
    outputs: Dict,
    targets: Sequence[Dict[str, Tensor]],
    groups: Optional[DenoisingGroups],
    ignore_padding: bool = True,
) -> Dict[str, Tensor]:
    """Reconstruction losses of the DN part, keyed ``loss_*_dn`` (``loss_*_dn_{i}`` for
    aux layer i), weighted like the matching part by the same ``criterion``.

    outputs: the model's full outputs ([B, P*M + N, ...]; matching-only when
        ``groups`` is None). targets: the CLEAN ground truth. groups: the bundle's
        ``meta["dn"]`` (None: DN was off).
    ignore_padding: True (DN-DETR) leaves padding slots out of the classification
        loss; False trains them as background (detrex).

    Normaliser: ``P * criterion.get_num_boxes(targets)``. DN-DETR divides by the local
    P*#GT; we use the all-reduced mean count like the matching part (detrex): it is
    the local one on a single process, and under DDP every worker then divides by the
    same number, so the averaged gradients stay consistent.

    Without ground truth (M == 0 or no groups) the same keys come back as zeros tied to
    the outputs (``backward`` works), so the loss dict has stable keys.
    """
    device = outputs["pred_boxes"].device
    # Called on every path: it all-reduces under DDP, and every worker must join.
    num_boxes = criterion.get_num_boxes(targets, device)
    if groups is None or groups.num_queries == 0:
        B = outputs["pred_boxes"].shape[0]
        empty = DenoisingGroups(0, 0, torch.zeros(B, 0, dtype=torch.bool, device=device))
        dn_outputs, _ = empty.split(outputs)
        keys = criterion(dn_outputs, targets, indices=empty.indices(), num_boxes=1.0, tag="_dn")
        zero = outputs["pred_boxes"].sum() * 0
        return {key: zero.clone() for key in keys}
    dn_outputs, _ = groups.split(outputs)
    if not ignore_padding:
        for layer in [dn_outputs, *dn_outputs.get("aux_outputs", [])]:
            layer.pop("query_valid")
    return criterion(
        dn_outputs, targets, indices=groups.indices(), num_boxes=groups.num_groups * num_boxes, tag="_dn"
    )
