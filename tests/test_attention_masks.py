"""The decoder self-attention mask builder: layouts and rules, DN-DETR and Co-DETR masks
(golden matrices by hand, properties over many sizes) and their effect on the transformer.
UP-DETR's patch-group masks are tested in test_updetr_groups.py."""
import pytest
import torch

import updetr_d2  # noqa: F401
from updetr_d2.modeling.attention_masks import (
    QueryLayout,
    Segment,
    build_self_attn_mask,
    expand_to_heads,
    isolate,
    pad_invalid,
    within_groups,
)

from helpers import TINY_D, TINY_NHEAD, dn_group_mask, tiny_image_inputs, tiny_transformer


def separate_segments(*names):
    """No attention between any two of the segments, either way (a one-pass Co-DETR
    layout), as ``isolate`` rules."""
    return [isolate(a, b) for a in names for b in names if a != b]


def _golden(*rows):
    """Rows of '.' (may attend) and 'x' (blocked) -> bool [Q, Q]."""
    assert len({len(r) for r in rows}) == 1
    return torch.tensor([[c == "x" for c in r] for r in rows])


def _no_full_row(blocked):
    return not blocked.all(dim=-1).any()


# ------------------------------------------------------------------------ layout, rules


def test_layout_slices_and_sizes():
    layout = QueryLayout([("dn", 4), Segment("match", 3), ("pos_0", 0), ("pos_1", 2)])
    assert layout.num_queries == 9
    assert layout.slice("dn") == slice(0, 4)
    assert layout.slice("match") == slice(4, 7)
    assert layout.slice("pos_0") == slice(7, 7)
    assert layout.slice("pos_1") == slice(7, 9)
    assert layout.batch_size is None
    assert layout.device == torch.device("cpu")
    with pytest.raises(KeyError, match="nope"):
        layout.slice("nope")


def test_layout_rejects_bad_segments():
    with pytest.raises(ValueError, match="duplicate"):
        QueryLayout([("a", 2), ("a", 3)])
    with pytest.raises(ValueError, match="group_ids"):
        Segment("a", 3, group_ids=torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="group_ids"):
        Segment("a", 2, group_ids=torch.zeros(2))
    with pytest.raises(ValueError, match="valid"):
        Segment("a", 2, valid=torch.ones(2, 2))
    with pytest.raises(ValueError, match="batch"):
        QueryLayout(
            [Segment("a", 1, valid=torch.ones(2, 1, dtype=torch.bool)),
             Segment("b", 1, valid=torch.ones(3, 1, dtype=torch.bool))]
        )
    with pytest.raises(ValueError, match="group_ids"):
        build_self_attn_mask(QueryLayout([("a", 2)]), [within_groups("a")])
    with pytest.raises(ValueError):
        isolate("a", "a")


def test_no_rules_blocks_nothing_and_returns_bool():
    m = build_self_attn_mask(QueryLayout([("a", 2), ("b", 3)]), [])
    assert m.dtype == torch.bool and m.shape == (5, 5) and not m.any()


def test_isolate_is_one_directional():
    layout = QueryLayout([("a", 2), ("b", 1)])
    expected = _golden(
        "..x",
        "..x",
        "...",
    )
    assert torch.equal(build_self_attn_mask(layout, [isolate("a", "b")]), expected)


def test_pad_invalid_hides_padded_keys_from_every_segment():
    valid = torch.tensor([[True, False], [True, True]])
    layout = QueryLayout([("match", 2), Segment("pos", 2, valid=valid)])
    m = build_self_attn_mask(layout, [pad_invalid("pos")])
    assert m.shape == (2, 4, 4)
    assert torch.equal(m[0], _golden("...x", "...x", "...x", "...."))
    assert not m[1].any()
    # no valid mask: nothing is padded
    assert not build_self_attn_mask(QueryLayout([("pos", 3)]), [pad_invalid("pos")]).any()


def test_diagonal_is_always_unblocked():
    # a rule that blocks everything still leaves every query its own key
    layout = QueryLayout([("a", 3)])
    m = build_self_attn_mask(layout, [lambda lay: torch.ones(3, 3, dtype=torch.bool)])
    assert torch.equal(m, ~torch.eye(3, dtype=torch.bool))


