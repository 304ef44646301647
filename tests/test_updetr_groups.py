"""UP-DETR's query groups and decoder mask (methods/updetr/groups.py): the split of the
queries into patch groups, the groups used when fewer patches are given, the mask against
the original code's mask construction, and the mask's effect in the transformer."""
import pytest
import torch

import updetr_d2  # noqa: F401
from updetr_d2.methods.updetr.groups import (
    contiguous_group_sizes,
    contiguous_groups,
    patch_query_groups,
    updetr_group_mask,
)

from helpers import TINY_D, TINY_NHEAD, tiny_image_inputs, tiny_transformer


def _golden(*rows):
    """Rows of '.' (may attend) and 'x' (blocked) -> bool [Q, Q]."""
    assert len({len(r) for r in rows}) == 1
    return torch.tensor([[c == "x" for c in r] for r in rows])


def _no_full_row(blocked):
    return not blocked.all(dim=-1).any()


def _original_mask(num_queries, num_patches):
    """The original's additive decoder mask, written from its definition
    (dddzg/up-detr models/updetr.py): all -inf, then a loop over range(N // M) that
    opens (sets to 0) the diagonal block i of N // M queries."""
    per_patch = num_queries // num_patches
    mask = torch.full((num_queries, num_queries), float("-inf"))
    for i in range(per_patch):
        mask[i * per_patch : (i + 1) * per_patch, i * per_patch : (i + 1) * per_patch] = 0
    return mask


def _block_diagonal(sizes):
    n = sum(sizes)
    allowed = torch.zeros(n, n, dtype=torch.bool)
    start = 0
    for s in sizes:
        allowed[start : start + s, start : start + s] = True
        start += s
    return ~allowed


def test_updetr_default_ten_blocks_of_ten():
    m = updetr_group_mask(100, 10)
    assert m.shape == (100, 100) and m.dtype == torch.bool
    assert torch.equal(m, _block_diagonal([10] * 10))
    assert (~m).sum() == 10 * 10 * 10


def test_updetr_twenty_patches_no_fully_blocked_row():
    # regression for the original's bug: there 75 of 100 rows are fully blocked (NaN softmax)
    assert torch.isinf(_original_mask(100, 20)).all(dim=-1).sum() == 75
    m = updetr_group_mask(100, 20)
    assert torch.equal(m, _block_diagonal([5] * 20))
    assert _no_full_row(m)
    assert ((~m).sum(dim=-1) == 5).all()


def test_updetr_uneven_golden():
    assert contiguous_group_sizes(10, 3) == [4, 3, 3]
    assert contiguous_groups(10, 3).tolist() == [0, 0, 0, 0, 1, 1, 1, 2, 2, 2]
    expected = _golden(
        "....xxxxxx",
        "....xxxxxx",
        "....xxxxxx",
        "....xxxxxx",
        "xxxx...xxx",
        "xxxx...xxx",
        "xxxx...xxx",
        "xxxxxxx...",
        "xxxxxxx...",
        "xxxxxxx...",
    )
    assert torch.equal(updetr_group_mask(10, 3), expected)


@pytest.mark.parametrize("num_queries", [1, 2, 3, 5, 7, 10, 13, 16, 31, 100])
def test_updetr_groups_properties(num_queries):
    for num_groups in range(1, num_queries + 1):
        groups = contiguous_groups(num_queries, num_groups)
        sizes = torch.bincount(groups, minlength=num_groups)
        # every query in exactly one group, every group non-empty, groups cover all queries
        assert groups.dtype == torch.long and groups.shape == (num_queries,)
        assert set(groups.tolist()) == set(range(num_groups))
        assert sizes.sum() == num_queries and (sizes >= 1).all()
        # consecutive queries, sizes differ by at most one, the larger ones first
        assert groups[0] == 0 and ((groups.diff() == 0) | (groups.diff() == 1)).all()
        assert sizes.max() - sizes.min() <= 1
        assert (sizes.diff() <= 0).all()
        assert sizes.tolist() == contiguous_group_sizes(num_queries, num_groups)

        m = updetr_group_mask(num_queries, num_groups)
        same_group = groups[:, None] == groups[None, :]
        # a row is unblocked exactly on its own group: nothing across groups, all of its own
        assert torch.equal(~m, same_group)
        assert _no_full_row(m)
        assert torch.equal(m, m.T)


def test_updetr_expand_patch_features_to_queries():
    # patch k's feature on group k's queries, consecutive (not strided as with repeat)
    feats = torch.arange(2 * 3 * 1, dtype=torch.float).view(2, 3, 1)  # [B, M, d]
    idx = contiguous_groups(7, 3)
    per_query = feats[:, idx]
    assert per_query[..., 0].tolist() == [[0, 0, 0, 1, 1, 2, 2], [3, 3, 3, 4, 4, 5, 5]]
    sizes = torch.tensor(contiguous_group_sizes(7, 3))
    assert torch.equal(per_query, feats.repeat_interleave(sizes, dim=1))


def test_updetr_one_query_per_patch_is_identity_only():
    m = updetr_group_mask(6, 6)
    assert torch.equal(m, ~torch.eye(6, dtype=torch.bool))
    assert _no_full_row(m)


@pytest.mark.parametrize("num_queries,num_groups", [(10, 11), (1, 2), (100, 200)])
def test_updetr_more_patches_than_queries_raises(num_queries, num_groups):
    with pytest.raises(ValueError, match="more patches") as err:
        updetr_group_mask(num_queries, num_groups)
    msg = str(err.value)
    assert "queries" in msg and str(num_queries) in msg and str(num_groups) in msg
    with pytest.raises(ValueError, match="more patches"):
        contiguous_groups(num_queries, num_groups)


