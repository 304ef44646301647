"""Co-DETR's Faster R-CNN auxiliary head (updetr_d2/methods/codetr/rcnn.py)."""
import math

import pytest
import torch

import updetr_d2  # noqa: F401  (compat fixes before detectron2.modeling)
from detectron2.config import CfgNode as CN
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.structures import Boxes, ImageList, Instances, pairwise_iou
from detectron2.utils.events import EventStorage
from torchvision.ops import roi_align

from updetr_d2.config import add_updetr_config
from updetr_d2.methods.codetr.aux_heads import AuxHead, PositiveSamples, build_aux_head
from updetr_d2.methods.codetr.rcnn import FasterRCNNAuxHead, LowQualityMinMatcher, add_rcnn_config

C = 16  # pyramid width (256 in the paper; small to keep the tests fast)
K = 3  # foreground classes
LEVELS = {f"p{l}": 2**l for l in range(3, 8)}
SHAPES = {name: ShapeSpec(channels=C, stride=s) for name, s in LEVELS.items()}
PAD_H, PAD_W = 192, 256
SIZES = [(192, 256), (160, 200)]  # valid sizes of the two images (different)
GT0 = torch.tensor([[10.0, 20.0, 120.0, 150.0], [150.0, 30.0, 250.0, 90.0], [40.0, 40.0, 72.0, 72.0]])
CLS0 = torch.tensor([1, 2, 0])


def make_cfg():
    cfg = get_cfg()
    add_updetr_config(cfg)
    if "CO_DETR" not in cfg.MODEL:
        cfg.MODEL.CO_DETR = CN()
    add_rcnn_config(cfg)
    cfg.MODEL.DETR.NUM_CLASSES = K
    return cfg


def make_head(**kwargs):
    torch.manual_seed(0)
    if kwargs:
        return FasterRCNNAuxHead(input_shape=SHAPES, num_classes=K, **kwargs)
    return build_aux_head("FasterRCNNAuxHead", make_cfg(), SHAPES)


def make_inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    images = ImageList(torch.zeros(2, 3, PAD_H, PAD_W), SIZES)
    features = {
        name: torch.randn(2, C, math.ceil(PAD_H / s), math.ceil(PAD_W / s), generator=g).requires_grad_()
        for name, s in LEVELS.items()
    }
    gt0 = Instances(SIZES[0], gt_boxes=Boxes(GT0.clone()), gt_classes=CLS0.clone())
    gt1 = Instances(SIZES[1], gt_boxes=Boxes(torch.zeros(0, 4)), gt_classes=torch.zeros(0, dtype=torch.long))
    return features, images, [gt0, gt1]


def test_config_defaults_and_registry_build():
    cfg = make_cfg()
    c = cfg.MODEL.CO_DETR.RCNN
    assert list(c.IN_FEATURES) == ["p3", "p4", "p5", "p6", "p7"]
    assert (c.RPN_CLS_WEIGHT, c.RPN_LOC_WEIGHT, c.CLS_WEIGHT, c.GIOU_WEIGHT) == (1.0, 1.0, 1.0, 10.0)
    head = build_aux_head("FasterRCNNAuxHead", cfg, SHAPES)
    assert isinstance(head, AuxHead) and isinstance(head, FasterRCNNAuxHead) and head.name == "rcnn"

    rpn, roi = head.rpn, head.roi_heads
    assert rpn.in_features == ["p3", "p4", "p5", "p6", "p7"]
    assert rpn.anchor_generator.strides == [8, 16, 32, 64, 128]
    assert rpn.anchor_generator.offset == 0.0
    assert rpn.anchor_matcher.thresholds[1:-1] == [0.3, 0.7] and rpn.anchor_matcher.labels == [0, -1, 1]
    assert rpn.anchor_matcher.allow_low_quality_matches and rpn.anchor_matcher.low_quality_min == 0.3
    assert (rpn.batch_size_per_image, rpn.positive_fraction) == (256, 0.5)
    assert rpn.pre_nms_topk[True] == 4000 and rpn.post_nms_topk[True] == 1000 and rpn.nms_thresh == 0.7
    assert rpn.box_reg_loss_type == "smooth_l1" and rpn.smooth_l1_beta == 0.0  # = L1
    assert rpn.rpn_head.objectness_logits.out_channels == 9

    matcher = roi.proposal_matcher
    assert matcher.thresholds[1:-1] == [0.5] and not matcher.allow_low_quality_matches
    assert (roi.batch_size_per_image, roi.positive_fraction, roi.proposal_append_gt) == (512, 0.25, True)
    pooler = roi.box_pooler
    assert pooler.output_size == (7, 7) and pooler.canonical_box_size == 112 and pooler.canonical_level == 4
    assert all(p.aligned and p.sampling_ratio == 0 for p in pooler.level_poolers)  # ROIAlignV2
    assert [m.out_features for m in roi.box_head.modules() if isinstance(m, torch.nn.Linear)] == [1024, 1024]
    pred = roi.box_predictor
    assert pred.box_reg_loss_type == "giou" and pred.num_classes == K
    assert pred.bbox_pred.out_features == 4 * K  # class-specific
    assert pred.loss_weight == {"loss_cls": 1.0, "loss_box_reg": 10.0}
    assert pred.box2box_transform.weights == (10.0, 10.0, 5.0, 5.0)


