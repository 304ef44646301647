"""DETR's mask head as a plug-in: attention maps and mask shapes, the focal + dice losses
(closed forms, normalisation, matched queries only, batch padding left out), the mask
stage's freezing, and the inference outputs of DETR and Deformable DETR with it."""
import math
import os

import pytest
import torch
from torch.nn import functional as F

import updetr_d2  # noqa: F401
from detectron2.modeling import build_model
from detectron2.structures import BitMasks, PolygonMasks
from detectron2.utils.events import EventStorage
from updetr_d2.methods.panoptic import MaskFocalDice, MHAttentionMap, dice_loss, focal_mask_loss
from updetr_d2.methods.panoptic.losses import target_masks
from updetr_d2.modeling.criterion import SetCriterion
from updetr_d2.solver import build_optimizer

from helpers import fake_input
from test_deformable_detr import tiny_cfg as tiny_deformable_cfg
from test_detr import tiny_detr_cfg

THINGS = [0, 1, 2, 3]  # the demo's panoptic classes: 4 things, then sky (4) and ground (5)


def with_mask_head(cfg, freeze=False):
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.DETR.PLUGINS = ["MaskHead"]
    cfg.MODEL.DETR.NUM_CLASSES = 6
    cfg.MODEL.PANOPTIC.THING_CLASSES = THINGS
    cfg.MODEL.PANOPTIC.FREEZE_DETECTOR = freeze
    return cfg


def with_masks(x, boxes):
    """``x``'s ground truth gets box-shaped masks (bool, the image's size)."""
    h, w = x["image"].shape[-2:]
    masks = torch.zeros(len(boxes), h, w, dtype=torch.bool)
    for m, (x0, y0, x1, y1) in zip(masks, boxes):
        m[y0:y1, x0:x1] = True
    x["instances"].gt_masks = BitMasks(masks)
    return x


def batch():
    b1 = [[10, 10, 50, 60], [0, 0, 128, 40]]
    b2 = [[5, 5, 40, 40]]
    return [with_masks(fake_input(96, 128, b1, [1, 4], seed=1), b1),
            with_masks(fake_input(70, 100, b2, [2], seed=2), b2)]


# --- the attention maps --------------------------------------------------------------
def naive_attention_map(layer, queries, memory, padding):
    """Written out per (row, head, position) from the paper's definition."""
    N, d = queries.shape
    M = layer.num_heads
    c = d // M
    q = (queries @ layer.q_linear.weight.T + layer.q_linear.bias).view(N, M, c)
    B, _, H, W = memory.shape
    k = (memory.permute(0, 2, 3, 1) @ layer.k_linear.weight.T + layer.k_linear.bias).view(B, H, W, M, c)
    out = torch.empty(N, M, H, W)
    for n in range(N):
        logits = torch.einsum("mc,hwmc->mhw", q[n], k[n]) / math.sqrt(c)
        logits[:, padding[n]] = float("-inf")
        out[n] = logits.flatten().softmax(0).view(M, H, W)
    return out


def test_attention_map_is_a_joint_softmax_over_heads_and_positions_without_padding():
    torch.manual_seed(0)
    layer = MHAttentionMap(16, 16, num_heads=4)
    memory = torch.randn(2, 16, 3, 5)
    padding = torch.zeros(2, 3, 5, dtype=torch.bool)
    padding[1, :, 3:] = True
    queries = torch.randn(2, 16)
    weights = layer(queries, layer.keys(memory), padding)
    assert weights.shape == (2, 4, 3, 5)
    torch.testing.assert_close(weights.flatten(1).sum(1), torch.ones(2))
    assert (weights[1][:, padding[1]] == 0).all() and (weights[0] > 0).all()
    torch.testing.assert_close(weights, naive_attention_map(layer, queries, memory, padding))
    # Scaled to the positions they spread over: the same maps, averaging 1 over the valid ones.
    layer.scale_to_positions = True
    scaled = layer(queries, layer.keys(memory), padding)
    torch.testing.assert_close(scaled, weights * torch.tensor([4 * 15, 4 * 9.0])[:, None, None, None])
    torch.testing.assert_close(scaled[1][:, ~padding[1]].mean(), torch.tensor(1.0))


def test_mask_and_attention_shapes_follow_the_strides():
    model = build_model(with_mask_head(tiny_detr_cfg())).eval()
    seen = {}
    head = model.plugins[0]
    head.bbox_attention.register_forward_hook(lambda m, i, o: seen.update(attention=o.shape))
    x = fake_input(128, 160, [], [])
    state = model.run_phases([x])
    context = state.outputs["mask_context"]
    queries = state.outputs["mask_queries"][0]
    masks = context.predict(queries, torch.zeros(len(queries), dtype=torch.long))
    assert masks.shape == (10, 32, 40)  # res2: stride 4
    assert seen["attention"] == (10, 8, 4, 5)  # 8 heads over the stride-32 memory


