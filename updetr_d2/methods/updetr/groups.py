"""UP-DETR's query groups: the N object queries split into M groups of consecutive
queries, one per query patch, and the decoder mask that keeps the groups apart (built by
the project's one mask builder)."""
from typing import List, Optional

import torch
from torch import Tensor

from ...modeling.attention_masks import QueryLayout, Segment, build_self_attn_mask, within_groups

__all__ = ["contiguous_group_sizes", "contiguous_groups", "updetr_group_mask"]


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
