"""DN-DETR query denoising: noise, group layout, masks, losses and the no-leakage property
(notes/methods/dn_detr.md, section 8), CPU and tiny sizes."""
import inspect
import math

import pytest
import torch

import updetr_d2  # noqa: F401  (compat fixes before detectron2 submodules)
from updetr_d2.methods.dn import groups as dn_groups_module
from updetr_d2.methods.dn import noise as dn_noise_module
from updetr_d2.methods.dn import queries as dn_queries_module
from updetr_d2.methods.dn import DenoisingGroups, DenoisingQueries, apply_box_noise, apply_label_noise
from updetr_d2.modeling.criterion import BoxL1GIoU, LabelFocal, SetCriterion
from updetr_d2.modeling.matcher import HungarianMatcher
from updetr_d2.modeling.queries import AnchorQueries, QueryBundle

from helpers import dn_group_mask, tiny_image_inputs, tiny_transformer

C, D, NHEAD, N = 4, 16, 2, 3
WEIGHTS = {"loss_focal": 1.0, "loss_bbox": 5.0, "loss_giou": 2.0}


def dn_losses(criterion, outputs, targets, groups, ignore_padding=True):
    """The DN route's losses on a model's full outputs (``groups`` None: DN off);
    ``ignore_padding=False`` trains padding slots as background (detrex), for contrast."""
    if groups is None:
        B = outputs["pred_boxes"].shape[0]
        groups = DenoisingGroups(0, 0, torch.zeros(B, 0, dtype=torch.bool))
    own, _ = groups.split(outputs)
    if not ignore_padding:
        for layer in [own, *own.get("aux_outputs", [])]:
            layer.pop("query_valid")
    return groups.losses(criterion, own, targets)


def _golden(*rows):
    """Rows of '.' (may attend) and 'x' (blocked) -> bool [Q, Q]."""
    return torch.tensor([[c == "x" for c in r] for r in rows])