def test_rejects_bad_pyramids():
    with pytest.raises(ValueError, match="not in the pyramid"):
        FasterRCNNAuxHead(input_shape={"p3": SHAPES["p3"]}, num_classes=K)
    shapes = dict(SHAPES, p5=ShapeSpec(channels=8, stride=32))
    with pytest.raises(ValueError, match="same channels"):
        FasterRCNNAuxHead(input_shape=shapes, num_classes=K)


def test_anchor_sizes_per_level():
    head = make_head()
    gen = head.rpn.anchor_generator
    for level, (stride, cell) in enumerate(zip(LEVELS.values(), gen.cell_anchors)):
        assert cell.shape == (9, 4)
        w, h = cell[:, 2] - cell[:, 0], cell[:, 3] - cell[:, 1]
        sizes = sorted({round(float(x), 3) for x in torch.sqrt(w * h)})
        expected = [round(4 * 2 ** (k / 3) * stride, 3) for k in range(3)]
        assert sizes == pytest.approx(expected, rel=1e-5), level
        assert sorted({round(float(r), 4) for r in h / w}) == [0.5, 1.0, 2.0]
        # Centred on stride * i (offset 0), like mmdet.
        assert torch.allclose((cell[:, :2] + cell[:, 2:]) / 2, torch.zeros(9, 2), atol=1e-4)


def test_low_quality_matches_need_min_iou():
    m = LowQualityMinMatcher([0.3, 0.7], [0, -1, 1], low_quality_min=0.3)
    iou = torch.tensor([[0.20, 0.10, 0.00], [0.00, 0.40, 0.35], [0.00, 0.00, 0.80]])
    # prediction 0: best IoU 0.2 (< 0.3) with GT 0, GT 0's best is 0.2 < min -> stays negative;
    # prediction 1: IoU 0.4 ignored, but GT 1's best -> positive; prediction 2: 0.8 -> positive.
    matches, labels = m(iou)
    assert labels.tolist() == [0, 1, 1] and matches.tolist() == [0, 1, 2]
    # Detectron2's plain matcher would also promote prediction 0 (GT 0's best at 0.2).
    plain = LowQualityMinMatcher([0.3, 0.7], [0, -1, 1], low_quality_min=0.0)
    assert plain(iou)[1].tolist() == [1, 1, 1]
    # A GT overlapping nothing does not turn every IoU-0 prediction positive.
    assert plain(torch.tensor([[0.0, 0.0, 0.0]]))[1].tolist() == [0, 0, 0]


def test_rpn_assigns_an_anchor_equal_to_the_gt():
    head = make_head()
    features, _, _ = make_inputs()
    feats = [features[f] for f in head.in_features]
    anchors = head.rpn.anchor_generator(feats)
    # p3 anchor centred at (16, 16), size 32, ratio 1: (0, 0, 32, 32).
    gt = Instances(SIZES[0], gt_boxes=Boxes(torch.tensor([[0.0, 0.0, 32.0, 32.0]])))
    gt.gt_classes = torch.tensor([0])
    all_anchors = Boxes.cat(anchors).tensor
    idx = int(torch.nonzero((all_anchors == gt.gt_boxes.tensor).all(dim=1))[0])
    with EventStorage():
        labels, matched = head.rpn.label_and_sample_anchors(anchors, [gt])
    assert labels[0][idx] == 1 and torch.equal(matched[0][idx], gt.gt_boxes.tensor[0])
    assert int((labels[0] == 1).sum()) <= 128 and int((labels[0] >= 0).sum()) == 256


