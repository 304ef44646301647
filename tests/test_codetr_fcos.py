"""Co-DETR's FCOS auxiliary head: assignment, targets, losses and exported samples
against hand-computed values."""
import math
from types import SimpleNamespace

import pytest
import torch

import updetr_d2  # noqa: F401  (compat fixes before detectron2 submodules)
from detectron2.config import CfgNode as CN
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling.anchor_generator import DefaultAnchorGenerator
from detectron2.modeling.meta_arch.fcos import FCOS
from detectron2.structures import Boxes, ImageList, Instances
from updetr_d2.config import add_updetr_config
from updetr_d2.methods.codetr.aux_heads import AUX_HEAD_REGISTRY, PositiveSamples, build_aux_head
from updetr_d2.methods.codetr.fcos import (
    FCOSAuxHead,
    add_fcos_config,
    fcos_assign,
    fcos_centerness_targets,
    point_level_ranges,
)

LEVELS = ["p3", "p4", "p5", "p6", "p7"]
STRIDES = [8, 16, 32, 64, 128]
K = 4  # classes; background = 4


def pyramid_shape(channels):
    return {n: ShapeSpec(channels=channels, stride=s) for n, s in zip(LEVELS, STRIDES)}


def pyramid(B, H, W, channels, seed=0):
    """Features of a padded batch of size H x W (levels ceil(H / s) x ceil(W / s))."""
    gen = torch.Generator().manual_seed(seed)
    return {
        n: torch.randn(B, channels, math.ceil(H / s), math.ceil(W / s), generator=gen) for n, s in zip(LEVELS, STRIDES)
    }


def image_list(sizes, H, W):
    return ImageList(torch.zeros(len(sizes), 3, H, W), [tuple(s) for s in sizes])


def instances(size, boxes=None, classes=None):
    inst = Instances(tuple(size))
    if boxes is not None:
        inst.gt_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
        inst.gt_classes = torch.tensor(classes, dtype=torch.long)
    return inst


def assign_one_level(points, stride, lo, hi, gt_boxes):
    points = torch.tensor(points, dtype=torch.float32)
    n = points.shape[0]
    return fcos_assign(
        points,
        torch.full((n,), float(stride)),
        torch.full((n,), float(lo)),
        torch.full((n,), float(hi)),
        torch.tensor(gt_boxes, dtype=torch.float32).reshape(-1, 4),
        1.5,
    ).tolist()


# ----------------------------------------------------------------------------- assignment


def test_center_region_and_inside_box():
    # stride 8, radius 1.5: centre region = Chebyshev distance < 12 from the GT centre.
    gt = [[0, 0, 100, 100]]  # centre (50, 50)
    points = [(50, 50), (61, 50), (62, 50), (50, 38.5), (50, 38), (61.9, 61.9)]
    assert assign_one_level(points, 8, 0, math.inf, gt) == [0, 0, -1, 0, -1, 0]
    # A small GT: the centre region sticks out of the box; points must also be inside it.
    small = [[0, 0, 10, 10]]  # centre (5, 5)
    points = [(4, 5), (-3, 5), (0, 5), (9.5, 9.5), (10, 5)]
    assert assign_one_level(points, 8, 0, math.inf, small) == [0, -1, -1, 0, -1]


def test_scale_range_inclusive_as_in_the_paper():
    gt = [[0, 0, 100, 100]]  # at (50, 50): max(l, t, r, b) = 50
    assert assign_one_level([(50, 50)], 8, 0, 64, gt) == [0]
    assert assign_one_level([(50, 50)], 8, 64, 128, gt) == [-1]
    assert assign_one_level([(50, 50)], 8, 0, 49.9, gt) == [-1]
    # max(l, t, r, b) = 64 exactly (l = 64): admitted by [0, 64] AND [64, 128] (paper:
    # negative only if max > m_i or max < m_{i-1}); the centre (23, 50) is 27 px away,
    # inside 1.5 * 32 = 48.
    edge = [[-14, 40, 60, 60]]
    assert assign_one_level([(50, 50)], 32, 0, 64, edge) == [0]
    assert assign_one_level([(50, 50)], 32, 64, 128, edge) == [0]
    assert assign_one_level([(50, 50)], 32, 64.01, 128, edge) == [-1]
    # ... but stride 8 puts the centre out of reach (27 >= 12).
    assert assign_one_level([(50, 50)], 8, 0, 64, edge) == [-1]


