"""One builder for every decoder self-attention mask (UP-DETR, DN-DETR, Co-DETR, ...).

The decoder's queries are laid out as ordered, named segments, e.g.
``[dn (40), match (100)]`` for DN-DETR or ``[match (100), pos_0 (30), pos_1 (30)]``
for Co-DETR. Each :class:`Segment` may carry per-query ``group_ids`` and a per-image
``valid`` mask (False = a padding slot, as when groups are padded to the batch's
largest object count).

A *rule* is a small pure function ``rule(layout) -> blocked`` returning a boolean
mask over the whole layout, [Q, Q] or per image [B, Q, Q]; **True = query i may
not attend key j**, the convention of
:func:`updetr_d2.layers.transformer.build_attention_mask`.
:func:`build_self_attn_mask` ORs the rules together and then **always un-blocks
the diagonal**: every query may attend itself, so no row is ever fully blocked.
That is the fix for UP-DETR's official group mask, whose loop ran over the queries
per patch instead of the patches and left whole rows at -inf (NaN softmax) whenever
``num_patches != queries_per_patch``; the same guard covers Co-DETR's zero-padding
path, where padded rows were fully blocked.

Rules:

* :func:`isolate` ``(a, b)``: queries of ``a`` may not see ``b`` (one direction);
* :func:`separate_segments` ``(*segs)``: no interaction between the listed segments;
* :func:`within_groups` ``(seg)``: inside ``seg`` a query sees only its own group;
* :func:`pad_invalid` ``(seg)``: padding slots of ``seg`` are hidden (as keys) from
  every query, per image.

The three masks this serves (see ``notes/architecture.md``):

* UP-DETR: ``[match]`` with contiguous patch groups, ``within_groups(match)``
  (:func:`updetr_group_mask`);
* DN-DETR: ``[dn, match]``, ``within_groups(dn)`` + ``isolate(match, dn)``
  (:func:`dn_group_mask`); DN queries still see the matching queries, as in DN-DETR;
* Co-DETR: ``[match, pos_0, ...]``, ``separate_segments(...)`` + ``pad_invalid(pos_k)``.

A [B, Q, Q] result must be expanded per head before it reaches the transformer,
which takes [Q, Q] or [B * nhead, Q, Q]: :func:`expand_to_heads`.
"""
from dataclasses import dataclass, field
from itertools import combinations
from typing import Callable, Dict, List, Optional, Sequence

import torch
from torch import Tensor

__all__ = [
    "Segment",
    "QueryLayout",
    "Rule",
    "isolate",
    "separate_segments",
    "within_groups",
    "pad_invalid",
    "build_self_attn_mask",
    "expand_to_heads",
    "contiguous_group_sizes",
    "contiguous_groups",
    "updetr_group_mask",
    "dn_group_mask",
]


@dataclass(frozen=True, eq=False)  # eq=False: tensors have no truth value
class Segment:
    """``size`` consecutive queries named ``name``.

    group_ids: long [size], the group of each query (for :func:`within_groups`).
    valid: bool [B, size], False = padding slot in that image (for :func:`pad_invalid`).
    """

    name: str
    size: int
    group_ids: Optional[Tensor] = None
    valid: Optional[Tensor] = None

    def __post_init__(self):
        if self.size < 0:
            raise ValueError(f"segment {self.name!r} has negative size {self.size}")
        g, v = self.group_ids, self.valid
        if g is not None and (g.dim() != 1 or g.shape[0] != self.size or g.is_floating_point()):
            raise ValueError(
                f"segment {self.name!r}: group_ids must be an integer tensor [{self.size}]; "
                f"got {g.dtype} {tuple(g.shape)}"
            )
        if v is not None and (v.dtype != torch.bool or v.dim() != 2 or v.shape[1] != self.size):
            raise ValueError(
                f"segment {self.name!r}: valid must be bool [B, {self.size}]; "
                f"got {v.dtype} {tuple(v.shape)}"
            )