def test_forward_losses_finite_and_gradients():
    head = make_head()
    features, images, gts = make_inputs()
    losses, samples = head(features, images, gts)
    assert set(losses) == {"loss_rcnn_rpn_cls", "loss_rcnn_rpn_loc", "loss_rcnn_cls", "loss_rcnn_giou"}
    assert all(v.dim() == 0 and torch.isfinite(v) for v in losses.values())
    # At initialization (logit layers of std 0.01): objectness BCE ~ log 2, RoI CE ~ log(K + 1).
    assert losses["loss_rcnn_rpn_cls"].item() == pytest.approx(math.log(2), abs=0.02)
    assert losses["loss_rcnn_cls"].item() == pytest.approx(math.log(K + 1), abs=0.1)
    assert losses["loss_rcnn_giou"].item() > 0 and losses["loss_rcnn_rpn_loc"].item() > 0
    assert isinstance(samples, PositiveSamples) and len(samples.boxes) == 2
    sum(losses.values()).backward()
    r, p = head.rpn.rpn_head, head.roi_heads.box_predictor
    for param in (r.conv.weight, r.objectness_logits.weight, r.anchor_deltas.weight,
                  head.roi_heads.box_head.fc1.weight, p.cls_score.weight, p.bbox_pred.weight):
        assert param.grad is not None and param.grad.abs().sum() > 0
    for name in ("p3", "p4"):
        assert features[name].grad is not None and features[name].grad.abs().sum() > 0


def test_every_level_gets_gradient_when_all_anchors_are_sampled():
    # Explicit-argument construction (LazyConfig style); a huge RPN batch samples every anchor.
    head = make_head(rpn_batch_size_per_image=10**6)
    features, images, gts = make_inputs()
    losses, _ = head(features, images, gts)
    sum(losses.values()).backward()
    assert all(features[f].grad.abs().sum() > 0 for f in LEVELS)


def test_loss_weights_scale_each_term():
    weights = dict(rpn_cls_weight=2.0, rpn_loc_weight=3.0, cls_weight=4.0, giou_weight=5.0)
    base, scaled = make_head(giou_weight=1.0), make_head(**weights)
    scaled.load_state_dict(base.state_dict())
    features, images, gts = make_inputs()
    torch.manual_seed(1)
    l1, _ = base(features, images, gts)
    torch.manual_seed(1)
    l2, _ = scaled(features, images, gts)
    for key, w in zip(("rpn_cls", "rpn_loc", "cls", "giou"), weights.values()):
        assert l2[f"loss_rcnn_{key}"].item() == pytest.approx(w * l1[f"loss_rcnn_{key}"].item(), rel=1e-5)


def test_positive_samples_contract():
    head = make_head()
    features, images, gts = make_inputs()
    _, s = head(features, images, gts)
    for b in range(2):
        n = s.boxes[b].shape[0]
        assert 0 < n <= 512
        assert s.labels[b].dtype == torch.long and s.features[b].shape == (n, C)
        assert torch.isfinite(s.target_boxes[b]).all() and torch.isfinite(s.features[b]).all()
        h, w = SIZES[b]
        # Proposals are clipped to the valid image (GT boxes lie inside it too).
        assert (s.boxes[b][:, 2] <= w).all() and (s.boxes[b][:, 3] <= h).all()

    boxes, labels, targets = s.boxes[0], s.labels[0], s.target_boxes[0]
    pos = labels != K
    num_pos = int(pos.sum())
    assert num_pos >= 3 and bool(pos[:num_pos].all()) and not bool(pos[num_pos:].any())  # positives first
    assert num_pos <= 128  # 25% of 512
    # Each positive: its target is a GT box with IoU >= 0.5, the best-overlapping one, and
    # its label is that GT's class.
    iou_gt = pairwise_iou(Boxes(GT0), Boxes(boxes[:num_pos]))  # [3, num_pos]
    best = iou_gt.argmax(dim=0)
    assert torch.equal(targets[:num_pos], GT0[best]) and torch.equal(labels[:num_pos], CLS0[best])
    assert (iou_gt.max(dim=0).values >= 0.5).all()
    # Negatives overlap every GT by < 0.5.
    assert (pairwise_iou(Boxes(GT0), Boxes(boxes[num_pos:])) < 0.5).all()
    # The GT boxes themselves are positive RoIs of their own class, targeting themselves.
    for g in range(len(GT0)):
        hit = (boxes[:num_pos] == GT0[g]).all(dim=1)
        assert hit.any()
        i = int(torch.nonzero(hit)[0])
        assert labels[i] == CLS0[g] and torch.equal(targets[i], GT0[g])

    # Image without GT: every RoI is background.
    assert (s.labels[1] == K).all() and s.boxes[1].shape[0] == 512

    # Features: the 7x7 RoIAlign (aligned) feature of the RoI on its mmdet level, averaged.
    # GT 0 is 110 x 130 (sqrt area 119.6 >= 112) -> p4; GT 2 is 32 x 32 -> p3.
    for g, level in ((0, "p4"), (2, "p3")):
        i = int(torch.nonzero((boxes[:num_pos] == GT0[g]).all(dim=1))[0])
        rois = torch.cat([torch.zeros(1, 1), GT0[g : g + 1]], dim=1)
        ref = roi_align(features[level][:1], rois, 7, 1.0 / LEVELS[level], 0, True).mean(dim=(2, 3))[0]
        assert torch.allclose(s.features[0][i], ref, atol=1e-5)
    # Pooled features stay in the graph (the query builder may train through them).
    assert s.features[0].requires_grad