def test_ambiguous_point_goes_to_the_smallest_gt():
    big, small = [0, 0, 100, 100], [30, 30, 70, 70]
    assert assign_one_level([(50, 50)], 8, 0, math.inf, [big, small]) == [1]
    assert assign_one_level([(50, 50)], 8, 0, math.inf, [small, big]) == [0]
    # Only the big GT contains (20, 50) (and it is outside the small one's centre region).
    assert assign_one_level([(20, 50)], 32, 0, math.inf, [small, big]) == [1]
    # Areas 10004 and 10000: D2's float32 "1e8 - area" ties them (and takes the first),
    # the exact comparison takes the smaller second one.
    a, b = [0, 0, 100, 100.04], [0, 0, 100, 100]
    assert assign_one_level([(50, 50)], 8, 0, math.inf, [a, b]) == [1]
    # Equal areas: the first GT.
    c, d = [0, 0, 100, 100], [10, 10, 110, 110]
    assert assign_one_level([(55, 55)], 8, 0, math.inf, [c, d]) == [0]


def test_no_gt_and_shape_errors():
    assert assign_one_level([(1, 1), (2, 2)], 8, 0, math.inf, []) == [-1, -1]
    with pytest.raises(ValueError):
        fcos_assign(torch.zeros(3, 2), torch.ones(2), torch.zeros(3), torch.ones(3), torch.zeros(1, 4))
    with pytest.raises(ValueError):
        point_level_ranges([64, 128], 5)
    assert point_level_ranges([64, 128, 256, 512], 5) == [
        (0.0, 64.0), (64.0, 128.0), (128.0, 256.0), (256.0, 512.0), (512.0, math.inf)
    ]


def test_assignment_agrees_with_detectron2_fcos_away_from_ties():
    # D2's FCOS.match_anchors uses strict bounds and ranges [4, 8] * stride; on random
    # real-valued boxes (no exact boundary values) both rules must give the same match.
    gen = torch.Generator().manual_seed(3)
    gen_anchors = DefaultAnchorGenerator(sizes=[[s] for s in STRIDES], aspect_ratios=[1.0], strides=STRIDES)
    anchors = gen_anchors([torch.zeros(1, 1, math.ceil(320 / s), math.ceil(320 / s)) for s in STRIDES])
    xy = torch.rand(12, 2, generator=gen) * 250
    wh = torch.rand(12, 2, generator=gen) * 300 + 4
    gt = torch.cat([xy, (xy + wh).clamp(max=320)], dim=1)
    d2 = FCOS.match_anchors(SimpleNamespace(center_sampling_radius=1.5), anchors, [Instances((320, 320), gt_boxes=Boxes(gt))])[0]
    points = Boxes.cat(anchors).get_centers()
    counts = [len(a) for a in anchors]
    strides = torch.cat([torch.full((n,), float(s)) for n, s in zip(counts, STRIDES)])
    ranges = point_level_ranges([64, 128, 256, 512], 5)
    lower = torch.cat([torch.full((n,), lo) for n, (lo, _) in zip(counts, ranges)])
    upper = torch.cat([torch.full((n,), hi) for n, (_, hi) in zip(counts, ranges)])
    ours = fcos_assign(points, strides, lower, upper, gt, 1.5)
    assert (ours >= 0).sum() > 20
    assert torch.equal(ours, d2)


def test_centerness_targets_by_hand():
    ltrb = torch.tensor([[10.0, 20.0, 30.0, 40.0], [5.0, 5.0, 5.0, 5.0], [1.0, 4.0, 3.0, 1.0]])
    expected = torch.tensor([math.sqrt(10 / 30 * 20 / 40), 1.0, math.sqrt(1 / 3 * 1 / 4)])
    assert torch.allclose(fcos_centerness_targets(ltrb), expected)
    # Scale-free: stride-normalised distances give the same target.
    assert torch.allclose(fcos_centerness_targets(ltrb / 16), expected)


# ----------------------------------------------------------------------------- the head


def make_head(channels=64, **kw):
    args = dict(input_shape=pyramid_shape(channels), num_classes=K)
    args.update(kw)
    return FCOSAuxHead(**args)


def constant_outputs(head, cls_bias, box_bias, ctr_bias=0.0):
    """Zero the output convs' weights: every point predicts the same logits / distances."""
    with torch.no_grad():
        for conv, bias in ((head.head.cls_score, cls_bias), (head.head.bbox_pred, box_bias), (head.head.ctrness, ctr_bias)):
            conv.weight.zero_()
            conv.bias.fill_(bias)