@dataclass(eq=False)
class QueryLayout:
    """Ordered segments; segment ``k`` occupies the queries after segments ``0..k-1``.

    ``segments`` may mix :class:`Segment` and ``(name, size)`` pairs.
    """

    segments: List[Segment]
    _slices: Dict[str, slice] = field(init=False, repr=False)

    def __post_init__(self):
        self.segments = [s if isinstance(s, Segment) else Segment(*s) for s in self.segments]
        self._slices, start = {}, 0
        for s in self.segments:
            if s.name in self._slices:
                raise ValueError(f"duplicate segment name {s.name!r}")
            self._slices[s.name] = slice(start, start + s.size)
            start += s.size
        batches = {s.valid.shape[0] for s in self.segments if s.valid is not None}
        if len(batches) > 1:
            raise ValueError(f"segments' valid masks disagree on the batch size: {sorted(batches)}")

    @property
    def num_queries(self) -> int:
        return sum(s.size for s in self.segments)

    @property
    def batch_size(self) -> Optional[int]:
        """B of the ``valid`` masks, or None when no segment has one."""
        for s in self.segments:
            if s.valid is not None:
                return s.valid.shape[0]
        return None

    @property
    def device(self) -> torch.device:
        """The device of the first tensor in the layout (CPU when there is none)."""
        for s in self.segments:
            for t in (s.group_ids, s.valid):
                if t is not None:
                    return t.device
        return torch.device("cpu")

    def segment(self, name: str) -> Segment:
        return self.segments[self._index(name)]

    def slice(self, name: str) -> slice:
        self._index(name)  # for the error message
        return self._slices[name]

    def _index(self, name: str) -> int:
        for i, s in enumerate(self.segments):
            if s.name == name:
                return i
        raise KeyError(f"no segment {name!r} in layout {[s.name for s in self.segments]}")


Rule = Callable[[QueryLayout], Tensor]


def _nothing_blocked(layout: QueryLayout) -> Tensor:
    q = layout.num_queries
    return torch.zeros(q, q, dtype=torch.bool, device=layout.device)


def isolate(a: str, b: str) -> Rule:
    """Queries of segment ``a`` may not see segment ``b``; ``b`` may still see ``a``.

    DN-DETR: ``isolate("match", "dn")``: the matching queries must not see the
    ground truth hidden in the denoising queries, while those see the matching ones.
    """
    if a == b:
        raise ValueError(f"isolate({a!r}, {b!r}) would block a segment from itself; use within_groups")

    def rule(layout: QueryLayout) -> Tensor:
        blocked = _nothing_blocked(layout)
        blocked[layout.slice(a), layout.slice(b)] = True
        return blocked

    return rule


def separate_segments(*names: str) -> Rule:
    """No attention between any two of the listed segments, in either direction
    (Co-DETR: the matching queries and each head's positive queries)."""
    pairs = [isolate(a, b) for x, y in combinations(names, 2) for a, b in ((x, y), (y, x))]

    def rule(layout: QueryLayout) -> Tensor:
        blocked = _nothing_blocked(layout)
        for r in pairs:
            blocked |= r(layout)
        return blocked

    return rule


def within_groups(name: str) -> Rule:
    """Inside segment ``name``, a query sees only queries with its group id
    (block-diagonal for contiguous groups). Other segments are untouched."""

    def rule(layout: QueryLayout) -> Tensor:
        g = layout.segment(name).group_ids
        if g is None:
            raise ValueError(f"within_groups({name!r}) needs the segment's group_ids")
        s = layout.slice(name)
        blocked = _nothing_blocked(layout)
        blocked[s, s] = g[:, None] != g[None, :]
        return blocked

    return rule


def pad_invalid(name: str) -> Rule:
    """Padding slots of segment ``name`` (``valid`` False) are blocked as keys for
    every query of that image: a per-image [B, Q, Q] mask. Without ``valid`` nothing
    is padded and the rule blocks nothing. (Padded queries still see the valid ones;
    their outputs are the loss's business.)"""

    def rule(layout: QueryLayout) -> Tensor:
        valid = layout.segment(name).valid
        if valid is None:
            return _nothing_blocked(layout)
        blocked = _nothing_blocked(layout).repeat(valid.shape[0], 1, 1)
        blocked[:, :, layout.slice(name)] = ~valid[:, None, :]
        return blocked

    return rule