def test_roi_sampling_caps_the_positive_fraction():
    head = make_head()
    gt = Instances((200, 200), gt_boxes=Boxes(torch.tensor([[50.0, 50.0, 150.0, 150.0]])))
    gt.gt_classes = torch.tensor([2])

    def proposals(num_pos, num_neg):
        shift = torch.linspace(0, 10, num_pos)[:, None]  # IoU >= 0.81 with the GT
        pos = torch.tensor([[50.0, 50.0, 150.0, 150.0]]) + shift
        neg = torch.tensor([[0.0, 0.0, 40.0, 40.0]]).repeat(num_neg, 1)  # IoU 0
        p = Instances((200, 200), proposal_boxes=Boxes(torch.cat([pos, neg])))
        p.objectness_logits = torch.zeros(num_pos + num_neg)
        return p

    with EventStorage():
        many = head.roi_heads.label_and_sample_proposals([proposals(1000, 1000)], [gt])[0]
        few = head.roi_heads.label_and_sample_proposals([proposals(10, 1000)], [gt])[0]
    # Many positives: 25% of 512 = 128 positives, filled up with 384 negatives.
    assert len(many) == 512 and int((many.gt_classes == 2).sum()) == 128
    assert (many.gt_classes[:128] == 2).all() and (many.gt_classes[128:] == K).all()
    # Few: all 10 + the appended GT box = 11 positives, the remaining 501 negatives.
    assert len(few) == 512 and int((few.gt_classes == 2).sum()) == 11


def test_giou_loss_on_decoded_class_specific_boxes():
    # Zero deltas decode to the proposal itself. Positive RoI (0,0,10,10) of class 1 with GT
    # (0,0,10,5): GIoU = IoU = 0.5 (the RoI encloses the GT), loss 1 - 0.5; the negative RoI
    # has no box loss; normalized by the 2 sampled RoIs, times the weight 10.
    head = make_head()
    rois = torch.tensor([[0.0, 0.0, 10.0, 10.0], [5.0, 5.0, 15.0, 15.0]])
    p = Instances((20, 20), proposal_boxes=Boxes(rois))
    p.gt_boxes = Boxes(torch.tensor([[0.0, 0.0, 10.0, 5.0], [0.0, 0.0, 1.0, 1.0]]))
    p.gt_classes = torch.tensor([1, K])
    deltas = torch.zeros(2, 4 * K)
    deltas[0, 0:4] = 5.0  # another class's deltas: must not be used
    with EventStorage():
        losses = head.roi_heads.box_predictor.losses((torch.zeros(2, K + 1), deltas), [p])
    assert losses["loss_box_reg"].item() == pytest.approx(10 * 0.5 / 2, rel=1e-5)
    assert losses["loss_cls"].item() == pytest.approx(math.log(K + 1), rel=1e-5)


def test_all_images_without_gt():
    head = make_head()
    features, images, gts = make_inputs()
    gts[0] = Instances(SIZES[0], gt_boxes=Boxes(torch.zeros(0, 4)))
    gts[0].gt_classes = torch.zeros(0, dtype=torch.long)
    losses, s = head(features, images, gts)
    assert all(torch.isfinite(v) for v in losses.values())
    assert losses["loss_rcnn_giou"].item() == 0 and losses["loss_rcnn_rpn_loc"].item() == 0
    assert all((lab == K).all() for lab in s.labels)
    sum(losses.values()).backward()
    assert features["p3"].grad.abs().sum() > 0


def test_training_only():
    head = make_head().eval()
    features, images, gts = make_inputs()
    with pytest.raises(RuntimeError, match="training-only"):
        head(features, images, gts)
    head.train()
    head.rpn.eval()  # a sub-module left in eval mode would skip Detectron2's losses
    with pytest.raises(RuntimeError, match="training-only"):
        head(features, images, gts)