def focal(p, target, alpha=0.25, gamma=2.0):
    if target:
        return -alpha * (1 - p) ** gamma * math.log(p)
    return -(1 - alpha) * p**gamma * math.log(1 - p)


def two_image_batch(channels=64):
    """Image 0: 64 x 64 with one GT (8, 8, 40, 40) of class 2; image 1: valid 40 x 56 of a
    64 x 64 padded batch, no GT."""
    feats = pyramid(2, 64, 64, channels)
    images = image_list([(64, 64), (40, 56)], 64, 64)
    gts = [instances((64, 64), [[8, 8, 40, 40]], [2]), instances((40, 56))]
    return feats, images, gts


def test_losses_and_samples_by_hand():
    # Ranges [0,16], [16,32], ...: the GT (8, 8, 40, 40) has exactly one positive, the p4
    # point (24, 24) with l = t = r = b = 16 (= the lower bound, admitted). On p3 every
    # inside point of the centre region (x, y in {20, 28}) has max distance 20 > 16.
    head = make_head(sizes_of_interest=[16, 32, 64, 128], box_weight=2.0, centerness_weight=3.0)
    constant_outputs(head, cls_bias=-1.0, box_bias=0.5)
    feats, images, gts = two_image_batch()
    losses, samples = head(feats, images, gts)
    assert set(losses) == {"loss_fcos_cls", "loss_fcos_giou", "loss_fcos_centerness"}

    # Valid points: image 0 all but p7's (64, 64): 64 + 16 + 4 + 1 = 85; image 1 (h 40,
    # w 56): p3 5 x 7, p4 2 x 3, p5 1 x 2, p6 1, p7 0 = 44.
    assert [len(b) for b in samples.boxes] == [85, 44]
    p = 1 / (1 + math.e)  # sigmoid(-1)
    num_pos = 1
    expected_cls = focal(p, 1) + (85 * K - 1) * focal(p, 0) + 44 * K * focal(p, 0)
    assert losses["loss_fcos_cls"].item() == pytest.approx(expected_cls / num_pos, rel=1e-5)
    # Distances 0.5 * 16 = 8: the box (16, 16, 32, 32) inside the GT: IoU = GIoU = 1/4.
    assert losses["loss_fcos_giou"].item() == pytest.approx(2.0 * 0.75, rel=1e-5)
    # Centerness logit 0: BCE = ln 2 whatever the target (here 1).
    assert losses["loss_fcos_centerness"].item() == pytest.approx(3.0 * math.log(2), rel=1e-5)

    # Distances exactly 1 stride: the positive predicts its GT, GIoU loss 0.
    constant_outputs(head, cls_bias=-1.0, box_bias=1.0)
    losses, _ = head(feats, images, gts)
    assert losses["loss_fcos_giou"].item() == pytest.approx(0.0, abs=1e-6)

    # The positive is image 0's p4 point (y=1, x=1): index 64 + 1 * 4 + 1 = 69.
    labels0 = samples.labels[0]
    assert labels0.dtype == torch.long
    assert (labels0 != K).nonzero().flatten().tolist() == [69]
    assert labels0[69].item() == 2
    assert samples.target_boxes[0][69].tolist() == [8.0, 8.0, 40.0, 40.0]
    # Its box: centred on (24, 24), side 8 * 16.
    assert samples.boxes[0][69].tolist() == [24 - 64.0, 24 - 64.0, 24 + 64.0, 24 + 64.0]
    assert torch.equal(samples.features[0][69], feats["p4"][0, :, 1, 1])
    # First sample: p3 (4, 4), side 64; last of image 0: p6 (32, 32), side 512.
    assert samples.boxes[0][0].tolist() == [4 - 32.0, 4 - 32.0, 4 + 32.0, 4 + 32.0]
    assert samples.boxes[0][84].tolist() == [32 - 256.0, 32 - 256.0, 32 + 256.0, 32 + 256.0]
    assert torch.equal(samples.features[0][84], feats["p6"][0, :, 0, 0])
    # Image 1 (no GT): all background; its p3 points stop at x = 52, y = 36.
    assert (samples.labels[1] == K).all()
    centers1 = (samples.boxes[1][:, :2] + samples.boxes[1][:, 2:]) / 2
    assert centers1[:, 0].max() < 56 and centers1[:, 1].max() < 40
    assert torch.equal(samples.features[1][34], feats["p3"][1, :, 4, 6])  # (52, 36)


