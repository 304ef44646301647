"""Co-DETR's customized positive queries: an auxiliary head's positive anchors or
proposals become extra decoder queries, supervised by that head's one-to-many
assignment (no Hungarian matching).

Per head and batch (the paper's customized positive queries, section 3.3):

1. ``Q = clamp(max_b #positives_b, min_queries, max_queries)``; an image with more
   positives keeps a random subset of ``Q``.
2. Images with fewer positives are filled up with random negatives of the same head
   (background label, no box target), which train the classifier as background, as the
   public code does. (The paper says every auxiliary query is positive; its code pads
   with negatives, which also keeps every query row attendable. An image with too few
   candidates altogether gets padding slots, hidden from attention and from the loss.)
3. Boxes are normalised by the image's valid size to cxcywh: the queries' reference
   boxes and their targets.
4. Queries: the sine embedding of the box (4 x d/2) goes through Linear + LayerNorm
   (one per head) into a positional and a content query; the candidate's feature goes
   through another Linear + LayerNorm into the content (the paper's ``E({F}, pos)``);
   a learned per-head embedding [K, d] is added to the positional query (the public
   code's is an ``Embedding(K, 1)`` by mistake, one scalar per head). For anchor-query
   decoders, which derive the positional query from the box, the content is made the
   same way and the head embedding goes into it.
"""
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn
from torchvision.ops import box_convert

from ...layers.position_encoding import sine_embed_coordinates
from ...modeling.attention_masks import QueryLayout, Segment, build_self_attn_mask, expand_to_heads, pad_invalid
from ...modeling.queries import QueryBundle
from .aux_heads import PositiveSamples

__all__ = ["PositiveQueries", "PositiveQueryRoute", "SelectedQueries", "select_positive_queries"]


@dataclass(eq=False)
class SelectedQueries:
    """The chosen candidates of one head, [B, Q, ...] (normalised cxcywh boxes).

    reference: the candidates' boxes (the queries' reference boxes).
    labels: assigned classes (``num_classes`` = background).
    target_boxes: assigned ground-truth boxes.
    positive: bool, the slot holds a positive (box loss, matched class).
    valid: bool, the slot holds a candidate at all (False: padding, no loss, hidden).
    features: the candidates' features [B, Q, C].
    """

    reference: Tensor
    labels: Tensor
    target_boxes: Tensor
    positive: Tensor
    valid: Tensor
    features: Tensor

    @property
    def num_queries(self) -> int:
        return self.reference.shape[1]

    def targets_and_indices(self) -> Tuple[List[dict], List[Tuple[Tensor, Tensor]]]:
        """Per image the positives' targets and the fixed assignment slot -> target, for
        ``SetCriterion(indices=...)``: negatives are unmatched, hence background."""
        targets, indices = [], []
        for b in range(self.reference.shape[0]):
            slots = self.positive[b].nonzero().flatten()
            targets.append({"labels": self.labels[b, slots], "boxes": self.target_boxes[b, slots]})
            indices.append((slots, torch.arange(len(slots), device=slots.device)))
        return targets, indices


class PositiveQueryRoute:
    """Loss route of one head's positive queries (decoded in a pass of their own, so
    they take the whole output dict): supervised by the head's assignment instead of
    Hungarian matching, padding slots left out, keys tagged ``_co_{head}`` and scaled
    by ``weight`` (the paper's lambda1)."""

    def __init__(self, selected: SelectedQueries, tag: str, weight: float = 1.0):
        self.selected, self.tag, self.weight = selected, tag, weight

    def split(self, outputs):
        return outputs, None

    def losses(self, criterion, own, targets):
        for layer in [own, *own.get("aux_outputs", [])]:
            layer["query_valid"] = self.selected.valid
        head_targets, indices = self.selected.targets_and_indices()
        tagged = criterion(own, head_targets, indices=indices, tag=self.tag)
        return {k: v * self.weight for k, v in tagged.items()}


def _normalised_cxcywh(boxes: Tensor, size: Sequence[int]) -> Tensor:
    h, w = size
    scale = boxes.new_tensor([w, h, w, h])
    return box_convert(boxes / scale, "xyxy", "cxcywh").clamp(0, 1)


