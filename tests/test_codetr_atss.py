"""Co-DETR's ATSS auxiliary head: the ATSS assignment on hand-made anchors and boxes, the
losses on hand-computed cases, and the head's contract (shapes, gradients, samples)."""
import math
import statistics

import pytest
import torch

import updetr_d2  # noqa: F401  (must precede detectron2.modeling imports)
from detectron2.config import CfgNode as CN
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.structures import Boxes, ImageList, Instances

from updetr_d2.methods.codetr.atss import ATSSAuxHead, add_atss_config, centerness_targets
from updetr_d2.methods.codetr.atss_assign import assign_atss
from updetr_d2.methods.codetr.aux_heads import AUX_HEAD_REGISTRY, PositiveSamples, build_aux_head

LEVELS = ["p3", "p4", "p5", "p6", "p7"]
STRIDES = [8, 16, 32, 64, 128]
C = 32
K = 3


def _input_shape(channels=C):
    return {name: ShapeSpec(channels=channels, stride=s) for name, s in zip(LEVELS, STRIDES)}


def _head(**kwargs):
    torch.manual_seed(0)
    kwargs.setdefault("num_classes", K)
    return ATSSAuxHead(input_shape=_input_shape(kwargs.pop("channels", C)), **kwargs)


def _features(batch, height, width, channels=C, requires_grad=False):
    g = torch.Generator().manual_seed(1)
    feats = {}
    for name, s in zip(LEVELS, STRIDES):
        x = torch.randn(batch, channels, math.ceil(height / s), math.ceil(width / s), generator=g)
        feats[name] = x.requires_grad_(requires_grad)
    return feats


def _instances(size, boxes, classes):
    inst = Instances(size)
    inst.gt_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
    inst.gt_classes = torch.tensor(classes, dtype=torch.long)
    return inst


def _images(sizes, pad=(64, 64)):
    return ImageList(torch.zeros(len(sizes), 3, *pad), list(sizes))


# ----------------------------------------------------------------------------- assignment
def test_threshold_is_mean_plus_unbiased_std_and_centre_must_be_inside():
    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    anchors = torch.tensor(
        [
            [5.5, 0.0, 15.5, 10.0],  # IoU 45/155 = 9/31, the highest, but centre (10.5, 5) is outside
            [-5.0, -5.0, 15.0, 15.0],  # IoU 100/400 = 1/4, centre (5, 5) inside
            [-10.0, -10.0, 20.0, 20.0],  # IoU 100/900 = 1/9
            [-20.0, -20.0, 30.0, 30.0],  # IoU 100/2500 = 1/25
            [40.0, 40.0, 50.0, 50.0],  # IoU 0 (x4)
            [60.0, 40.0, 70.0, 50.0],
            [40.0, 60.0, 50.0, 70.0],
            [60.0, 60.0, 70.0, 70.0],
        ]
    )
    # One level of 8 anchors, topk 9 > 8: every anchor is a candidate.
    ious = [9 / 31, 1 / 4, 1 / 9, 1 / 25, 0, 0, 0, 0]
    expected = statistics.mean(ious) + statistics.stdev(ious)  # 0.20653 (biased std: 0.19878)
    labels, matched, thresholds = assign_atss(anchors, [8], gt, torch.tensor([2]), num_classes=K, topk=9)
    assert thresholds.tolist() == pytest.approx([expected], abs=1e-5)
    assert thresholds.item() == pytest.approx(0.2065320, abs=1e-5)
    # Anchors 0 and 1 pass the threshold; 0 is dropped by the centre-inside rule.
    assert matched.tolist() == [-1, 0, -1, -1, -1, -1, -1, -1]
    assert labels.tolist() == [K, 2, K, K, K, K, K, K]

    # Boxes wrapper accepted; an invalid anchor is no candidate (B is lost, the statistics
    # then cover the 7 others).
    valid = torch.ones(8, dtype=torch.bool)
    valid[1] = False
    labels, matched, thresholds = assign_atss(
        Boxes(anchors), [8], Boxes(gt), torch.tensor([2]), num_classes=K, valid=valid
    )
    rest = [9 / 31, 1 / 9, 1 / 25, 0, 0, 0, 0]
    assert thresholds.item() == pytest.approx(statistics.mean(rest) + statistics.stdev(rest), abs=1e-5)
    assert (matched == -1).all() and (labels == K).all()


