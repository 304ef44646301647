"""One builder for every decoder self-attention mask (UP-DETR, DN-DETR, Co-DETR, ...).

The decoder's queries are laid out as ordered, named segments, e.g.
``[dn (40), match (100)]`` for DN-DETR or ``[match (100), pos_0 (30), pos_1 (30)]``
for Co-DETR. Each :class:`Segment` may carry per-query ``group_ids`` and a per-image
``valid`` mask (False = a padding slot, as when groups are padded to the batch's
largest object count).

A *rule* is a small pure function ``rule(layout) -> blocked`` returning a boolean
mask over the whole layout, [Q, Q] or per image [B, Q, Q]; **True = query i may
not attend key j**, the convention of
:func:`updetr_d2.layers.attention.build_attention_mask`.
:func:`build_self_attn_mask` ORs the rules together and then **always un-blocks
the diagonal**: every query may attend itself, so no row is ever fully blocked,
whatever a rule or a padding does (Co-DETR's zero-padding path, where padded rows were
fully blocked, relies on it).

UP-DETR's original group mask (``models/updetr.py``) starts all -inf and opens the
diagonal blocks of ``q = N // M`` queries (N queries, M patches, N divisible by M) in a
loop over ``range(q)`` instead of ``range(M)``. With ``q >= M`` (e.g. the default
100 / 10, or 100 queries / 5 patches) the loop reaches every group, and its extra steps
slice past the end and do nothing, so that mask is right. Only with ``q < M``, i.e.
``N < M**2`` (e.g. 100 queries / 20 patches), are the groups from ``q`` on never opened:
their ``N - q**2`` rows stay all -inf and give NaN in softmax (75 rows at 100 / 20;
at test time its top-left block for ``M' <= q`` patches is still right). The groups it
does open are the right blocks: the mask never joins two groups.
The mask built here (``within_groups`` over the patch groups) equals the original's
wherever the original is right and is right for every patch count.

Rules:

* :func:`isolate` ``(a, b)``: queries of ``a`` may not see ``b`` (one direction);
* :func:`within_groups` ``(seg)``: inside ``seg`` a query sees only its own group;
* :func:`pad_invalid` ``(seg)``: padding slots of ``seg`` are hidden (as keys) from
  every query, per image.

The masks it serves, each built in its method's folder:

* UP-DETR: ``[match]`` with contiguous patch groups, ``within_groups(match)``
  (``methods/updetr/groups.py``);
* DN-DETR: ``[dn, match]``, ``within_groups(dn)`` + ``isolate(match, dn)`` (+
  ``pad_invalid(dn)``) (``methods/dn/queries.py``); DN queries still see the
  matching queries, as in DN-DETR;
* Co-DETR: each head's positive queries ``[aux]`` decoded in a pass of their own,
  ``pad_invalid(aux)`` (``methods/codetr/positive_queries.py``).

A [B, Q, Q] result must be expanded per head before it reaches the transformer,
which takes [Q, Q] or [B * nhead, Q, Q]: :func:`expand_to_heads`.
"""
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

import torch
from torch import Tensor

__all__ = [
    "Segment",
    "QueryLayout",
    "Rule",
    "isolate",
    "within_groups",
    "pad_invalid",
    "build_self_attn_mask",
    "expand_to_heads",
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