def _targets(counts, seed=0):
    """Boxes well inside the image, so box noise (lambda <= 0.4) never clamps."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for n in counts:
        centre = torch.rand(n, 2, generator=g) * 0.2 + 0.4
        size = torch.rand(n, 2, generator=g) * 0.15 + 0.05
        out.append({"labels": torch.randint(0, C, (n,), generator=g), "boxes": torch.cat([centre, size], 1)})
    return out


def _dn(num_groups=2, label_noise_prob=0.2, box_noise_scale=0.4, mask_padding=True, seed=0):
    torch.manual_seed(seed)
    return DenoisingQueries(
        AnchorQueries(N, D),
        C,
        D,
        NHEAD,
        num_groups=num_groups,
        label_noise_prob=label_noise_prob,
        box_noise_scale=box_noise_scale,
        mask_padding=mask_padding,
    ).train()


def _criterion(aux_loss=True):
    return SetCriterion(
        HungarianMatcher(cost_class=2.0, class_cost_type="focal"), [LabelFocal(C), BoxL1GIoU()], WEIGHTS, aux_loss
    )


def _outputs(B, T, num_aux=2, seed=0):
    g = torch.Generator().manual_seed(seed)

    def layer():
        return {
            "pred_logits": torch.randn(B, T, C, generator=g).requires_grad_(),
            "pred_boxes": (torch.rand(B, T, 4, generator=g) * 0.5 + 0.2).requires_grad_(),
        }

    out = layer()
    out["aux_outputs"] = [layer() for _ in range(num_aux)]
    return out


def _no_full_row(blocked):
    return not blocked.all(dim=-1).any()


# ------------------------------------------------------------------------ noise


def test_box_noise_bounds_before_clamping():
    g = torch.Generator().manual_seed(0)
    n = 20000
    boxes = torch.cat([torch.rand(n, 2, generator=g) * 0.2 + 0.4, torch.rand(n, 2, generator=g) * 0.15 + 0.05], 1)
    noised = apply_box_noise(boxes, 0.4, generator=g)
    cx, cy, w, h = boxes.unbind(-1)
    ncx, ncy, nw, nh = noised.unbind(-1)
    tol = 1e-6
    assert ((ncx - cx).abs() <= 0.2 * w + tol).all()
    assert ((ncy - cy).abs() <= 0.2 * h + tol).all()
    assert ((nw >= 0.6 * w - tol) & (nw <= 1.4 * w + tol)).all()
    assert ((nh >= 0.6 * h - tol) & (nh <= 1.4 * h + tol)).all()
    # the bounds are reached (the noise is not trivially small) and the centre stays inside the box
    assert ((ncx - cx).abs() / w).max() > 0.19 and ((nw / w - 1).abs()).max() > 0.39
    assert ((ncx - cx).abs() < w / 2).all()
    # independent, zero-mean, uniform: mean of u ~ 0, E|u| = 1/2
    u = (ncx - cx) / (0.2 * w)
    assert abs(u.mean().item()) < 0.03 and abs(u.abs().mean().item() - 0.5) < 0.02


def test_box_noise_is_clamped_to_the_image():
    boxes = torch.tensor([[0.01, 0.99, 0.5, 0.5]]).repeat(1000, 1)
    noised = apply_box_noise(boxes, 1.0, generator=torch.Generator().manual_seed(0))
    assert (noised >= 0).all() and (noised <= 1).all()
    assert (noised[:, 0] == 0).any() and (noised[:, 1] == 1).any()


def test_zero_noise_gives_the_clean_ground_truth():
    t = _targets([5])[0]
    assert torch.equal(apply_box_noise(t["boxes"], 0.0), t["boxes"])
    assert torch.equal(apply_label_noise(t["labels"], 0.0, C), t["labels"])
    model = _dn(label_noise_prob=0.0, box_noise_scale=0.0)
    targets = _targets([2, 3])
    bundle = model(2, targets=targets)
    groups = bundle.meta["dn"]
    for b, (slots, tgt) in enumerate(groups.indices()):
        assert torch.equal(bundle.reference_points[b, slots], targets[b]["boxes"][tgt])
        expected = model.label_enc(targets[b]["labels"][tgt])
        assert torch.equal(bundle.tgt[b, slots, :-1], expected)


def test_label_flip_rate_matches_the_setting():
    p, n = 0.2, 100_000
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, C, (n,), generator=g)
    noised = apply_label_noise(labels, p, C, generator=g)
    flipped = noised != labels
    sd = math.sqrt(n * p * (1 - p))
    assert abs(flipped.sum().item() - n * p) < 4 * sd  # p, not p * (1 - 1/C) as in the official code
    assert ((noised >= 0) & (noised < C)).all()
    # the new class is uniform over the C - 1 others
    for true in range(C):
        new = noised[flipped & (labels == true)]
        assert (new != true).all()
        counts = torch.bincount(new, minlength=C).float()
        assert counts[true] == 0
        others = counts[torch.arange(C) != true]
        assert (others - others.mean()).abs().max() < 5 * math.sqrt(others.mean())


def test_label_noise_edge_cases():
    labels = torch.tensor([0, 1, 2, 3])
    flipped = apply_label_noise(labels, 1.0, C)
    assert (flipped != labels).all()  # every label flipped, never to itself
    single = torch.zeros(50, dtype=torch.long)
    assert torch.equal(apply_label_noise(single, 1.0, 1), single)  # one class: nothing to flip to
    assert apply_label_noise(torch.zeros(0, dtype=torch.long), 0.5, C).shape == (0,)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        apply_label_noise(labels, 1.5, C)


# ------------------------------------------------------------------------ masks


def test_mask_by_hand_two_groups_of_two_three_matching():
    # dn_detr.md tests 1: M=2, P=2, N=3 (T=7); padding masking off, and all slots valid anyway
    expected = _golden(
        "..xx...",
        "..xx...",
        "xx.....",
        "xx.....",
        "xxxx...",
        "xxxx...",
        "xxxx...",
    )
    for mask_padding, counts in [(False, [2]), (True, [2]), (False, [2, 1]), (True, [2, 2])]:
        bundle = _dn(mask_padding=mask_padding)(len(counts), targets=_targets(counts))
        assert bundle.self_attn_mask.shape == (7, 7), (mask_padding, counts)
        assert torch.equal(bundle.self_attn_mask, expected)
        assert torch.equal(bundle.self_attn_mask, dn_group_mask(2, 2, N))


def test_padding_is_masked_per_image():
    counts = [1, 3]
    model = _dn()
    bundle = model(2, targets=_targets(counts))
    P, M, T = 2, 3, 2 * 3 + N
    m = bundle.self_attn_mask
    assert m.shape == (2 * NHEAD, T, T) and m.dtype == torch.bool
    assert _no_full_row(m)
    shared = dn_group_mask(P, M, N)
    valid = bundle.meta["dn"].valid
    for b in range(2):
        heads = m[b * NHEAD : (b + 1) * NHEAD]
        assert all(torch.equal(h, heads[0]) for h in heads)
        padded = (~valid[b]).nonzero().flatten().tolist()
        expected = shared.clone()
        for j in padded:  # a padding slot is hidden from everybody but itself
            expected[:, j] = True
            expected[j, j] = False
        assert torch.equal(heads[0], expected), b
    assert padded == []  # image 1 has no padding: its mask is the shared one
    # DN-DETR's unmasked padding: one shared mask
    unmasked = _dn(mask_padding=False)(2, targets=_targets(counts)).self_attn_mask
    assert torch.equal(unmasked, shared)


@pytest.mark.parametrize("counts", [[1], [3, 0], [0, 2, 5], [4, 4, 1]])
def test_mask_properties(counts):
    model = _dn(num_groups=3)
    bundle = model(len(counts), targets=_targets(counts))
    groups = bundle.meta["dn"]
    pad = groups.num_queries
    m = bundle.self_attn_mask
    assert _no_full_row(m)
    per_image = m.view(len(counts), NHEAD, pad + N, pad + N)[:, 0] if m.dim() == 3 else m.expand(len(counts), -1, -1)
    dn, match = slice(0, pad), slice(pad, pad + N)
    assert per_image[:, match, dn].all()  # matching never sees a DN query
    assert not per_image[:, match, match].any()
    for b in range(len(counts)):
        v = groups.valid[b]
        # valid DN queries see every matching query and the valid slots of their own group only
        assert not per_image[b][dn][v][:, match].any()
        g = torch.arange(pad) // groups.group_size
        same = (g[:, None] == g[None, :]) & v[None, :]
        assert torch.equal(~per_image[b][dn, dn][v], same[v])


# ------------------------------------------------------------------------ layout


def test_padding_layout_counts_one_and_three():
    # dn_detr.md tests 5
    model = _dn(num_groups=2)
    targets = _targets([1, 3])
    bundle = model(2, targets=targets)
    groups = bundle.meta["dn"]
    assert (groups.num_groups, groups.group_size, groups.num_queries) == (2, 3, 6)
    assert bundle.tgt.shape == (2, 6 + N, D) and bundle.reference_points.shape == (2, 6 + N, 4)
    assert bundle.num_queries == 6 + N
    assert groups.valid[0].nonzero().flatten().tolist() == [0, 3]
    assert groups.valid[1].nonzero().flatten().tolist() == [0, 1, 2, 3, 4, 5]
    padding = ~groups.valid
    assert (bundle.tgt[:, :6][padding] == 0).all()  # zero content, indicator 0 included
    assert (bundle.reference_points[:, :6][padding] == 0.5).all()
    assert (bundle.tgt[:, :6, -1][groups.valid] == 1).all()  # DN indicator
    assert (bundle.tgt[:, 6:, -1] == 0).all()  # matching indicator
    # the DN content is learned: gradients reach the label embedding
    bundle.tgt[:, :6].sum().backward()
    assert model.label_enc.weight.grad.abs().sum() > 0
    # the matching part is the base's
    base = model.base
    assert torch.equal(bundle.tgt[:, 6:], base.content().expand(2, -1, -1))
    assert torch.equal(bundle.reference_points[:, 6:], base.anchor_embed.weight.sigmoid().expand(2, -1, -1))
    # the fixed assignment: slot g*M + i <-> GT i, 2 * (1 + 3) = 8 pairs
    indices = groups.indices()
    assert sum(len(s) for s, _ in indices) == 8
    assert [(s.tolist(), t.tolist()) for s, t in indices] == [
        ([0, 3], [0, 0]),
        ([0, 1, 2, 3, 4, 5], [0, 1, 2, 0, 1, 2]),
    ]
    assert all(s.dtype == torch.long and t.dtype == torch.long for s, t in indices)
    # noised boxes stay close to their GT (slot -> GT pairing is right)
    for b, (slots, tgt) in enumerate(indices):
        gt = targets[b]["boxes"][tgt]
        assert ((bundle.reference_points[b, slots, :2] - gt[:, :2]).abs() <= 0.2 * gt[:, 2:] + 1e-6).all()


def test_split_cuts_every_layer_and_keeps_other_keys_in_matching():
    groups = DenoisingGroups(2, 3, torch.tensor([[True, False, False, True, False, False], [True] * 6]))
    outputs = _outputs(2, 6 + N, num_aux=2)
    outputs["enc_outputs"] = {"pred_logits": torch.zeros(2, 6 + N, C), "pred_boxes": torch.zeros(2, 6 + N, 4)}
    outputs["hs"] = torch.zeros(2, 6 + N, D)  # another per-query tensor: split too
    outputs["memory"] = torch.zeros(2, 20, D)  # not per query
    dn, match = groups.split(outputs)
    assert set(dn) == {"pred_logits", "pred_boxes", "hs", "aux_outputs", "query_valid"}
    assert set(match) == {"pred_logits", "pred_boxes", "hs", "aux_outputs", "enc_outputs", "memory"}
    assert match["enc_outputs"] is outputs["enc_outputs"]
    for d, m, full in zip([dn, *dn["aux_outputs"]], [match, *match["aux_outputs"]], [outputs, *outputs["aux_outputs"]]):
        assert torch.equal(d["pred_logits"], full["pred_logits"][:, :6])
        assert torch.equal(m["pred_boxes"], full["pred_boxes"][:, 6:])
        assert torch.equal(d["query_valid"], groups.valid)
        assert "query_valid" not in m
    with pytest.raises(ValueError, match="DN queries"):
        DenoisingGroups(2, 8, torch.ones(2, 16, dtype=torch.bool)).split(outputs)
    with pytest.raises(ValueError, match="bool"):
        DenoisingGroups(2, 3, torch.ones(2, 5, dtype=torch.bool))


# ------------------------------------------------------------------------ eval, options


class _FixedBase(torch.nn.Module):
    num_queries = N

    def __init__(self):
        super().__init__()
        self.bundle = QueryBundle(tgt=torch.randn(N, D), reference_points=torch.rand(N, 4))

    def forward(self, batch_size, **context):
        return self.bundle


def test_eval_or_no_targets_gives_the_base_bundle():
    base = _FixedBase()
    model = DenoisingQueries(base, C, D, NHEAD)
    targets = _targets([2, 1])
    assert model.eval()(2, targets=targets) is base.bundle
    assert model.train()(2) is base.bundle
    assert DenoisingQueries(base, C, D, NHEAD, num_groups=0).train()(2, targets=targets) is base.bundle
    assert "dn" not in base.bundle.meta
    # with AnchorQueries: the same queries as the base (same weights), no mask, T = N
    dn = _dn().eval()
    bundle = dn(2, targets=targets)
    assert bundle.self_attn_mask is None and bundle.num_queries == N and "dn" not in bundle.meta
    assert torch.equal(bundle.tgt, dn.base.content())
    assert torch.equal(bundle.reference_points, dn.base(2).reference_points)


def test_options_are_validated_with_config_names():
    base = AnchorQueries(N, D)
    with pytest.raises(ValueError, match="MODEL.DN.NUM_GROUPS"):
        DenoisingQueries(base, C, D, NHEAD, num_groups=-1)
    with pytest.raises(ValueError, match="MODEL.DN.LABEL_NOISE_PROB"):
        DenoisingQueries(base, C, D, NHEAD, label_noise_prob=1.2)
    with pytest.raises(ValueError, match="MODEL.DN.BOX_NOISE_SCALE"):
        DenoisingQueries(base, C, D, NHEAD, box_noise_scale=-0.1)
    with pytest.raises(ValueError, match="hidden_dim"):
        DenoisingQueries(base, C, D + 2, NHEAD).train()(1, targets=_targets([1]))
    with pytest.raises(ValueError, match="anchor-query"):
        learned = _FixedBase()
        learned.bundle = QueryBundle(query_pos=torch.randn(N, D))
        DenoisingQueries(learned, C, D, NHEAD).train()(1, targets=_targets([1]))
    model = DenoisingQueries(base, C, D, NHEAD)
    assert model.label_enc.weight.shape == (C + 1, D - 1)
    assert model.num_queries == N


def test_no_hard_coded_device():
    for module in (dn_groups_module, dn_noise_module, dn_queries_module):
        assert "cuda" not in inspect.getsource(module)


# ------------------------------------------------------------------------ losses


def _clean_outputs(bundle, targets, num_aux=2):
    """Outputs that predict exactly the clean GT (box and confident label) on every valid DN slot."""
    B, T = bundle.tgt.shape[:2]
    outputs = _outputs(B, T, num_aux=num_aux, seed=1)
    for layer in [outputs, *outputs["aux_outputs"]]:
        logits = torch.full((B, T, C), -30.0)
        boxes = layer["pred_boxes"].detach().clone()
        for b, (slots, tgt) in enumerate(bundle.meta["dn"].indices()):
            logits[b, slots, targets[b]["labels"][tgt]] = 30.0
            boxes[b, slots] = targets[b]["boxes"][tgt]
        layer["pred_logits"] = logits.requires_grad_()
        layer["pred_boxes"] = boxes.requires_grad_()
    return outputs


def test_targets_are_the_clean_ground_truth():
    # dn_detr.md tests 6: every label flipped, boxes noised, yet a perfect reconstruction costs 0
    targets = _targets([2, 3])
    bundle = _dn(label_noise_prob=1.0, box_noise_scale=0.4)(2, targets=targets)
    groups = bundle.meta["dn"]
    for b, (slots, tgt) in enumerate(groups.indices()):
        assert not torch.allclose(bundle.reference_points[b, slots], targets[b]["boxes"][tgt])
    losses = dn_losses(_criterion(), _clean_outputs(bundle, targets), targets, groups)
    expected_keys = {f"{k}_dn{s}" for k in WEIGHTS for s in ("", "_0", "_1")}
    assert set(losses) == expected_keys
    for key, value in losses.items():
        if key.startswith("loss_bbox"):
            assert value.item() == 0, key
        else:  # focal: saturated logits; GIoU: only the eps of its denominators (small boxes)
            assert value.item() < 1e-4, key


def test_dn_losses_equal_the_criterion_with_fixed_indices():
    targets = _targets([1, 3])
    bundle = _dn()(2, targets=targets)
    groups = bundle.meta["dn"]
    outputs = _outputs(2, bundle.num_queries)
    criterion = _criterion()
    losses = dn_losses(criterion, outputs, targets, groups)
    # by hand: only valid slots, paired with their GT, normaliser P * #GT = 2 * 4
    dn_out, _ = groups.split(outputs)
    pairs = [(b, s, t) for b, (slots, tgt) in enumerate(groups.indices()) for s, t in zip(slots, tgt)]
    assert len(pairs) == 8
    l1 = sum((dn_out["pred_boxes"][b, s] - targets[b]["boxes"][t]).abs().sum() for b, s, t in pairs) / 8
    assert losses["loss_bbox_dn"].item() == pytest.approx(5.0 * l1.item(), rel=1e-5)
    ref = criterion(dn_out, targets, indices=groups.indices(), num_boxes=8.0)
    assert len(ref) == len(losses) == 9
    for key, value in ref.items():
        base = next(k for k in WEIGHTS if key.startswith(k))
        assert torch.allclose(losses[base + "_dn" + key[len(base):]], value), key
    # gradients reach the label embedding through the decoder inputs (here: directly)
    sum(losses.values()).backward()
    assert all(layer["pred_boxes"].grad is not None for layer in [outputs, *outputs["aux_outputs"]])


def test_padding_slots_are_left_out_of_the_classification_loss():
    targets = _targets([1, 3])
    bundle = _dn()(2, targets=targets)
    groups = bundle.meta["dn"]
    outputs = _outputs(2, bundle.num_queries)
    criterion = _criterion()
    before = dn_losses(criterion, outputs, targets, groups)
    changed = _outputs(2, bundle.num_queries)
    for new, old in zip([changed, *changed["aux_outputs"]], [outputs, *outputs["aux_outputs"]]):
        logits = old["pred_logits"].detach().clone()
        logits[:, : groups.num_queries][~groups.valid] = torch.randn(int((~groups.valid).sum()), C) * 10
        new["pred_logits"], new["pred_boxes"] = logits, old["pred_boxes"]
    after = dn_losses(criterion, changed, targets, groups)
    for key in before:
        assert torch.allclose(before[key], after[key]), key
    # detrex's behaviour (padding trained as background) is available and does see them
    bg_before = dn_losses(criterion, outputs, targets, groups, ignore_padding=False)
    bg_after = dn_losses(criterion, changed, targets, groups, ignore_padding=False)
    assert not torch.allclose(bg_before["loss_focal_dn"], bg_after["loss_focal_dn"])
    # ... and a valid slot's logits do count
    changed["pred_logits"] = changed["pred_logits"].clone()
    changed["pred_logits"][1, 2] += 3.0
    assert not torch.allclose(dn_losses(criterion, changed, targets, groups)["loss_focal_dn"], before["loss_focal_dn"])


def test_batch_without_ground_truth():
    # dn_detr.md tests 8
    model = _dn()
    targets = _targets([0, 0])
    bundle = model(2, targets=targets)
    base = model.base(2)
    assert bundle.num_queries == N and bundle.self_attn_mask is None
    assert torch.equal(bundle.tgt, base.tgt) and torch.equal(bundle.reference_points, base.reference_points)
    groups = bundle.meta["dn"]
    assert groups.num_queries == 0 and groups.valid.shape == (2, 0)
    assert groups.indices()[0][0].numel() == 0
    criterion = _criterion()
    outputs = _outputs(2, N)
    expected_keys = {f"{k}_dn{s}" for k in WEIGHTS for s in ("", "_0", "_1")}
    for g in (groups, None):
        losses = dn_losses(criterion, outputs, targets, g)
        assert set(losses) == expected_keys
        assert all(v.item() == 0 and v.dim() == 0 for v in losses.values())
        _, match = groups.split(outputs)
        total = sum(criterion(match, targets).values()) + sum(losses.values())
        total.backward()
        assert torch.isfinite(outputs["pred_logits"].grad).all()
    assert set(dn_losses(_criterion(aux_loss=False), outputs, targets, None)) == {f"{k}_dn" for k in WEIGHTS}


# ------------------------------------------------------------------------ leakage


@pytest.mark.parametrize("mask_padding", [True, False])
@torch.no_grad()
def test_no_leakage_into_the_matching_queries(mask_padding):
    # dn_detr.md tests 2 and 3, with DETR's transformer (dropout 0)
    transformer = tiny_transformer()
    src, mask, pos = tiny_image_inputs()
    model = _dn(num_groups=3, mask_padding=mask_padding)
    bundle = model(2, targets=_targets([1, 3]))
    groups = bundle.meta["dn"]
    pad, M, T = groups.num_queries, groups.group_size, bundle.num_queries
    query_pos = torch.randn(2, T, D, generator=torch.Generator().manual_seed(2))

    def run(tgt, qp, attn_mask):
        return transformer(src, mask, qp, pos, tgt=tgt, self_attn_mask=attn_mask)[0]

    hs = run(bundle.tgt, query_pos, bundle.self_attn_mask)  # [L, B, T, d]
    assert torch.isfinite(hs).all()
    # the matching part alone (the base model, no DN)
    alone = run(model.base(2).tgt, query_pos[:, pad:], None)
    assert torch.allclose(hs[:, :, pad:], alone, atol=1e-5)
    # arbitrary DN contents and positions: the matching outputs do not move
    tgt, qp = bundle.tgt.clone(), query_pos.clone()
    tgt[:, :pad] = torch.randn(2, pad, D) * 3
    qp[:, :pad] = torch.randn(2, pad, D) * 3
    hs2 = run(tgt, qp, bundle.self_attn_mask)
    assert torch.allclose(hs2[:, :, pad:], hs[:, :, pad:], atol=1e-5)
    # group isolation: perturbing group g changes group g only among the DN groups
    for g in range(groups.num_groups):
        in_g = torch.zeros(T, dtype=torch.bool)
        in_g[g * M : (g + 1) * M] = True
        tgt = bundle.tgt.clone()
        tgt[:, in_g] += torch.randn(2, M, D)
        hs3 = run(tgt, query_pos, bundle.self_attn_mask)
        assert torch.allclose(hs3[:, :, ~in_g], hs[:, :, ~in_g], atol=1e-5), g
        valid_g = in_g.clone()
        valid_g[:pad] &= groups.valid[1]
        assert not torch.allclose(hs3[:, 1][:, valid_g], hs[:, 1][:, valid_g], atol=1e-3), g
    # a padding slot (image 0, slot 1) influences nobody else only when padding is masked
    tgt = bundle.tgt.clone()
    tgt[0, 1] += 5.0
    hs4 = run(tgt, query_pos, bundle.self_attn_mask)
    others = torch.arange(T) != 1
    assert torch.allclose(hs4[:, :, pad:], hs[:, :, pad:], atol=1e-5)  # matching: never
    same = torch.allclose(hs4[:, 0][:, others], hs[:, 0][:, others], atol=1e-5)
    assert same == mask_padding


def test_checkpoint_handoff_renames_only_denoising_checkpoints():
    """The DN hand-off rule runs for every detector: a checkpoint of another generator
    that wraps a ``base`` submodule (no DN label embedding) loads as it is."""
    from types import SimpleNamespace

    from updetr_d2.methods.dn.checkpoint import denoising_handoff

    weight = torch.zeros(3, 4)
    other = {"query_generator.base.anchor_embed.weight": weight}
    denoising_handoff(SimpleNamespace(query_generator=AnchorQueries(3, D)), other, "")
    assert set(other) == {"query_generator.base.anchor_embed.weight"}
    from_dn = {"query_generator.base.anchor_embed.weight": weight, "query_generator.label_enc.weight": weight}
    denoising_handoff(SimpleNamespace(query_generator=AnchorQueries(3, D)), from_dn, "")
    assert set(from_dn) == {"query_generator.anchor_embed.weight"}