def test_result_follows_the_inputs_device():
    # "meta" stands for any non-CPU device here: no data, only the device is checked
    g = torch.zeros(3, dtype=torch.long, device="meta")
    layout = QueryLayout([Segment("a", 3, group_ids=g), ("b", 2)])
    assert layout.device.type == "meta"
    m = build_self_attn_mask(layout, [within_groups("a"), isolate("b", "a")])
    assert m.device.type == "meta" and m.dtype == torch.bool and m.shape == (5, 5)


def test_expand_to_heads_is_image_major():
    blocked = torch.rand(3, 4, 4) > 0.5
    out = expand_to_heads(blocked, 2)
    assert out.shape == (6, 4, 4)
    for b in range(3):
        for h in range(2):
            assert torch.equal(out[b * 2 + h], blocked[b])
    shared = torch.rand(4, 4) > 0.5
    assert expand_to_heads(shared, 2) is shared


# ------------------------------------------------------------------------ DN-DETR


def test_dn_golden_two_groups_of_two_three_matching():
    # dn_detr.md, tests 1: rows 0-1 block cols 2-3; rows 2-3 block 0-1; rows 4-6 block 0-3
    expected = _golden(
        "..xx...",
        "..xx...",
        "xx.....",
        "xx.....",
        "xxxx...",
        "xxxx...",
        "xxxx...",
    )
    assert torch.equal(_dn_mask(2, 2, 3), expected)
    assert torch.equal(dn_group_mask(2, 2, 3), expected)


def _dn_mask(num_groups, group_size, num_matching):
    """The DN mask as the denoising generator builds it (methods/dn/queries.py)."""
    layout = _dn_layout(num_groups, group_size, num_matching)
    return build_self_attn_mask(layout, [within_groups("dn"), isolate("match", "dn")])


def _dn_layout(num_groups, group_size, num_matching):
    dn = num_groups * group_size
    groups = torch.arange(dn) // max(group_size, 1)
    return QueryLayout([Segment("dn", dn, group_ids=groups), Segment("match", num_matching)])