def build_self_attn_mask(layout: QueryLayout, rules: Sequence[Rule]) -> Tensor:
    """OR the rules' blocked masks; returns bool [Q, Q], or [B, Q, Q] when a rule is per
    image (True = may not attend), on the layout's device.

    The diagonal is always un-blocked afterwards: a query may attend itself whatever
    the rules say, so no row is fully blocked and softmax never sees only -inf.
    A query left alone by the rules simply attends only to itself.
    """
    blocked = _nothing_blocked(layout)
    for rule in rules:
        blocked = blocked | rule(layout)  # broadcasts [Q, Q] | [B, Q, Q]
    eye = torch.eye(layout.num_queries, dtype=torch.bool, device=blocked.device)
    return blocked & ~eye


def expand_to_heads(blocked: Tensor, num_heads: int) -> Tensor:
    """[B, Q, Q] -> [B * num_heads, Q, Q] (image-major, as the transformer takes it);
    a shared [Q, Q] mask is returned as is."""
    if blocked.dim() == 2:
        return blocked
    return blocked.repeat_interleave(num_heads, dim=0)


# ------------------------------------------------------------------ UP-DETR groups


def contiguous_group_sizes(num_queries: int, num_groups: int) -> List[int]:
    """Sizes of ``num_groups`` groups of consecutive queries covering ``num_queries``.

    When the split is uneven the first ``num_queries % num_groups`` groups get one
    extra query (sizes differ by at most one, larger first), e.g. 10 into 3 -> [4, 3, 3].
    UP-DETR's default 100 queries / 10 patches gives ten groups of 10.

    Raises:
        ValueError: if ``num_groups > num_queries`` (more patches than queries: some
            patch would have no query) or either number is not positive.
    """
    if num_groups < 1 or num_queries < 1:
        raise ValueError(
            f"need at least one query and one group (patch); got num_queries={num_queries}, "
            f"num_groups={num_groups}"
        )
    if num_groups > num_queries:
        raise ValueError(
            f"cannot split {num_queries} queries into {num_groups} groups: there are more "
            f"patches ({num_groups}) than queries ({num_queries}), so some patch would get "
            "no query. Use at most as many patches as object queries."
        )
    base, extra = divmod(num_queries, num_groups)
    return [base + 1 if k < extra else base for k in range(num_groups)]


def contiguous_groups(
    num_queries: int, num_groups: int, device: Optional[torch.device] = None
) -> Tensor:
    """Group id of each query (long [num_queries]), groups of consecutive queries sized
    by :func:`contiguous_group_sizes`, e.g. 10 into 3 -> [0,0,0,0,1,1,1,2,2,2].

    It is also the query -> patch index: ``patch_feats[:, contiguous_groups(N, M)]``
    expands per-patch features [B, M, d] to per-query ones [B, N, d] (patch k on
    group k's queries, as ``repeat_interleave`` with the group sizes; never ``repeat``,
    which would stride them).
    """
    sizes = torch.tensor(contiguous_group_sizes(num_queries, num_groups), device=device)
    return torch.repeat_interleave(torch.arange(num_groups, device=device), sizes)


def updetr_group_mask(
    num_queries: int, num_groups: int, device: Optional[torch.device] = None
) -> Tensor:
    """UP-DETR's decoder self-attention mask, bool [N, N] (True = blocked): each query
    sees exactly the queries of its own patch group."""
    groups = contiguous_groups(num_queries, num_groups, device)
    layout = QueryLayout([Segment("match", num_queries, group_ids=groups)])
    return build_self_attn_mask(layout, [within_groups("match")])


# ------------------------------------------------------------------ DN-DETR groups


def dn_group_mask(
    num_dn_groups: int,
    group_size: int,
    num_matching: int,
    device: Optional[torch.device] = None,
) -> Tensor:
    """DN-DETR's mask over ``[dn (num_dn_groups * group_size), match (num_matching)]``,
    bool [T, T]: DN groups do not see each other, matching queries do not see any DN
    query, DN queries see their own group and every matching query (as DN-DETR).
    With ``group_size == 0`` (no ground truth in the batch) nothing is blocked.
    DN padding slots are not masked here, as in DN-DETR; add ``pad_invalid("dn")``
    with a layout of your own to hide them.
    """
    dn = num_dn_groups * group_size
    groups = torch.arange(dn, device=device) // max(group_size, 1)
    layout = QueryLayout(
        [Segment("dn", dn, group_ids=groups), Segment("match", num_matching)]
    )
    return build_self_attn_mask(layout, [within_groups("dn"), isolate("match", "dn")])