# --- the losses ----------------------------------------------------------------------
def test_focal_and_dice_equal_their_closed_forms_on_a_toy_mask():
    logits = torch.tensor([[[2.0, -1.0], [0.0, 3.0]]])
    target = torch.tensor([[[1, 0], [0, 1]]], dtype=torch.bool)
    p = torch.sigmoid(logits)[0].flatten().tolist()
    t = [1, 0, 0, 1]
    focal = 0.0
    for pi, ti in zip(p, t):
        pt = pi if ti else 1 - pi
        alpha = 0.25 if ti else 0.75
        focal += -alpha * (1 - pt) ** 2 * math.log(pt)
    assert focal_mask_loss(logits, target).item() == pytest.approx(focal / 4, rel=1e-5)
    inter = p[0] + p[3]
    dice = 1 - (2 * inter + 1) / (sum(p) + 2 + 1)
    assert dice_loss(logits, target).item() == pytest.approx(dice, rel=1e-5)
    perfect = torch.where(target, 50.0, -50.0).float()
    assert dice_loss(perfect, target).item() == pytest.approx(0, abs=1e-6)


class FixedContext:
    """A stand-in for the mask head: the same logits for every row, counted."""

    def __init__(self, logits, image_sizes, stride=1):
        self.logits, self.image_sizes, self.stride = logits, image_sizes, stride
        self.rows = 0

    def predict(self, queries, rows):
        self.rows += len(rows)
        return self.logits[rows] + queries.sum(-1)[:, None, None] * 0


def _criterion():
    from updetr_d2.modeling.matcher import HungarianMatcher

    return SetCriterion(HungarianMatcher(), [MaskFocalDice()], {"loss_mask": 1.0, "loss_dice": 1.0}, aux_loss=False)


def test_mask_loss_is_normalised_by_the_object_count_over_workers(monkeypatch):
    torch.manual_seed(0)
    logits = torch.randn(1, 4, 5)
    gt = torch.rand(2, 4, 5) > 0.5
    context = FixedContext(logits, [(4, 5)])
    outputs = {"pred_logits": torch.randn(1, 3, 7), "pred_boxes": torch.rand(1, 3, 4),
               "mask_queries": torch.randn(1, 3, 8), "mask_context": context}
    targets = [{"labels": torch.tensor([0, 1]), "boxes": torch.rand(2, 4), "masks": BitMasks(gt)}]
    indices = [(torch.tensor([2, 0]), torch.tensor([0, 1]))]
    expected_focal = focal_mask_loss(logits.expand(2, -1, -1), gt).sum()
    expected_dice = dice_loss(logits.expand(2, -1, -1), gt).sum()
    # Another worker holds 3 objects: num_boxes = (2 + 3) / 2.
    import updetr_d2.modeling.criterion as criterion_module

    monkeypatch.setattr(criterion_module.comm, "get_world_size", lambda: 2)
    monkeypatch.setattr(torch.distributed, "all_reduce", lambda t: t.add_(3))
    losses = _criterion()(outputs, targets, indices=indices)
    assert losses["loss_mask"].item() == pytest.approx(expected_focal.item() / 2.5, rel=1e-5)
    assert losses["loss_dice"].item() == pytest.approx(expected_dice.item() / 2.5, rel=1e-5)
    assert context.rows == 2  # masks only for the matched queries


def test_mask_loss_ignores_batch_padding_and_takes_polygons():
    torch.manual_seed(0)
    valid = torch.randn(3, 5)
    gt = torch.zeros(1, 3, 5, dtype=torch.bool)
    gt[0, :2, 1:4] = True
    polygons = PolygonMasks([[[1.0, 0.0, 4.0, 0.0, 4.0, 2.0, 1.0, 2.0]]])
    assert torch.equal(target_masks(polygons, torch.tensor([0]), (3, 5)), gt)
    losses = []
    for garbage, (H, W) in [(1e4, (3, 5)), (-1e4, (6, 9)), (7.0, (4, 6))]:
        canvas = torch.full((1, H, W), garbage)
        canvas[0, :3, :5] = valid
        context = FixedContext(canvas, [(3, 5)])
        outputs = {"pred_logits": torch.randn(1, 2, 7), "pred_boxes": torch.rand(1, 2, 4),
                   "mask_queries": torch.randn(1, 2, 8), "mask_context": context}
        targets = [{"labels": torch.tensor([0]), "boxes": torch.rand(1, 4), "masks": polygons}]
        losses.append(_criterion()(outputs, targets, indices=[(torch.tensor([1]), torch.tensor([0]))]))
    for other in losses[1:]:
        assert {k: v.item() for k, v in other.items()} == {k: v.item() for k, v in losses[0].items()}