@pytest.mark.parametrize("num_groups,group_size,num_matching", [(1, 1, 1), (2, 3, 4), (5, 2, 7), (3, 4, 10)])
def test_dn_matches_the_reference_formula(num_groups, group_size, num_matching):
    layout = _dn_layout(num_groups, group_size, num_matching)
    m = build_self_attn_mask(layout, [within_groups("dn"), isolate("match", "dn")])
    assert torch.equal(m, dn_group_mask(num_groups, group_size, num_matching))
    pad = num_groups * group_size
    T = pad + num_matching
    # dn_detr.md 3.8, element by element
    for i in range(T):
        for j in range(T):
            ref = (i >= pad and j < pad) or (i < pad and j < pad and i // group_size != j // group_size)
            assert bool(m[i, j]) == ref, (i, j)
    dn, match = layout.slice("dn"), layout.slice("match")
    assert m[match, dn].all()  # matching never sees a DN query
    assert not m[dn, match].any()  # DN queries see every matching query (as DN-DETR)
    assert not m[match, match].any()
    assert _no_full_row(m)


def test_dn_without_ground_truth_blocks_nothing():
    m = _dn_mask(5, 0, 4)
    assert m.shape == (4, 4) and not m.any()


# ------------------------------------------------------------------------ Co-DETR


def _codetr_layout():
    # B=2; image 0: pos_0 slot 1 padded; image 1: all of pos_1 padded
    return QueryLayout(
        [
            Segment("match", 2),
            Segment("pos_0", 2, valid=torch.tensor([[True, False], [True, True]])),
            Segment("pos_1", 2, valid=torch.tensor([[True, True], [False, False]])),
        ]
    )


CODETR_RULES = [
    *separate_segments("match", "pos_0", "pos_1"),
    pad_invalid("pos_0"),
    pad_invalid("pos_1"),
]


def test_codetr_golden_per_image():
    m = build_self_attn_mask(_codetr_layout(), CODETR_RULES)
    assert m.shape == (2, 6, 6) and m.dtype == torch.bool
    image0 = _golden(
        "..xxxx",
        "..xxxx",
        "xx.xxx",
        "xx..xx",  # the padded slot still sees itself
        "xxxx..",
        "xxxx..",
    )
    image1 = _golden(
        "..xxxx",
        "..xxxx",
        "xx..xx",
        "xx..xx",
        "xxxx.x",
        "xxxxx.",
    )
    assert torch.equal(m[0], image0)
    assert torch.equal(m[1], image1)


def test_codetr_properties():
    torch.manual_seed(0)
    B, n_match, n_pos = 3, 5, [4, 6]
    segments = [Segment("match", n_match)]
    for k, n in enumerate(n_pos):
        valid = torch.rand(B, n) > 0.4
        valid[0] = False  # one image with no positive at all for every head
        segments.append(Segment(f"pos_{k}", n, valid=valid))
    layout = QueryLayout(segments)
    names = [s.name for s in segments]
    rules = separate_segments(*names) + [pad_invalid(n) for n in names[1:]]
    m = build_self_attn_mask(layout, rules)
    assert m.shape == (B, layout.num_queries, layout.num_queries)
    for a in names:
        for b in names:
            if a != b:
                assert m[:, layout.slice(a), layout.slice(b)].all(), (a, b)
    eye = torch.eye(layout.num_queries, dtype=torch.bool)
    for name in names[1:]:
        s, valid = layout.slice(name), layout.segment(name).valid
        # a padded key is blocked for every query except itself
        for b in range(B):
            for j in (s.start + (~valid[b]).nonzero().flatten()).tolist():
                others = torch.arange(layout.num_queries) != j
                assert m[b, others, j].all() and not m[b, j, j], (b, j)
        # valid keys of a segment are open to that segment's queries
        assert not m[:, s, s][valid[:, None, :].expand(B, valid.shape[1], -1)].any()
    assert not m[:, layout.slice("match"), layout.slice("match")].any()
    assert _no_full_row(m)
    assert torch.equal(m & eye, torch.zeros_like(m))


# ------------------------------------------------------------------------ with the transformer

D, NHEAD = TINY_D, TINY_NHEAD


@torch.no_grad()
def test_dn_mask_hides_dn_queries_from_matching_queries():
    model = tiny_transformer()
    src, mask, pos = tiny_image_inputs()
    G, S, N, B = 2, 2, 3, 2
    blocked = _dn_mask(G, S, N)
    query_pos = torch.randn(B, G * S + N, D, generator=torch.Generator().manual_seed(3))
    hs, _ = model(src, mask, query_pos, pos, self_attn_mask=blocked)
    qp = query_pos.clone()
    qp[:, :S] += 5.0  # DN group 0 only
    hs2, _ = model(src, mask, qp, pos, self_attn_mask=blocked)
    assert torch.equal(hs2[:, :, S:], hs[:, :, S:])  # other DN group and matching untouched
    assert not torch.allclose(hs2[:, :, :S], hs[:, :, :S], atol=1e-3)
    qp = query_pos.clone()
    qp[:, G * S :] += 5.0  # matching queries: seen by the DN queries
    hs3, _ = model(src, mask, qp, pos, self_attn_mask=blocked)
    assert not torch.allclose(hs3[:, :, : G * S], hs[:, :, : G * S], atol=1e-3)


@torch.no_grad()
def test_codetr_per_image_mask_in_the_decoder():
    model = tiny_transformer()
    src, mask, pos = tiny_image_inputs()
    layout = _codetr_layout()
    blocked = expand_to_heads(build_self_attn_mask(layout, CODETR_RULES), NHEAD)
    assert blocked.shape == (2 * NHEAD, 6, 6)
    query_pos = torch.randn(2, 6, D, generator=torch.Generator().manual_seed(4))
    hs, _ = model(src, mask, query_pos, pos, self_attn_mask=blocked)
    assert torch.isfinite(hs).all()  # incl. image 1's fully padded pos_1
    # a padded slot (image 0, pos_0 slot 1 = query 3) influences nobody but itself
    qp = query_pos.clone()
    qp[0, 3] += 5.0
    hs2, _ = model(src, mask, qp, pos, self_attn_mask=blocked)
    others = torch.arange(6) != 3
    assert torch.equal(hs2[:, 0][:, others], hs[:, 0][:, others])
    assert torch.equal(hs2[:, 1], hs[:, 1])
    # the positive queries of one head do not touch the matching queries or the other head
    qp = query_pos.clone()
    qp[:, 2:4] += 5.0
    hs3, _ = model(src, mask, qp, pos, self_attn_mask=blocked)
    assert torch.equal(hs3[:, :, [0, 1, 4, 5]], hs[:, :, [0, 1, 4, 5]])