def test_topk_per_level_by_centre_distance():
    gt = torch.tensor([[0.0, 0.0, 20.0, 20.0]])  # centre (10, 10)
    anchors = torch.tensor(
        [
            # level 0: side 8
            [6.0, 6.0, 14.0, 14.0],  # centre (10, 10), dist 0, IoU 64/400 = 0.16
            [10.0, 6.0, 18.0, 14.0],  # centre (14, 10), dist 4, IoU 0.16
            [22.0, 6.0, 30.0, 14.0],  # dist 16, not in the top 2
            [6.0, 26.0, 14.0, 34.0],  # dist 20, not in the top 2
            # level 1: no anchors
            # level 2: side 24
            [-2.0, -2.0, 22.0, 22.0],  # dist 0, IoU 400/576
            [28.0, 28.0, 52.0, 52.0],  # dist 42.4, not in the top 2
            [6.0, -2.0, 30.0, 22.0],  # dist 8, IoU 280/696
        ]
    )
    labels, matched, thresholds = assign_atss(anchors, [4, 0, 3], gt, torch.tensor([1]), num_classes=K, topk=2)
    cand = [0.16, 0.16, 400 / 576, 280 / 696]
    assert thresholds.item() == pytest.approx(statistics.mean(cand) + statistics.stdev(cand), abs=1e-5)  # 0.6078
    assert matched.tolist() == [-1, -1, -1, -1, 0, -1, -1]
    assert labels.tolist() == [K, K, K, K, 1, K, K]


def test_anchor_positive_for_two_gts_goes_to_the_higher_iou():
    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0], [4.0, 0.0, 20.0, 10.0]])
    anchors = torch.tensor(
        [
            [4.0, 0.0, 14.0, 10.0],  # centre (9, 5) inside both; IoU 60/140 = 3/7 and 100/160 = 5/8
            [40.0, 40.0, 50.0, 50.0],
            [60.0, 40.0, 70.0, 50.0],
            [40.0, 60.0, 50.0, 70.0],
        ]
    )
    # Candidates IoUs [a, 0, 0, 0]: mean a/4, stdev a/2 -> threshold 3a/4 < a: positive for both.
    labels, matched, thresholds = assign_atss(anchors, [4], gt, torch.tensor([0, 1]), num_classes=K)
    assert thresholds.tolist() == pytest.approx([0.75 * 3 / 7, 0.75 * 5 / 8], abs=1e-5)
    assert matched.tolist() == [1, -1, -1, -1]
    assert labels.tolist() == [1, K, K, K]
    # By IoU, not by GT order.
    labels, matched, _ = assign_atss(anchors, [4], gt.flip(0), torch.tensor([1, 0]), num_classes=K)
    assert matched.tolist() == [0, -1, -1, -1]
    assert labels.tolist() == [1, K, K, K]


def test_no_gt_and_no_candidates():
    anchors = torch.tensor([[0.0, 0.0, 10.0, 10.0], [5.0, 5.0, 15.0, 15.0]])
    labels, matched, thresholds = assign_atss(
        anchors, [1, 1], torch.zeros(0, 4), torch.zeros(0, dtype=torch.long), num_classes=K
    )
    assert labels.tolist() == [K, K] and matched.tolist() == [-1, -1] and thresholds.shape == (0,)
    # Every anchor invalid: nothing to choose from.
    labels, matched, _ = assign_atss(
        anchors, [1, 1], torch.tensor([[0.0, 0.0, 10.0, 10.0]]), torch.tensor([0]), num_classes=K,
        valid=torch.zeros(2, dtype=torch.bool),
    )
    assert labels.tolist() == [K, K] and matched.tolist() == [-1, -1]
    # A single candidate in all: std 0, threshold = its IoU, positive.
    labels, matched, thresholds = assign_atss(
        anchors[:1], [1], torch.tensor([[0.0, 0.0, 10.0, 10.0]]), torch.tensor([2]), num_classes=K
    )
    assert thresholds.tolist() == pytest.approx([1.0]) and labels.tolist() == [2]
    with pytest.raises(ValueError):
        assign_atss(anchors, [1], torch.zeros(0, 4), torch.zeros(0, dtype=torch.long), num_classes=K)


