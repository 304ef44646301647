"""UP-DETR's query groups: the N object queries split into M groups of consecutive
queries, one per query patch, and the decoder mask that keeps the groups apart (built by
the project's one mask builder).

The grouping is fixed when the model is built, by the number of patches it is trained
with (``INPUT.QUERY_PATCH.NUM_PATCHES``). Given fewer patches (one-shot detection, the
patch visualiser), the model keeps that grouping: the given patches take the first groups
and the queries of the remaining groups are not decoded at all
(:func:`patch_query_groups`). That is the original code's test-time behaviour: it keeps
the first ``given * N // M`` object queries and the top-left block of its training mask
and drops the rest, so a model's predictions for a patch do not depend on how many
other patches it is given.
"""
from typing import List, Optional

import torch
from torch import Tensor

from ...modeling.attention_masks import QueryLayout, Segment, build_self_attn_mask, within_groups

__all__ = ["contiguous_group_sizes", "contiguous_groups", "patch_query_groups", "updetr_group_mask"]


def contiguous_group_sizes(num_queries: int, num_groups: int) -> List[int]:
    """Sizes of ``num_groups`` groups of consecutive queries covering ``num_queries``.

    When the split is uneven the first ``num_queries % num_groups`` groups get one
    extra query (sizes differ by at most one, larger first), e.g. 10 into 3 -> [4, 3, 3].
    UP-DETR's default 100 queries / 10 patches gives ten groups of 10 (the original
    requires an even split; this is its ``num_queries // num_patches`` whenever it is).

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


def patch_query_groups(
    num_queries: int, num_patches: int, num_given: Optional[int] = None,
    device: Optional[torch.device] = None,
) -> Tensor:
    """Group id of each DECODED query of a model whose ``num_queries`` queries are grouped
    for ``num_patches`` patches, when it is given ``num_given`` patches (default: all).

    The grouping stays :func:`contiguous_groups` ``(num_queries, num_patches)``; patch k
    goes to group k and only the queries of the first ``num_given`` groups are decoded,
    i.e. the first ``sum(contiguous_group_sizes(num_queries, num_patches)[:num_given])``
    queries, e.g. 100 queries / 10 patches given 3 -> 30 queries in 3 groups of 10.
    With ``num_given == num_patches`` this is ``contiguous_groups(num_queries, num_patches)``.

    Raises:
        ValueError: if ``num_given`` is not in ``[1, num_patches]``: the model has no
            group for an extra patch (nor does the original, whose shapes then disagree).
    """
    groups = contiguous_groups(num_queries, num_patches, device)
    if num_given is None or num_given == num_patches:
        return groups
    if not 1 <= num_given <= num_patches:
        raise ValueError(
            f"{num_given} query patches given to a model whose {num_queries} queries are grouped "
            f"for {num_patches} patches (INPUT.QUERY_PATCH.NUM_PATCHES): "
            + ("more patches than it has groups" if num_given > num_patches else "need at least one patch")
        )
    return groups[: sum(contiguous_group_sizes(num_queries, num_patches)[:num_given])]


def updetr_group_mask(
    num_queries: int, num_groups: int, device: Optional[torch.device] = None,
    num_given: Optional[int] = None,
) -> Tensor:
    """UP-DETR's decoder self-attention mask, bool [Q, Q] (True = blocked): each query
    sees exactly the queries of its own patch group. Q = ``num_queries``, or with
    ``num_given`` patches the decoded queries of :func:`patch_query_groups` (the top-left
    block of the full mask)."""
    groups = patch_query_groups(num_queries, num_groups, num_given, device)
    layout = QueryLayout([Segment("match", len(groups), group_ids=groups)])
    return build_self_attn_mask(layout, [within_groups("match")])