def test_outputs_without_a_mask_context_have_no_mask_loss():
    # e.g. the denoising groups, cut off the matching queries by their loss route
    outputs = {"pred_logits": torch.randn(1, 2, 7), "pred_boxes": torch.rand(1, 2, 4), "mask_queries": torch.randn(1, 2, 8)}
    targets = [{"labels": torch.tensor([0]), "boxes": torch.rand(1, 4)}]
    assert _criterion()(outputs, targets) == {}


# --- training with the plug-in -------------------------------------------------------
def _step(model, cfg):
    optimizer = build_optimizer(cfg, model)
    model.train()
    with EventStorage():
        losses = model(batch())
    sum(losses.values()).backward()
    optimizer.step()
    return losses


def test_mask_stage_changes_only_the_mask_head():
    cfg = with_mask_head(tiny_detr_cfg(), freeze=True)
    torch.manual_seed(0)
    model = build_model(cfg)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    losses = _step(model, cfg)
    assert {"loss_mask", "loss_dice", "loss_ce", "loss_bbox"} <= set(losses)
    after = model.state_dict()
    head = [k for k in before if k.startswith("plugins.0.")]
    assert len(head) == 32  # 2 linear + 6 conv + 5 GroupNorm + 3 adapters, weight and bias each
    assert all(not torch.equal(before[k], after[k]) for k in head)
    assert all(torch.equal(before[k], after[k]) for k in before if k not in head)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {k for k in head}


def test_joint_training_changes_the_detector_too():
    cfg = with_mask_head(tiny_detr_cfg())
    torch.manual_seed(0)
    model = build_model(cfg)
    before = model.transformer.encoder.layers[0].linear1.weight.clone()
    losses = _step(model, cfg)
    assert all(torch.isfinite(v) for v in losses.values())
    assert not torch.equal(before, model.transformer.encoder.layers[0].linear1.weight)


# --- inference -----------------------------------------------------------------------
def _check_panoptic(result, height, width):
    image, segments = result["panoptic_seg"]
    assert image.shape == (height, width) and image.dtype == torch.int32
    ids = sorted(s["id"] for s in segments)
    assert ids == list(range(1, len(ids) + 1))
    assert set(image.unique().tolist()) - {0} == set(ids)
    for s in segments:
        assert s["isthing"] == (s["category_id"] in THINGS)
        assert s["area"] == int((image == s["id"]).sum())


@pytest.mark.parametrize("arch", ["Detr", "DeformableDetr"])
def test_inference_gives_panoptic_segmentation_and_instance_masks(arch):
    cfg = with_mask_head(tiny_detr_cfg() if arch == "Detr" else tiny_deformable_cfg())
    if arch == "DeformableDetr":
        cfg.MODEL.DEFORMABLE_DETR.IN_FEATURES = ["res3", "res4", "res5"]
    torch.manual_seed(0)
    model = build_model(cfg)
    _step(model, cfg)  # a training step: the losses run on this architecture too
    model.eval()
    with torch.no_grad():  # every query confident of one class: segments to check
        class_embed = model.heads.class_embed if arch == "Detr" else model.heads.class_embed[-1]
        class_embed.bias[1 if arch == "Detr" else 4] = 20.0
    inputs = batch()
    inputs[1]["height"], inputs[1]["width"] = 140, 200  # the original image was twice the size
    with torch.no_grad():
        results = model(inputs)
    for result, (h, w) in zip(results, [(96, 128), (140, 200)]):
        instances = result["instances"]
        assert instances.pred_masks.shape == (len(instances), h, w) and instances.pred_masks.dtype == torch.bool
        _check_panoptic(result, h, w)
        segments = result["panoptic_seg"][1]
        assert segments and all(s["category_id"] == (1 if arch == "Detr" else 4) for s in segments)
        if arch == "DeformableDetr":
            assert len(segments) == 1  # every query is sky: stuff queries merge into one segment


def test_no_query_above_the_threshold_gives_an_all_void_image():
    cfg = with_mask_head(tiny_detr_cfg())
    cfg.MODEL.PANOPTIC.OBJECT_THRESHOLD = 1.0
    cfg.MODEL.PANOPTIC.INSTANCE_MASKS_ON = False
    model = build_model(cfg).eval()
    with torch.no_grad():
        (result,) = model(batch()[:1])
    image, segments = result["panoptic_seg"]
    assert segments == [] and image.shape == (96, 128) and not image.any()
    assert not result["instances"].has("pred_masks")