def test_centerness_targets():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 10.0]])
    points = torch.tensor([[5.0, 5.0], [2.5, 5.0]])
    assert centerness_targets(points, boxes).tolist() == pytest.approx([1.0, math.sqrt(2.5 / 7.5)])


# ----------------------------------------------------------------------------- losses
def test_classification_loss_hand_value_and_ignored_padding():
    head = _head()
    anchors = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0]])
    labels = torch.tensor([[1, K, K]])
    targets = anchors.clone()[None]
    valid = torch.tensor([[True, True, False]])
    logits = torch.zeros(1, 3, K)
    logits[0, 2] = 10.0  # the ignored anchor: would add a large loss if it counted
    losses = head.losses(anchors, logits, torch.zeros(1, 3, 4), torch.zeros(1, 3), labels, targets, valid)
    # p = 0.5 everywhere: positive entry alpha * 0.5^2 * ln 2, each of the 2*3 - 1 negative
    # entries (1 - alpha) * 0.5^2 * ln 2; one positive.
    ln2 = math.log(2)
    expected = 0.25 * 0.25 * ln2 + 5 * 0.75 * 0.25 * ln2
    assert losses["loss_atss_cls"].item() == pytest.approx(expected, rel=1e-5)
    # The positive anchor's box = its GT: GIoU loss 0; centerness logit 0 vs target 1: ln 2.
    assert losses["loss_atss_giou"].item() == pytest.approx(0.0, abs=1e-6)
    assert losses["loss_atss_centerness"].item() == pytest.approx(ln2, rel=1e-5)
    with pytest.raises(ValueError, match="valid area"):
        head.losses(anchors, logits, torch.zeros(1, 3, 4), torch.zeros(1, 3), torch.tensor([[K, K, 0]]), targets, valid)


def test_giou_loss_perfect_regression_and_centerness_weighting():
    head = _head(giou_weight=2.0, centerness_weight=1.0)
    anchors = torch.tensor([[0.0, 0.0, 10.0, 10.0], [20.0, 0.0, 30.0, 10.0], [50.0, 50.0, 60.0, 60.0]])
    gts = torch.tensor([[-2.0, 1.0, 13.0, 9.0], [18.0, -3.0, 31.0, 12.0]])
    labels = torch.tensor([[0, 2, K]])
    targets = torch.cat([gts, anchors[2:]])[None]
    valid = torch.ones(1, 3, dtype=torch.bool)
    deltas = torch.zeros(1, 3, 4)
    deltas[0, :2] = head.box2box_transform.get_deltas(anchors[:2], gts)
    ctr_t = centerness_targets(torch.tensor([[5.0, 5.0], [25.0, 5.0]]), gts)
    ctr_logits = torch.zeros(1, 3)
    ctr_logits[0, :2] = torch.logit(ctr_t)
    losses = head.losses(anchors, torch.zeros(1, 3, K), deltas, ctr_logits, labels, targets, valid)
    assert losses["loss_atss_giou"].item() == pytest.approx(0.0, abs=1e-5)
    # BCE at the optimum is the targets' binary entropy, / 2 positives.
    entropy = -(ctr_t * ctr_t.log() + (1 - ctr_t) * (1 - ctr_t).log()).sum() / 2
    assert losses["loss_atss_centerness"].item() == pytest.approx(entropy.item(), rel=1e-4)

    # Weighted by centerness and normalised by its sum: a perfect box (centerness 1) and
    # the anchor itself (0, 0, 10, 10) vs GT (0, 0, 20, 10): GIoU 0.5, centerness sqrt(1/3).
    gts = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 20.0, 10.0]])
    anchors = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 10.0]])
    losses = head.losses(
        anchors, torch.zeros(1, 2, K), torch.zeros(1, 2, 4), torch.zeros(1, 2),
        torch.tensor([[0, 1]]), gts[None], torch.ones(1, 2, dtype=torch.bool),
    )
    w = math.sqrt(1 / 3)
    assert losses["loss_atss_giou"].item() == pytest.approx(2.0 * w * 0.5 / (1 + w), rel=1e-5)


