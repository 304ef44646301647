"""DN-DETR query denoising (Li et al., CVPR 2022) as a query generator that wraps any
anchor-query generator.

Any anchor-query DETR (content + reference box per query, e.g. ``AnchorQueries``)
switches denoising on by wrapping its query generator::

    queries = DenoisingQueries(AnchorQueries(N, d), num_classes, d, nhead)
    bundle = queries(B, targets=targets)          # training: [dn (P*M) ; match (N)]
    outputs = decoder_and_heads(bundle)           # every per-query tensor [B, P*M + N, ...]
    # training: bundle.meta["loss_routes"] == [DenoisingGroups]; the meta-architecture
    # splits the DN part off and adds its ``loss_*_dn`` (SetPredictionDetector.set_losses)

Training only: in eval mode (or without targets) the generator returns exactly the
base generator's bundle, so the model is the base detector.

The DN part (the DN-DETR paper, section 3): all ground-truth (GT) objects
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
the matching part (:mod:`.groups`).

Contrastive denoising (DINO, ``contrastive=True``): every group holds a positive copy
of each GT (box noise inside lambda) and a negative copy (between lambda and 2 lambda,
:func:`~.noise.apply_contrastive_box_noise`); the negatives learn "no object". DINO
also sizes the DN part per batch instead of fixing P: ``num_dn_queries`` > 0 gives
``P = max(1, num_dn_queries // (slots per GT * M))`` groups (DINO's 200 for 100
positive/negative pairs), so a batch with many objects gets fewer groups.
"""
import dataclasses
from typing import Dict, Optional, Sequence

import torch
from torch import Tensor, nn

from ...modeling.attention_masks import (
    QueryLayout,
    Segment,
    build_self_attn_mask,
    expand_to_heads,
    isolate,
    pad_invalid,
    within_groups,
)
from ...modeling.queries import QueryBundle, per_image
from .groups import DenoisingGroups
from .noise import apply_box_noise, apply_contrastive_box_noise, apply_label_noise

__all__ = ["DenoisingQueries"]


def _with_route(meta: Dict, groups: DenoisingGroups) -> Dict:
    """The base bundle's meta plus the DN groups, as ``meta["dn"]`` and as a loss route."""
    return {**meta, "dn": groups, "loss_routes": [*meta.get("loss_routes", ()), groups]}


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
        contrastive: DINO's positive and negative copies (module docstring).
        num_dn_queries: > 0: the group count follows the batch (module docstring);
            0: always ``num_groups``.
        with_indicator: DN content is ``label_enc(label) ++ [1]`` (DN-DETR; the base's
            content must end with the 0 indicator); off: ``label_enc(label)`` (DINO).

    ``label_enc`` is ``Embedding(C + 1, d - 1)`` (``d`` without the indicator): index C
    ("unknown" class, the matching content of DN-DAB-DETR) is unused here, where the
    matching content comes from the base generator, but kept as in DN-DETR and DINO so
    checkpoints converted from them load without reshaping.
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
        contrastive: bool = False,
        num_dn_queries: int = 0,
        with_indicator: bool = True,
    ):
        super().__init__()
        if num_dn_queries < 0:
            raise ValueError(f"MODEL.DN.NUM_QUERIES must be >= 0 (0: MODEL.DN.NUM_GROUPS groups); got {num_dn_queries}")
        if num_groups < 0:
            raise ValueError(f"MODEL.DN.NUM_GROUPS must be >= 0 (0 disables denoising); got {num_groups}")
        if not 0.0 <= label_noise_prob <= 1.0:
            raise ValueError(f"MODEL.DN.LABEL_NOISE_PROB must be in [0, 1]; got {label_noise_prob}")
        if not 0.0 <= box_noise_scale <= (2.0 if contrastive else 1.0):
            raise ValueError(f"MODEL.DN.BOX_NOISE_SCALE must be in [0, 1] ([0, 2] contrastive); got {box_noise_scale}")
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
        self.contrastive = contrastive
        self.num_dn_queries = num_dn_queries
        self.with_indicator = with_indicator
        self.label_enc = nn.Embedding(num_classes + 1, hidden_dim - 1 if with_indicator else hidden_dim)

    @property
    def num_queries(self) -> int:
        """Matching queries (the base's); the DN count varies per batch."""
        return self.base.num_queries

    def extra_repr(self) -> str:
        return (
            f"num_groups={self.num_groups}, label_noise_prob={self.label_noise_prob}, "
            f"box_noise_scale={self.box_noise_scale}, mask_padding={self.mask_padding}, "
            f"contrastive={self.contrastive}, num_dn_queries={self.num_dn_queries}, with_indicator={self.with_indicator}"
        )

    def groups_for(self, max_objects: int) -> int:
        """P for a batch whose largest image has ``max_objects`` ground-truth objects."""
        if not self.num_dn_queries or max_objects == 0:
            return self.num_groups
        return max(1, self.num_dn_queries // (self.copies * max_objects))

    @property
    def copies(self) -> int:
        """Noised copies of each object per group: a positive (and a negative, contrastive)."""
        return 2 if self.contrastive else 1

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
        B = batch_size
        counts = [len(t["labels"]) for t in targets]
        M = max(counts, default=0)
        P = self.groups_for(M)
        copies = self.copies
        if M == 0:  # nothing to denoise: the base bundle, empty groups
            groups = DenoisingGroups(P, 0, torch.zeros(B, 0, dtype=torch.bool, device=device), self.contrastive)
            return dataclasses.replace(base, meta=_with_route(base.meta, groups))

        # every GT of the batch, in P * copies blocks (block k: group k // copies, negative
        # when k is odd in contrastive groups), each block image-major (image b, instance i)
        blocks = P * copies
        labels = torch.cat([t["labels"] for t in targets]).to(device).repeat(blocks)
        boxes = torch.cat([t["boxes"] for t in targets]).to(device=device, dtype=base.reference_points.dtype)
        boxes = boxes.repeat(blocks, 1)
        image = torch.cat([torch.full((n,), b, dtype=torch.long, device=device) for b, n in enumerate(counts)])
        instance = torch.cat([torch.arange(n, device=device) for n in counts])
        block = torch.arange(blocks, device=device)[:, None]
        batch_idx = image.repeat(blocks)
        slot_idx = (block * M + instance[None, :]).flatten()

        noised_labels = apply_label_noise(labels, self.label_noise_prob, self.num_classes)
        if self.contrastive:
            negative = (block % 2 == 1).expand(-1, len(instance)).flatten()
            noised_boxes = apply_contrastive_box_noise(boxes, self.box_noise_scale, negative)
        else:
            noised_boxes = apply_box_noise(boxes, self.box_noise_scale)
        emb = self.label_enc(noised_labels).to(base.tgt.dtype)
        if self.with_indicator:
            emb = torch.cat([emb, emb.new_ones(emb.shape[0], 1)], dim=1)  # indicator 1

        pad = blocks * M
        dn_tgt = base.tgt.new_zeros(B, pad, self.hidden_dim)
        dn_tgt[batch_idx, slot_idx] = emb
        dn_boxes = base.reference_points.new_full((B, pad, 4), 0.5)
        dn_boxes[batch_idx, slot_idx] = noised_boxes
        valid = torch.zeros(B, pad, dtype=torch.bool, device=device)
        valid[batch_idx, slot_idx] = True
        groups = DenoisingGroups(P, copies * M, valid, self.contrastive)

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
            meta=_with_route(base.meta, groups),
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