def test_default_ranges_positives_through_the_head():
    # Default ranges: the GT (8, 8, 40, 40) (max distance <= 32) is p3's: the points
    # (20|28, 20|28) inside the centre region |. - 24| < 12.
    head = make_head()
    feats, images, gts = two_image_batch()
    _, samples = head(feats, images, gts)
    pos = (samples.labels[0] != K).nonzero().flatten().tolist()
    assert pos == [2 * 8 + 2, 2 * 8 + 3, 3 * 8 + 2, 3 * 8 + 3]
    assert (samples.labels[0][pos] == 2).all()
    assert (samples.target_boxes[0][pos] == torch.tensor([8.0, 8.0, 40.0, 40.0])).all()


def test_centerness_target_through_the_head():
    # GT (8, 12, 40, 44), centre (24, 28), ranges p3 [0, 20], p4 [20, 64]. With the logit
    # z everywhere, BCE = softplus(z) - target * z per positive.
    head = make_head(sizes_of_interest=[20, 64, 128, 256])
    z = 0.7
    constant_outputs(head, cls_bias=-2.0, box_bias=1.0, ctr_bias=z)
    feats = pyramid(1, 64, 64, 64)
    images = image_list([(64, 64)], 64, 64)
    gts = [instances((64, 64), [[8, 12, 40, 44]], [0])]
    losses, samples = head(feats, images, gts)
    pos = (samples.labels[0] != K).nonzero().flatten().tolist()
    # p3: inside and |x - 24| < 12, |y - 28| < 12: x in {20, 28}, y in {20, 28, 36}; max
    # distance <= 20 only at (20, 28) (l 12, t 16, r 20, b 16) and (28, 28) (l 20, r 12).
    # p4: x = 24 (8 and 40 are on the GT's edges), y in {24, 40}: (24, 24) l 16 t 12 r 16
    # b 20, max 20 (the lower bound, admitted); (24, 40) l 16 t 28 r 16 b 4, max 28.
    assert pos == [3 * 8 + 2, 3 * 8 + 3, 64 + 1 * 4 + 1, 64 + 2 * 4 + 1]
    targets = [math.sqrt(12 / 20), math.sqrt(12 / 20), math.sqrt(12 / 20), math.sqrt(4 / 28)]
    expected = sum(math.log1p(math.exp(z)) - t * z for t in targets) / len(targets)
    assert losses["loss_fcos_centerness"].item() == pytest.approx(expected, rel=1e-5)
    # Distances of exactly one stride: the p4 (24, 24) prediction (8, 8, 40, 40) against
    # the GT: IoU = 32*28 / (32*32 + 32*32 - 32*28) = 896/1152, enclosing box (8, 8, 40, 44).
    # The others: p3 (20, 28) -> (12, 20, 28, 36): IoU 256/1024, enclosing = GT; the same
    # for (28, 28); p4 (24, 40) -> (8, 24, 40, 56): inter 32*20=640, union 1024+1024-640,
    # enclosing (8, 12, 40, 56) = 32*44.
    giou = [0.25, 0.25, 896 / 1152 - (32 * 36 - 1152) / (32 * 36), 640 / 1408 - (32 * 44 - 1408) / (32 * 44)]
    assert losses["loss_fcos_giou"].item() == pytest.approx(sum(1 - g for g in giou) / 4, rel=1e-5)


def test_image_without_gt_gives_finite_losses():
    head = make_head()
    feats = pyramid(2, 64, 96, 64)
    images = image_list([(64, 96), (50, 70)], 64, 96)
    empty_boxes = Instances((50, 70), gt_boxes=Boxes(torch.zeros(0, 4)), gt_classes=torch.zeros(0, dtype=torch.long))
    losses, samples = head(feats, images, [instances((64, 96)), empty_boxes])
    assert all(torch.isfinite(v) for v in losses.values())
    assert losses["loss_fcos_cls"].item() > 0
    assert losses["loss_fcos_giou"].item() == 0 and losses["loss_fcos_centerness"].item() == 0
    assert all((lab == K).all() for lab in samples.labels)
    sum(losses.values()).backward()  # graph intact without positives
    assert head.head.cls_score.weight.grad is not None