def select_positive_queries(
    samples: PositiveSamples,
    image_sizes: Sequence[Tuple[int, int]],
    num_classes: int,
    min_queries: int = 9,
    max_queries: int = 300,
    generator: Optional[torch.Generator] = None,
) -> SelectedQueries:
    """Steps 1-3 of the module docstring; random choices from ``generator`` (a CPU one)."""
    if not 1 <= min_queries <= max_queries:
        raise ValueError(
            "MODEL.CO_DETR.MIN_POSITIVE_QUERIES must be >= 1 and <= MAX_POSITIVE_QUERIES; got "
            f"{min_queries} and {max_queries}"
        )
    positives = [labels != num_classes for labels in samples.labels]
    Q = min(max(max([int(p.sum()) for p in positives], default=0), min_queries), max_queries)
    B = len(samples.labels)
    device = samples.boxes[0].device if B else torch.device("cpu")
    feature_dim = samples.features[0].shape[1] if B else 0
    dtype = samples.features[0].dtype if B else torch.float32
    reference = torch.full((B, Q, 4), 0.5, device=device)
    target_boxes = torch.full((B, Q, 4), 0.5, device=device)
    labels = torch.full((B, Q), num_classes, dtype=torch.long, device=device)
    positive = torch.zeros(B, Q, dtype=torch.bool, device=device)
    valid = torch.zeros(B, Q, dtype=torch.bool, device=device)
    features = torch.zeros(B, Q, feature_dim, device=device, dtype=dtype)
    for b in range(B):
        pos = positives[b].nonzero().flatten()
        neg = (~positives[b]).nonzero().flatten()
        pos = pos[torch.randperm(len(pos), generator=generator)[:Q].to(device)]
        neg = neg[torch.randperm(len(neg), generator=generator)[: Q - len(pos)].to(device)]
        chosen = torch.cat([pos, neg])
        n = len(chosen)
        reference[b, :n] = _normalised_cxcywh(samples.boxes[b][chosen].float(), image_sizes[b])
        target_boxes[b, :n] = _normalised_cxcywh(samples.target_boxes[b][chosen].float(), image_sizes[b])
        labels[b, :n] = samples.labels[b][chosen]
        positive[b, : len(pos)] = True
        valid[b, :n] = True
        features[b, :n] = samples.features[b][chosen]
    return SelectedQueries(reference, labels, target_boxes, positive, valid, features)


class PositiveQueries(nn.Module):
    """Step 4 of the module docstring: queries from selected candidates, one set of
    projections per auxiliary head.

    ``forward(head_index, selected, num_heads, route)`` -> :class:`QueryBundle` with the
    boxes as reference points, content ``tgt`` and (unless ``anchor_queries``)
    ``query_pos``; a self-attention mask hides padding slots when there are any; the
    bundle's loss route is ``route`` (a :class:`PositiveQueryRoute` in training).
    """

    def __init__(
        self,
        num_aux_heads: int,
        hidden_dim: int,
        feature_dim: int,
        anchor_queries: bool = False,
        with_coord_feat: bool = True,
    ):
        super().__init__()
        out = hidden_dim if anchor_queries else 2 * hidden_dim
        self.hidden_dim = hidden_dim
        self.anchor_queries = anchor_queries
        self.box_proj = nn.ModuleList(nn.Linear(2 * hidden_dim, out) for _ in range(num_aux_heads))
        self.box_norm = nn.ModuleList(nn.LayerNorm(out) for _ in range(num_aux_heads))
        self.with_coord_feat = with_coord_feat
        if with_coord_feat:
            self.feature_proj = nn.ModuleList(nn.Linear(feature_dim, hidden_dim) for _ in range(num_aux_heads))
            self.feature_norm = nn.ModuleList(nn.LayerNorm(hidden_dim) for _ in range(num_aux_heads))
        self.head_embed = nn.Embedding(num_aux_heads, hidden_dim)

    def forward(self, head_index: int, selected: SelectedQueries, num_heads: int, route=None) -> QueryBundle:
        embedding = sine_embed_coordinates(selected.reference, self.hidden_dim // 2)
        embedding = self.box_norm[head_index](self.box_proj[head_index](embedding))
        if self.anchor_queries:
            query_pos, tgt = None, embedding
        else:
            query_pos, tgt = embedding.split(self.hidden_dim, dim=-1)
        if self.with_coord_feat:
            tgt = tgt + self.feature_norm[head_index](self.feature_proj[head_index](selected.features))
        head = self.head_embed.weight[head_index]
        if query_pos is not None:
            query_pos = query_pos + head
        else:
            tgt = tgt + head
        mask = None
        if not bool(selected.valid.all()):
            layout = QueryLayout([Segment("aux", selected.num_queries, valid=selected.valid)])
            mask = expand_to_heads(build_self_attn_mask(layout, [pad_invalid("aux")]), num_heads)
        meta = {"loss_routes": [route]} if route is not None else {}
        return QueryBundle(
            query_pos=query_pos, tgt=tgt, reference_points=selected.reference, self_attn_mask=mask, meta=meta
        )