# ----------------------------------------------------------------------------- head
def test_anchors_in_input_pixels():
    head = _head()
    feats = _features(1, 64, 64)
    anchors = head.anchor_generator([feats[n] for n in LEVELS])
    assert [len(a) for a in anchors] == [64, 16, 4, 1, 1]
    # Offset 0: cell (0, 0) centred at the origin, side 8 * stride; row-major order.
    assert anchors[0].tensor[0].tolist() == [-32.0, -32.0, 32.0, 32.0]
    assert anchors[0].tensor[1].tolist() == [-24.0, -32.0, 40.0, 32.0]
    assert anchors[0].tensor[8].tolist() == [-32.0, -24.0, 32.0, 40.0]
    assert anchors[1].tensor[0].tolist() == [-64.0, -64.0, 64.0, 64.0]


def test_forward_losses_gradients_and_samples():
    head = _head()
    feats = _features(2, 64, 64, requires_grad=True)
    images = _images([(64, 64), (48, 56)])
    gts = [
        _instances((64, 64), [[8.0, 8.0, 40.0, 40.0], [30.0, 20.0, 62.0, 60.0]], [0, 2]),
        _instances((48, 56), [[4.0, 10.0, 50.0, 44.0]], [1]),
    ]
    losses, samples = head(feats, images, gts)
    assert set(losses) == {"loss_atss_cls", "loss_atss_giou", "loss_atss_centerness"}
    for v in losses.values():
        assert v.dim() == 0 and torch.isfinite(v) and v.item() > 0
    sum(losses.values()).backward()
    for name, p in head.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    for name in LEVELS:
        assert feats[name].grad is not None and feats[name].grad.abs().sum() > 0, name

    assert isinstance(samples, PositiveSamples)
    num_anchors = 64 + 16 + 4 + 1 + 1
    anchors = torch.cat([a.tensor for a in head.anchor_generator([feats[n] for n in LEVELS])])
    for b in range(2):
        boxes, labels, targets, f = samples.boxes[b], samples.labels[b], samples.target_boxes[b], samples.features[b]
        assert boxes.shape == (num_anchors, 4) and labels.shape == (num_anchors,)
        assert targets.shape == (num_anchors, 4) and f.shape == (num_anchors, C)
        assert torch.equal(boxes, anchors)
        assert labels.dtype == torch.long and set(labels.unique().tolist()) <= {0, 1, 2, K}
        pos = labels < K
        assert pos.sum() >= 2 if b == 0 else pos.sum() >= 1
        gt_boxes, gt_classes = gts[b].gt_boxes.tensor, gts[b].gt_classes
        # Every positive's target is one of the GT boxes, with that GT's class, and the
        # anchor centre is inside it; the assignment equals assign_atss's.
        match = (targets[pos][:, None, :] == gt_boxes[None]).all(-1)
        assert (match.sum(1) == 1).all()
        assert torch.equal(gt_classes[match.float().argmax(1)], labels[pos])
        centers = (boxes[pos, :2] + boxes[pos, 2:]) / 2
        t = targets[pos]
        assert ((centers > t[:, :2]) & (centers < t[:, 2:])).all()
        h, w = images.image_sizes[b]
        c_all = (anchors[:, :2] + anchors[:, 2:]) / 2
        valid = (c_all[:, 0] < w) & (c_all[:, 1] < h)
        ref = assign_atss(anchors, [64, 16, 4, 1, 1], gt_boxes, gt_classes, K, 9, valid=valid)
        assert torch.equal(ref.labels, labels)
        assert torch.equal(targets[~pos], boxes[~pos])  # background: the anchor itself
        # Features: the pyramid feature at the anchor's cell (p4 cell (y=1, x=2) -> 64 + 6).
        assert torch.equal(f[0], feats["p3"][b, :, 0, 0])
        assert torch.equal(f[9], feats["p3"][b, :, 1, 1])
        assert torch.equal(f[64 + 6], feats["p4"][b, :, 1, 2])
        assert torch.equal(f[-1], feats["p7"][b, :, 0, 0])


def test_no_positive_in_padding():
    head = _head()
    feats = _features(2, 64, 64)
    images = _images([(64, 64), (24, 40)])
    # Image 1's GT runs into the padding (as a box clipped to the padded size could).
    gts = [
        _instances((64, 64), [[0.0, 0.0, 64.0, 64.0]], [0]),
        _instances((24, 40), [[0.0, 0.0, 64.0, 64.0]], [0]),
    ]
    losses, samples = head(feats, images, gts)
    assert all(torch.isfinite(v) for v in losses.values())
    centers = (samples.boxes[1][:, :2] + samples.boxes[1][:, 2:]) / 2
    in_padding = (centers[:, 0] >= 40) | (centers[:, 1] >= 24)
    assert in_padding.any()
    assert (samples.labels[1][in_padding] == K).all()
    assert (samples.labels[1] < K).any()
    # Image 0 is the same GT without padding: some of its positives lie where image 1 is padded.
    assert (samples.labels[0][in_padding] < K).any()