def test_gradients_reach_parameters_and_features():
    head = make_head(channels=64)
    feats = {k: v.requires_grad_() for k, v in pyramid(2, 128, 128, 64, seed=1).items()}
    images = image_list([(128, 128), (100, 120)], 128, 128)
    gts = [
        instances((128, 128), [[10, 12, 60, 70], [40, 30, 120, 126], [0, 0, 128, 128]], [0, 3, 1]),
        instances((100, 120), [[20, 20, 90, 80]], [2]),
    ]
    losses, samples = head(feats, images, gts)
    assert all(torch.isfinite(v) and v.item() > 0 for v in losses.values())
    sum(losses.values()).backward()
    for name, param in head.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name
        if name.startswith("head.") and name.endswith(("cls_score.weight", "bbox_pred.weight", "ctrness.weight")):
            assert param.grad.abs().sum() > 0, name
    for name in LEVELS:
        assert feats[name].grad is not None and feats[name].grad.abs().sum() > 0, name
    # The exported features carry gradient too.
    grads_before = feats["p3"].grad.clone()
    samples.features[0].sum().backward()
    assert not torch.equal(feats["p3"].grad, grads_before)


def test_positive_samples_contract():
    head = make_head(channels=64)
    feats = pyramid(2, 128, 128, 64, seed=2)
    images = image_list([(128, 128), (100, 120)], 128, 128)
    gt0 = [[10, 12, 60, 70], [40, 30, 120, 126], [0, 0, 128, 128]]
    gts = [instances((128, 128), gt0, [0, 3, 1]), instances((100, 120))]
    _, samples = head(feats, images, gts)
    assert isinstance(samples, PositiveSamples)
    assert len(samples.boxes) == 2
    for b in range(2):
        n = samples.boxes[b].shape[0]
        assert samples.boxes[b].shape == (n, 4) and samples.target_boxes[b].shape == (n, 4)
        assert samples.labels[b].shape == (n,) and samples.features[b].shape == (n, 64)
    labels, targets = samples.labels[0], samples.target_boxes[0]
    pos = labels != K
    assert pos.sum() > 0
    gt_t = torch.tensor(gt0, dtype=torch.float32)
    gt_cls = torch.tensor([0, 3, 1])
    for i in pos.nonzero().flatten():
        match = (gt_t == targets[i]).all(dim=1).nonzero().flatten()
        assert len(match) == 1 and gt_cls[match[0]] == labels[i]
    # Boxes are squares of side 8 * stride centred on the level's grid.
    sides = samples.boxes[0][:, 2] - samples.boxes[0][:, 0]
    assert set(sides.tolist()) <= {8.0 * s for s in STRIDES}
    assert torch.equal(sides, samples.boxes[0][:, 3] - samples.boxes[0][:, 1])
    assert samples.boxes[0].shape[0] == 16 * 16 + 8 * 8 + 4 * 4 + 2 * 2 + 1
    assert (samples.labels[1] == K).all()


def test_bad_inputs_raise():
    head = make_head()
    feats, images, gts = two_image_batch()
    with pytest.raises(ValueError):
        head({**feats, "p5": feats["p5"][:, :16]}, images, gts)
    with pytest.raises(ValueError):
        head(feats, images, gts[:1])
    with pytest.raises(ValueError):
        head(feats, images, [instances((64, 64), [[8, 8, 40, 40]], [K]), gts[1]])
    with pytest.raises(ValueError):
        make_head(in_features=["p3", "p8"])


def test_config_and_registry_build():
    cfg = get_cfg()
    add_updetr_config(cfg)
    if not hasattr(cfg.MODEL, "CO_DETR"):
        cfg.MODEL.CO_DETR = CN()
    add_fcos_config(cfg)
    f = cfg.MODEL.CO_DETR.FCOS
    assert f.IN_FEATURES == LEVELS and f.CENTER_SAMPLING_RADIUS == 1.5 and f.NUM_CONVS == 1
    assert f.SIZES_OF_INTEREST == [64, 128, 256, 512] and f.BOX_POINT_SCALE == 8.0
    assert (f.FOCAL_ALPHA, f.FOCAL_GAMMA) == (0.25, 2.0)
    assert (f.CLS_WEIGHT, f.BOX_WEIGHT, f.CENTERNESS_WEIGHT) == (1.0, 1.0, 1.0)
    cfg.MODEL.DETR.NUM_CLASSES = K
    assert AUX_HEAD_REGISTRY.get("FCOSAuxHead") is FCOSAuxHead
    head = build_aux_head("FCOSAuxHead", cfg, pyramid_shape(64))
    assert isinstance(head, FCOSAuxHead) and head.name == "fcos" and head.num_classes == K
    assert head.strides == STRIDES
    # One conv (+ GN + ReLU) per tower.
    assert sum(isinstance(m, torch.nn.Conv2d) for m in head.head.cls_subnet) == 1
    feats, images, gts = two_image_batch()
    losses, _ = head(feats, images, gts)
    assert all(torch.isfinite(v) for v in losses.values())
