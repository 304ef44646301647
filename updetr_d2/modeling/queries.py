"""Query generators: what a DETR decoder starts from.

A generator returns a ``QueryBundle``: positional queries (shared ``[Q, d]`` or per
image ``[B, Q, d]``), optional content queries, optional reference boxes and an
optional decoder self-attention mask (bool, True = blocked). DETR learns its
positional queries (``LearnedQueries``); anchor-query decoders (DAB-style
Deformable DETR, DN-DETR) start from learned content and boxes (``AnchorQueries``)
and derive the positional query from the box in every layer; UP-DETR conditions the
queries on image patches; DN-DETR and Co-DETR append denoising / positive groups
with a mask that keeps the groups apart.
"""
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

import torch
from detectron2.config import configurable
from detectron2.utils.registry import Registry
from torch import nn

from ..layers.box_ops import inverse_sigmoid  # noqa: F401  (re-exported)

__all__ = [
    "QUERY_GENERATOR_REGISTRY",
    "AnchorQueries",
    "LearnedPointQueries",
    "LearnedQueries",
    "ProposalQueries",
    "QueryBundle",
    "build_query_generator",
    "inverse_sigmoid",
    "per_image",
    "register_query_wrapper",
]

QUERY_GENERATOR_REGISTRY = Registry("QUERY_GENERATOR")
QUERY_GENERATOR_REGISTRY.__doc__ = """Query generators selectable by ``MODEL.DETR.QUERY_GENERATOR``;
built as ``QUERY_GENERATOR_REGISTRY.get(name)(cfg)`` (``@configurable`` constructors)."""

# Functions ``wrap(cfg, generator) -> generator`` applied in order to every generator built
# from a yaml config: a method that decorates any model's queries (DN-DETR's denoising
# groups) registers one here instead of being named by the meta-architectures.
_QUERY_WRAPPERS: List[Callable] = []


def register_query_wrapper(wrap: Callable) -> Callable:
    """Register ``wrap(cfg, generator) -> generator``; usable as a decorator."""
    if wrap not in _QUERY_WRAPPERS:
        _QUERY_WRAPPERS.append(wrap)
    return wrap


def build_query_generator(cfg, default: str) -> nn.Module:
    """The generator named by ``MODEL.DETR.QUERY_GENERATOR`` (``default`` when empty),
    then every registered wrapper."""
    name = cfg.MODEL.DETR.QUERY_GENERATOR or default
    try:
        generator_cls = QUERY_GENERATOR_REGISTRY.get(name)
    except KeyError:
        raise KeyError(
            f"MODEL.DETR.QUERY_GENERATOR={name!r} is not a registered query generator; "
            f"registered: {sorted(n for n, _ in QUERY_GENERATOR_REGISTRY)}"
        ) from None
    generator = generator_cls(cfg)
    for wrap in _QUERY_WRAPPERS:
        generator = wrap(cfg, generator)
    return generator


def per_image(x: Optional[torch.Tensor], batch_size: int) -> Optional[torch.Tensor]:
    """A query field shared by the batch [Q, k] -> [B, Q, k] (a view); [B, Q, k] and
    None as they are."""
    return x.unsqueeze(0).expand(batch_size, -1, -1) if x is not None and x.dim() == 2 else x


@dataclass
class QueryBundle:
    """What a decoder starts from; every field [Q, .] (shared) or [B, Q, .] (per image).

    query_pos: positional queries [.., Q, d] (None when the decoder derives them from
        ``reference_points``).
    tgt: content queries [.., Q, d]; None = zeros (DETR).
    reference_points: where deformable cross-attention looks, normalised to [0, 1]:
        points (x, y) [.., Q, 2] or boxes (cx, cy, w, h) [.., Q, 4] (anchor queries).
    self_attn_mask: bool [Q, Q] or [B * nhead, Q, Q], True = query i may not see j.
    meta: what later phases need to know about the queries (UP-DETR's patch groups,
        ...). ``meta["loss_routes"]``: objects with ``split(outputs) -> (own, rest)``
        and ``losses(criterion, own, targets) -> dict`` that take their part of the
        output dict and supervise it their own way (DN-DETR's denoising groups,
        two-stage proposals, Co-DETR's positive queries); see
        ``SetPredictionDetector.set_losses``.
    """

    query_pos: Optional[torch.Tensor] = None
    tgt: Optional[torch.Tensor] = None
    self_attn_mask: Optional[torch.Tensor] = None
    meta: Dict[str, object] = field(default_factory=dict)
    reference_points: Optional[torch.Tensor] = None

    @property
    def num_queries(self) -> int:
        for x in (self.query_pos, self.tgt, self.reference_points):
            if x is not None:
                return x.shape[-2]
        raise ValueError("QueryBundle has neither query_pos, tgt nor reference_points")


def _size_from_config(cfg) -> Dict[str, int]:
    return {"num_queries": cfg.MODEL.DETR.NUM_OBJECT_QUERIES, "hidden_dim": cfg.MODEL.DETR.HIDDEN_DIM}


class _EmbeddedQueries(nn.Module):
    """Queries whose count is the rows of ``query_embed`` (named as in DETR and Deformable
    DETR, so their checkpoints load), sized by ``MODEL.DETR`` in yaml configs."""

    query_embed: nn.Embedding

    @classmethod
    def from_config(cls, cfg):
        return _size_from_config(cfg)

    @property
    def num_queries(self) -> int:
        return self.query_embed.num_embeddings