def test_instance_masks_belong_to_their_detections():
    cfg = with_mask_head(tiny_detr_cfg())
    cfg.MODEL.PANOPTIC.PANOPTIC_ON = False
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    x = batch()[:1]
    with torch.no_grad():
        result = model(x)[0]
        state = model.run_phases(x)
    assert "panoptic_seg" not in result
    context = state.outputs["mask_context"]
    q = result["instances"].query_index
    logits = context.predict(state.outputs["mask_queries"][0, q], torch.zeros_like(q))
    up = F.interpolate(logits[None], scale_factor=4, mode="bilinear", align_corners=False)[0, :, :96, :128]
    assert torch.equal(result["instances"].pred_masks, up > 0)


def test_plugin_errors_name_the_option():
    cfg = with_mask_head(tiny_detr_cfg())
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res5"]
    with pytest.raises(ValueError, match="MODEL.PANOPTIC.IN_FEATURES"):
        build_model(cfg)
    cfg = with_mask_head(tiny_detr_cfg())
    cfg.MODEL.PANOPTIC.ATTENTION_STRIDE = 16
    with pytest.raises(ValueError, match="ATTENTION_STRIDE=16.*\\[32\\]"):
        build_model(cfg)


# --- configs -------------------------------------------------------------------------
PANOPTIC_CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "projects", "Panoptic", "configs")


@pytest.mark.parametrize("name", ["detr_effnet_lite0_demo_panoptic_box", "detr_effnet_lite0_demo_panoptic_mask",
                                  "deformable_detr_effnet_lite0_demo_panoptic_box",
                                  "deformable_detr_effnet_lite0_demo_panoptic_mask",
                                  "deformable_detr_effnet_lite0_demo_panoptic_box_from_updetr",
                                  "detr_r50_panoptic_mask"])
def test_yaml_and_lazy_configs_build_the_same_model(name):
    from detectron2.config import LazyConfig, get_cfg, instantiate
    from updetr_d2 import add_updetr_config

    cfg = get_cfg()
    add_updetr_config(cfg)
    cfg.merge_from_file(os.path.join(PANOPTIC_CONFIGS, name + ".yaml"))
    cfg.MODEL.DEVICE = "cpu"
    lazy = LazyConfig.load(os.path.join(PANOPTIC_CONFIGS, name + ".py"))
    lazy.model.backbone.backbone.pop("pretrained", None)  # no ImageNet weights needed to compare shapes
    if "effnet" in name:
        cfg.MODEL.EFFICIENTNET.PRETRAINED = False
    models = [build_model(cfg), instantiate(lazy.model)]
    shapes = [{k: tuple(v.shape) for k, v in m.state_dict().items()} for m in models]
    assert shapes[0] == shapes[1]
    trainable = [{n for n, p in m.named_parameters() if p.requires_grad} for m in models]
    assert trainable[0] == trainable[1]
    assert cfg.SOLVER.MAX_ITER == lazy.train.max_iter
    assert type(models[0]) is type(models[1])
    assert list(cfg.MODEL.WEIGHTS_SKIP) == list(lazy.train.get("init_checkpoint_skip", []))
    assert models[0].criterion.weight_dict == models[1].criterion.weight_dict
    if name.endswith("mask"):
        assert trainable[0] == {n for n in shapes[0] if n.startswith("plugins.0.")}  # the mask stage
        assert models[0].plugins[0].thing_classes == models[1].plugins[0].thing_classes
        assert len(models[0].plugins[0].thing_classes) == (4 if "demo" in name else 80)
        for key in ("object_threshold", "scale_attention_maps"):
            assert getattr(models[0].plugins[0], key) == getattr(models[1].plugins[0], key)
        assert models[0].plugins[0].scale_attention_maps == ("demo" in name)


def test_paper_size_shapes():
    """DETR-R50 at 800x1066 padded as the original (to the batch's largest image, not to a
    multiple of 32): masks [1, 100, 200, 267] at res2, attention [1, 100, 8, 25, 34]."""
    from detectron2.config import get_cfg
    from updetr_d2 import add_updetr_config

    cfg = get_cfg()
    add_updetr_config(cfg)
    cfg.merge_from_file(os.path.join(PANOPTIC_CONFIGS, "detr_r50_panoptic_mask.yaml"))
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.PANOPTIC.THING_CLASSES = list(range(80))
    cfg.MODEL.DETR.SIZE_DIVISIBILITY = 0
    model = build_model(cfg).eval()
    seen = {}
    model.plugins[0].bbox_attention.register_forward_hook(lambda m, i, o: seen.update(attention=o.shape))
    with torch.no_grad():
        state = model.run_phases([{"image": torch.zeros(3, 800, 1066)}])
        queries = state.outputs["mask_queries"][0]
        masks = state.outputs["mask_context"].predict(queries, torch.zeros(len(queries), dtype=torch.long))
    assert masks[None].shape == (1, 100, 200, 267)
    assert (1, *seen["attention"]) == (1, 100, 8, 25, 34)