def test_updetr_rejects_zero_groups():
    with pytest.raises(ValueError):
        contiguous_groups(10, 0)


# ------------------------------------------------------------------------ the original's mask
# (N, M) with N divisible by M, as the original requires: queries per patch q = N // M
# at least M (right there) or below M (broken there).
RIGHT = [(100, 10), (100, 5), (100, 4), (100, 1), (9, 3), (12, 3), (6, 2), (4, 2)]
BROKEN = [(100, 20), (100, 25), (100, 50), (12, 4), (8, 4), (6, 3)]


@pytest.mark.parametrize("num_queries,num_patches", RIGHT)
def test_original_mask_equals_ours_when_queries_per_patch_at_least_patches(num_queries, num_patches):
    assert num_queries // num_patches >= num_patches
    original = _original_mask(num_queries, num_patches)
    assert torch.equal(torch.isinf(original), updetr_group_mask(num_queries, num_patches))


@pytest.mark.parametrize("num_queries,num_patches", BROKEN)
def test_original_mask_breaks_when_queries_per_patch_below_patches(num_queries, num_patches):
    q = num_queries // num_patches
    assert q < num_patches
    original = _original_mask(num_queries, num_patches)
    blocked, ours = torch.isinf(original), updetr_group_mask(num_queries, num_patches)
    assert not torch.equal(blocked, ours)
    # groups q.. are never opened: their N - q*q rows are fully blocked, nothing else is
    full = blocked.all(dim=-1)
    assert full.sum() == num_queries - q * q and full[q * q :].all()
    assert torch.equal(blocked[: q * q], ours[: q * q])  # the blocks it does open are right
    # the additive mask gives NaN attention in exactly those rows; ours none
    logits = torch.randn(num_queries, num_queries, generator=torch.Generator().manual_seed(0))
    assert torch.equal(torch.softmax(logits + original, -1).isnan().all(-1), full)
    assert torch.softmax(logits.masked_fill(ours, float("-inf")), -1).isfinite().all()


@pytest.mark.parametrize("num_queries,num_patches", RIGHT + BROKEN)
def test_fewer_patches_use_the_top_left_block_as_the_original(num_queries, num_patches):
    """Given M' < M patches the original keeps its mask's top-left M' * q block; ours
    is that block of the right mask, and equals the original's wherever the original's
    block is right (M' <= q)."""
    q = num_queries // num_patches
    full = updetr_group_mask(num_queries, num_patches)
    for given in range(1, num_patches + 1):
        m = updetr_group_mask(num_queries, num_patches, num_given=given)
        assert m.shape == (given * q, given * q)
        assert torch.equal(m, full[: given * q, : given * q])
        assert _no_full_row(m)
        if given <= q:
            assert torch.equal(m, torch.isinf(_original_mask(num_queries, num_patches)[: given * q, : given * q]))


def test_patch_query_groups_keep_the_training_grouping():
    # a model built for 10 patches on 100 queries, given 3: three groups of 10 (not 34/33/33)
    assert patch_query_groups(100, 10, 3).tolist() == [0] * 10 + [1] * 10 + [2] * 10
    assert contiguous_groups(100, 3).tolist() != patch_query_groups(100, 10, 3).tolist()
    for n, m in [(100, 10), (10, 3), (7, 7), (20, 4)]:
        assert torch.equal(patch_query_groups(n, m), contiguous_groups(n, m))
        assert torch.equal(patch_query_groups(n, m, m), contiguous_groups(n, m))
        for given in range(1, m + 1):
            g = patch_query_groups(n, m, given)
            assert torch.equal(g, contiguous_groups(n, m)[: len(g)])
            assert set(g.tolist()) == set(range(given))
            assert len(g) == sum(contiguous_group_sizes(n, m)[:given])
    # uneven training split: the first groups keep their sizes ([4, 3, 3] for 10 / 3)
    assert patch_query_groups(10, 3, 2).tolist() == [0, 0, 0, 0, 1, 1, 1]


@pytest.mark.parametrize("given", [0, 11, 20])
def test_patch_query_groups_refuse_counts_outside_the_groups(given):
    with pytest.raises(ValueError, match="grouped for 10 patches"):
        patch_query_groups(100, 10, given)
    with pytest.raises(ValueError, match="grouped for 10 patches"):
        updetr_group_mask(100, 10, num_given=given)


# ------------------------------------------------------------------------ in the transformer
D, NHEAD = TINY_D, TINY_NHEAD


@torch.no_grad()
def test_updetr_mask_isolates_groups_in_the_decoder():
    model = tiny_transformer()
    src, mask, pos = tiny_image_inputs()
    N, M, B = 10, 3, 2
    groups = contiguous_groups(N, M)
    blocked = updetr_group_mask(N, M)
    query_pos = torch.randn(B, N, D, generator=torch.Generator().manual_seed(2))
    hs, _ = model(src, mask, query_pos, pos, self_attn_mask=blocked)
    assert torch.isfinite(hs).all()
    for k in range(M):
        in_k = groups == k
        qp = query_pos.clone()
        qp[:, in_k] += torch.randn(B, int(in_k.sum()), D)
        hs2, _ = model(src, mask, qp, pos, self_attn_mask=blocked)
        assert torch.isfinite(hs2).all()
        assert torch.equal(hs2[:, :, ~in_k], hs[:, :, ~in_k])  # bit-identical
        assert not torch.allclose(hs2[:, :, in_k], hs[:, :, in_k], atol=1e-3)
        # without the mask the change leaks to the other groups
        ref, _ = model(src, mask, query_pos, pos)
        ref2, _ = model(src, mask, qp, pos)
        assert not torch.allclose(ref2[:, :, ~in_k], ref[:, :, ~in_k], atol=1e-3)