def test_images_without_gt():
    head = _head()
    feats = _features(2, 64, 64, requires_grad=True)
    images = _images([(64, 64), (40, 64)])
    empty = [_instances((64, 64), [], []), Instances((40, 64))]  # no boxes / no fields at all
    losses, samples = head(feats, images, empty)
    assert losses["loss_atss_giou"].item() == 0.0 and losses["loss_atss_centerness"].item() == 0.0
    assert torch.isfinite(losses["loss_atss_cls"]) and losses["loss_atss_cls"].item() > 0
    sum(losses.values()).backward()
    assert head.cls_score.weight.grad.abs().sum() > 0
    assert feats["p3"].grad.abs().sum() > 0
    assert all((lab == K).all() for lab in samples.labels)

    # Mixed batch: one image with GT, one without.
    feats = _features(2, 64, 64)
    gts = [_instances((64, 64), [[8.0, 8.0, 40.0, 40.0]], [1]), _instances((40, 64), [], [])]
    losses, samples = head(feats, images, gts)
    assert all(torch.isfinite(v) and v.item() > 0 for v in losses.values())
    assert (samples.labels[0] == 1).any() and (samples.labels[1] == K).all()


def test_shape_errors_raise():
    head = _head()
    feats = _features(1, 64, 64)
    images = _images([(64, 64)])
    gts = [_instances((64, 64), [[8.0, 8.0, 40.0, 40.0]], [1])]
    bad = dict(feats, p5=torch.zeros(1, C + 1, 2, 2))
    with pytest.raises(ValueError):
        head(bad, images, gts)
    with pytest.raises(KeyError):
        head({k: v for k, v in feats.items() if k != "p7"}, images, gts)
    with pytest.raises(ValueError):
        head(feats, images, gts * 2)
    with pytest.raises(ValueError):
        head(feats, images, [_instances((64, 64), [[8.0, 8.0, 40.0, 40.0]], [K])])


def test_config_and_registry_build():
    from updetr_d2.config import add_updetr_config

    cfg = get_cfg()
    add_updetr_config(cfg)
    if "CO_DETR" not in cfg.MODEL:
        with pytest.raises(KeyError, match="CO_DETR"):
            add_atss_config(cfg)
        cfg.MODEL.CO_DETR = CN()
    add_atss_config(cfg)
    a = cfg.MODEL.CO_DETR.ATSS
    assert (a.TOPK, a.ANCHOR_SCALE, a.NUM_CONVS, a.FOCAL_ALPHA, a.FOCAL_GAMMA) == (9, 8, 1, 0.25, 2.0)
    assert (a.CLS_WEIGHT, a.GIOU_WEIGHT, a.CENTERNESS_WEIGHT) == (1.0, 2.0, 1.0)
    assert list(a.IN_FEATURES) == LEVELS and a.ANCHOR_OFFSET == 0.0
    assert "ATSSAuxHead" in AUX_HEAD_REGISTRY

    cfg.MODEL.DETR.NUM_CLASSES = 5
    a.NUM_CONVS = 2
    a.GIOU_WEIGHT = 3.0
    head = build_aux_head("ATSSAuxHead", cfg, _input_shape(48))
    assert isinstance(head, ATSSAuxHead) and head.name == "atss"
    assert head.num_classes == 5 and head.cls_score.out_channels == 5 and head.giou_weight == 3.0
    gns = [m for m in head.cls_tower if isinstance(m, torch.nn.GroupNorm)]
    assert len(gns) == 2 and gns[0].num_groups == 16  # gcd(32, 48)
    assert head.scales.shape == (5,)
    # Prior 0.01 on the classifier bias.
    assert torch.sigmoid(head.cls_score.bias).tolist() == pytest.approx([0.01] * 5, rel=1e-4)
    # Explicit arguments (LazyConfig style), one conv per tower by default.
    head = ATSSAuxHead(input_shape=_input_shape(), num_classes=2, in_features=["p3", "p4"])
    assert len(head.cls_tower) == 3 and head.strides == [8, 16]