@QUERY_GENERATOR_REGISTRY.register()
class LearnedQueries(_EmbeddedQueries):
    """DETR's object queries: ``num_queries`` learned positional embeddings, content zero."""

    @configurable
    def __init__(self, num_queries: int, hidden_dim: int):
        super().__init__()
        self.query_embed = nn.Embedding(num_queries, hidden_dim)

    def forward(self, batch_size: int, **context) -> QueryBundle:
        return QueryBundle(query_pos=self.query_embed.weight)


@QUERY_GENERATOR_REGISTRY.register()
class LearnedPointQueries(_EmbeddedQueries):
    """Deformable DETR's queries: a learned positional and content vector per query
    (``query_embed`` [N, 2d], split in that order) and a reference point predicted from
    the positional one, ``sigmoid(Linear(query_pos))``, as normalised (x, y)."""

    @configurable
    def __init__(self, num_queries: int, hidden_dim: int):
        super().__init__()
        self.hidden_dim = hidden_dim
        self.query_embed = nn.Embedding(num_queries, 2 * hidden_dim)
        self.reference_points = nn.Linear(hidden_dim, 2)
        nn.init.xavier_uniform_(self.reference_points.weight)
        nn.init.zeros_(self.reference_points.bias)

    def forward(self, batch_size: int, **context) -> QueryBundle:
        query_pos, tgt = self.query_embed.weight.split(self.hidden_dim, dim=1)
        reference = self.reference_points(query_pos).sigmoid()
        return QueryBundle(query_pos=query_pos, tgt=tgt, reference_points=reference)


@QUERY_GENERATOR_REGISTRY.register()
class AnchorQueries(nn.Module):
    """Anchor queries (DAB-DETR / DAB-Deformable-DETR, the base of DN-DETR): a learned
    content vector and a learned box per query.

    ``with_indicator``: the content is ``hidden_dim - 1`` learned numbers followed by a
    constant 0, DN-DETR's indicator that tells matching queries (0) from denoising
    queries (1); keep it on when the model may be trained with denoising, so the same
    weights serve with DN on or off.

    Boxes are stored as logits (``anchor_embed``, standard-normal initialised as in
    DAB-DETR, so the initial anchors spread over the image) and returned as
    normalised cxcywh in [0, 1].
    """

    @configurable
    def __init__(self, num_queries: int, hidden_dim: int, with_indicator: bool = True):
        super().__init__()
        self.with_indicator = with_indicator
        self.tgt_embed = nn.Embedding(num_queries, hidden_dim - 1 if with_indicator else hidden_dim)
        self.anchor_embed = nn.Embedding(num_queries, 4)

    @classmethod
    def from_config(cls, cfg):
        return {**_size_from_config(cfg), "with_indicator": cfg.MODEL.DEFORMABLE_DETR.ANCHOR_INDICATOR}

    @property
    def num_queries(self) -> int:
        return self.tgt_embed.num_embeddings

    def content(self) -> torch.Tensor:
        """Content queries [N, hidden_dim] (indicator 0 appended when used)."""
        tgt = self.tgt_embed.weight
        if self.with_indicator:
            tgt = torch.cat([tgt, tgt.new_zeros(tgt.shape[0], 1)], dim=1)
        return tgt

    def forward(self, batch_size: int, **context) -> QueryBundle:
        return QueryBundle(tgt=self.content(), reference_points=self.anchor_embed.weight.sigmoid())


@QUERY_GENERATOR_REGISTRY.register()
class ProposalQueries(nn.Module):
    """Mixed query selection (DINO; the official Co-Deformable-DETR): learned content
    queries joined to the reference boxes (and, when the model makes them, positional
    queries) of the encoder's top proposals, which the model passes as ``proposals``
    [B, K, 4] and ``proposal_pos`` [B, K, d] or None. Static content with image-dependent
    positions: the proposals' own embeddings would make the content as ambiguous as
    the boxes they come from (the DINO paper, section 3.4).

    ``with_indicator``: the content ends with DN-DETR's 0 indicator (as ``AnchorQueries``).
    With fewer proposals than queries (a tiny image) the first K contents are used.
    """

    @configurable
    def __init__(self, num_queries: int, hidden_dim: int, with_indicator: bool = True):
        super().__init__()
        self.with_indicator = with_indicator
        self.tgt_embed = nn.Embedding(num_queries, hidden_dim - 1 if with_indicator else hidden_dim)
        # Standard normal, as DINO's content embedding (nn.Embedding's default).

    @classmethod
    def from_config(cls, cfg):
        dd = cfg.MODEL.DEFORMABLE_DETR
        # The indicator belongs to anchor queries (DN needs them); the official
        # Co-Deformable-DETR's mixed selection has plain positional queries and no indicator.
        return {**_size_from_config(cfg), "with_indicator": dd.ANCHOR_INDICATOR and dd.ANCHOR_QUERIES}

    @property
    def num_queries(self) -> int:
        return self.tgt_embed.num_embeddings

    def forward(self, batch_size: int, proposals: Optional[torch.Tensor] = None,
                proposal_pos: Optional[torch.Tensor] = None, **context) -> QueryBundle:
        if proposals is None:
            raise ValueError("ProposalQueries takes its boxes from the encoder's proposals: it needs a two-stage "
                             "model (MODEL.DEFORMABLE_DETR.TWO_STAGE with MIXED_SELECTION)")
        count = proposals.shape[-2]
        tgt = self.tgt_embed.weight[:count]
        if self.with_indicator:
            tgt = torch.cat([tgt, tgt.new_zeros(count, 1)], dim=1)
        return QueryBundle(query_pos=proposal_pos, tgt=per_image(tgt, batch_size), reference_points=proposals)
