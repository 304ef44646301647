"""DINO (Zhang et al., ICLR 2023) from the project's parts: contrastive denoising, mixed
query selection, look-forward-twice; its configs build the same model on both routes."""
import os

import pytest
import torch
from torch.nn import functional as F

import updetr_d2  # noqa: F401  (compat fixes before detectron2 submodules)
from detectron2.config import LazyConfig, get_cfg, instantiate
from detectron2.modeling import build_model
from updetr_d2 import add_updetr_config
from updetr_d2.methods.dn import DenoisingQueries
from updetr_d2.methods.dn.noise import apply_contrastive_box_noise
from updetr_d2.modeling.criterion import BoxL1GIoU, LabelFocal, SetCriterion
from updetr_d2.modeling.matcher import HungarianMatcher
from updetr_d2.modeling.queries import AnchorQueries, ProposalQueries

from helpers import dn_group_mask, fake_input
from test_denoising import _targets as targets_of  # boxes well inside the image: noise never clamps
from test_deformable_detr import batch_of_three

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DINO = os.path.join(ROOT, "projects", "DINO", "configs")
C, D, NHEAD, N = 4, 16, 2, 3


def cdn(num_groups=2, num_dn_queries=0, box_noise_scale=0.4, label_noise_prob=0.0, mask_padding=True):
    torch.manual_seed(0)
    return DenoisingQueries(AnchorQueries(N, D, with_indicator=False), C, D, NHEAD, num_groups=num_groups,
                            label_noise_prob=label_noise_prob, box_noise_scale=box_noise_scale,
                            mask_padding=mask_padding, contrastive=True, num_dn_queries=num_dn_queries,
                            with_indicator=False).train()


def corners(boxes):
    return torch.cat([boxes[..., :2] - boxes[..., 2:] / 2, boxes[..., :2] + boxes[..., 2:] / 2], -1)


# ------------------------------------------------------------------ contrastive noise
def test_contrastive_noise_puts_positives_inside_and_negatives_between_the_squares():
    torch.manual_seed(0)
    boxes = torch.tensor([[0.5, 0.5, 0.2, 0.3]]).repeat(4000, 1)
    negative = torch.arange(4000) % 2 == 1
    noised = apply_contrastive_box_noise(boxes, 0.4, negative)
    # Each corner coordinate's move in units of half the side it belongs to.
    half = torch.tensor([0.1, 0.15, 0.1, 0.15])
    move = ((corners(noised) - corners(boxes)) / half).abs()
    assert move[~negative].max() < 0.4 and move[~negative].min() >= 0
    assert move[negative].min() >= 0.4 - 1e-5 and move[negative].max() < 0.8
    # Both signs, spread over the range.
    signed = (corners(noised) - corners(boxes)) / half
    assert (signed[negative] > 0).any() and (signed[negative] < 0).any()
    assert move[~negative].mean() == pytest.approx(0.2, abs=0.01)
    assert move[negative].mean() == pytest.approx(0.6, abs=0.01)


def test_contrastive_noise_keeps_boxes_in_the_image_with_positive_sides():
    torch.manual_seed(1)
    boxes = torch.rand(500, 4) * torch.tensor([1, 1, 0.5, 0.5]) + torch.tensor([0, 0, 0.01, 0.01])
    negative = torch.rand(500) < 0.5
    noised = apply_contrastive_box_noise(boxes, 1.0, negative)  # Co-DINO's scale: corners may cross
    c = corners(noised)
    assert (noised[:, 2:] >= 0).all() and (c >= -1e-6).all() and (c <= 1 + 1e-6).all()
    assert torch.equal(apply_contrastive_box_noise(boxes, 0.0, negative), corners_back(corners(boxes).clamp(0, 1)))


def corners_back(c):
    return torch.cat([(c[:, :2] + c[:, 2:]) / 2, c[:, 2:] - c[:, :2]], -1)


# ------------------------------------------------------------------ contrastive groups
def test_groups_hold_positives_then_negatives_and_only_positives_are_assigned():
    targets = targets_of([2, 1])
    bundle = cdn(num_groups=2)(2, targets=targets)
    groups = bundle.meta["dn"]
    M = 2
    assert groups.contrastive and groups.group_size == 2 * M and groups.num_queries == 2 * 2 * M
    # Image 0 (2 objects) fills every slot, image 1 (1 object) slot 0 of each half.
    assert groups.valid[0].all()
    assert groups.valid[1].tolist() == [True, False, True, False] * 2
    slots, tgt = groups.indices()[0]
    assert slots.tolist() == [0, 1, 4, 5] and tgt.tolist() == [0, 1, 0, 1]
    slots, tgt = groups.indices()[1]
    assert slots.tolist() == [0, 4] and tgt.tolist() == [0, 0]
    # Positive anchors are near their object, negatives farther, in every group.
    gt = targets[0]["boxes"]
    half = torch.cat([gt[:, 2:], gt[:, 2:]], -1) / 2
    for g in range(2):
        pos = bundle.reference_points[0, g * 4:g * 4 + 2]
        neg = bundle.reference_points[0, g * 4 + 2:g * 4 + 4]
        assert (((corners(pos) - corners(gt)) / half).abs() < 0.4 + 1e-5).all()
        assert (((corners(neg) - corners(gt)) / half).abs() >= 0.4 - 1e-5).all()
    # DN content: the label embedding of the (here un-noised) labels, no indicator.
    dn = cdn(num_groups=2)
    assert torch.equal(bundle.tgt[0, 2], dn.label_enc(targets[0]["labels"])[0])


def test_masks_keep_groups_and_matching_queries_apart_without_a_full_row():
    targets = targets_of([2, 2])
    bundle = cdn(num_groups=3)(2, targets=targets)
    mask = bundle.self_attn_mask
    assert torch.equal(mask, dn_group_mask(3, 4, N))  # positives and negatives of a group see each other
    assert not mask.all(-1).any()
    # With padding (image 1 has fewer objects): per-image masks, still no fully masked row.
    bundle = cdn(num_groups=3)(2, targets=targets_of([2, 1]))
    blocked = bundle.self_attn_mask.view(2, NHEAD, *bundle.self_attn_mask.shape[-2:])
    assert not blocked.all(-1).any()
    valid = bundle.meta["dn"].valid[1]
    image1 = blocked[1, 0]
    for p in (~valid).nonzero().flatten().tolist():  # padding hidden from every other query
        others = torch.arange(image1.shape[0]) != p
        assert image1[others, p].all()


@pytest.mark.parametrize("most,expected", [(1, 100), (2, 50), (3, 33), (150, 1)])
def test_group_count_follows_the_batch(most, expected):
    bundle = cdn(num_dn_queries=200)(1, targets=targets_of([most]))
    assert bundle.meta["dn"].num_groups == expected
    assert bundle.meta["dn"].num_queries == expected * 2 * most


def test_negatives_learn_no_object_and_positives_reconstruct_their_boxes():
    targets = targets_of([2, 1])
    bundle = cdn(num_groups=2)(2, targets=targets)
    groups = bundle.meta["dn"]
    T = groups.num_queries
    criterion = SetCriterion(HungarianMatcher(cost_class=2.0, class_cost_type="focal"), [LabelFocal(C), BoxL1GIoU()],
                             {"loss_focal": 1.0, "loss_bbox": 5.0, "loss_giou": 2.0}, aux_loss=False)

    def losses(logits, boxes):
        own, _ = groups.split({"pred_logits": logits, "pred_boxes": boxes})
        return groups.losses(criterion, own, targets)

    # Positives predict their object (class and box), negatives background and junk boxes.
    logits = torch.full((2, T, C), -20.0)
    boxes = torch.full((2, T, 4), 0.3)
    for b, (slots, tgt) in enumerate(groups.indices()):
        logits[b, slots, targets[b]["labels"][tgt]] = 20.0
        boxes[b, slots] = targets[b]["boxes"][tgt]
    perfect = losses(logits, boxes)
    assert all(v.abs() < 1e-4 for v in perfect.values()), perfect
    # A negative slot that claims its object's class is penalised ...
    claims = logits.clone()
    claims[0, 2, targets[0]["labels"][0]] = 20.0
    assert losses(claims, boxes)["loss_focal_dn"] > 1.0
    # ... a negative's box is free, a positive's is not; a padding slot counts for nothing.
    moved = boxes.clone()
    moved[0, 2] = torch.tensor([0.9, 0.9, 0.1, 0.1])
    moved[1, 1] = torch.tensor([0.9, 0.9, 0.1, 0.1])  # image 1's padding slot
    assert losses(logits, moved)["loss_bbox_dn"] < 1e-4
    moved[0, 0] = torch.tensor([0.9, 0.9, 0.1, 0.1])
    assert losses(logits, moved)["loss_bbox_dn"] > 0.1
    padded = logits.clone()
    padded[1, 1] = 20.0
    assert losses(padded, boxes)["loss_focal_dn"] < 1e-4


# ------------------------------------------------------------------ the model
def dino_cfg(**dd):
    cfg = get_cfg()
    add_updetr_config(cfg)
    cfg.merge_from_file(os.path.join(DINO, "dino_R18_demo.yaml"))
    d = cfg.MODEL.DETR
    d.HIDDEN_DIM, d.NHEADS, d.DIM_FEEDFORWARD, d.ENC_LAYERS, d.DEC_LAYERS, d.NUM_OBJECT_QUERIES = 32, 4, 64, 1, 2, 10
    for key, value in dd.items():
        cfg.MODEL.DEFORMABLE_DETR[key] = value
    cfg.MODEL.DEVICE = "cpu"
    return cfg


def test_yaml_and_lazy_configs_build_the_same_model():
    shapes = lambda m: {k: tuple(v.shape) for k, v in m.state_dict().items()}  # noqa: E731
    for name in ("dino_R18_demo", "dino_r50"):
        cfg = get_cfg()
        add_updetr_config(cfg)
        cfg.merge_from_file(os.path.join(DINO, name + ".yaml"))
        cfg.MODEL.DEVICE = "cpu"
        yaml_model = build_model(cfg)
        lazy = LazyConfig.load(os.path.join(DINO, name + ".py"))
        lazy_model = instantiate(lazy.model)
        assert shapes(yaml_model) == shapes(lazy_model), name
        for m in (yaml_model, lazy_model):
            t = m.transformer
            assert isinstance(m.query_generator, DenoisingQueries) and isinstance(m.query_generator.base, ProposalQueries)
            assert m.query_generator.contrastive and m.query_generator.num_dn_queries == 200
            assert t.decoder.look_forward_twice and t.decoder.query_scale is None and t.class_aware_proposals
            assert not hasattr(t, "pos_trans") and m.position_embedding.temperature == 20
            assert m.criterion.matcher.cost_class == 2.0 and m.criterion.weight_dict["loss_focal"] == 1.0
        assert yaml_model.test_topk == lazy_model.test_topk
    assert yaml_model.num_queries == 900 and yaml_model.test_topk == 300


def test_mixed_query_selection_takes_the_top_proposals_and_learned_content():
    torch.manual_seed(0)
    model = build_model(dino_cfg()).eval()
    # Two sizes: the smaller image's padded positions exist and must never be picked.
    inputs = [fake_input(96, 128, [[10, 10, 50, 60]], [0], seed=1), fake_input(64, 80, [[5, 5, 40, 40]], [2], seed=2)]
    seen = {}
    original = model.query_generator.forward
    model.query_generator.forward = lambda *a, **k: seen.setdefault("bundle", original(*a, **k))
    with torch.no_grad():
        model(inputs)
    bundle = seen["bundle"]
    # The reference: score every encoder position by its best class, mask unusable ones, top-k.
    memory = seen_memory(model, inputs)
    tr = model.transformer
    with torch.no_grad():
        projected, proposals, usable = tr.encoder_proposals(memory)
        logits = model.heads.class_embed[-1](projected)
        coords = model.heads.bbox_embed[-1](projected) + proposals
        scores = logits.max(-1).values.masked_fill(~usable, float("-inf"))
        top = scores.topk(10, dim=1).indices
        expected = coords.gather(1, top[..., None].expand(-1, -1, 4)).sigmoid()
    torch.testing.assert_close(bundle.reference_points, expected)
    assert usable.gather(1, top).all()  # never a padded or border position
    assert not usable[1].all()  # the smaller image does have unusable positions
    assert torch.equal(bundle.tgt[0], model.query_generator.base.tgt_embed.weight)
    assert torch.equal(bundle.tgt[1], model.query_generator.base.tgt_embed.weight)
    assert bundle.query_pos is None  # the anchor decoder derives it from the boxes


def seen_memory(model, inputs):
    """The encoder memory of ``inputs`` (the model's own encode phase)."""
    captured = {}
    original = model.encode

    def encode(state):
        captured["memory"] = original(state)
        return captured["memory"]

    model.encode = encode
    with torch.no_grad():
        model(inputs)
    del model.encode
    return captured["memory"]


@pytest.mark.parametrize("look_forward_twice", [True, False])
def test_look_forward_twice_trains_the_previous_layer_box_only(look_forward_twice):
    """Two decoder layers: layer 1's boxes are relative to layer 0's refined box. With
    look-forward-twice their loss reaches layer 0's box head through that box (and no
    further: layer 1's content, which starts from the detached box, does not); without
    it, nothing of layer 0's box head."""
    torch.manual_seed(0)
    model = build_model(dino_cfg(LOOK_FORWARD_TWICE=look_forward_twice)).train()
    model.query_generator.num_groups = 0  # matching queries only
    model.query_generator.num_dn_queries = 0
    captured = {}
    predict = model.predict

    def spy(state, decoded, queries):
        captured["decoded"] = decoded
        out = predict(state, decoded, queries)
        captured["out"] = out
        return out

    model.predict = spy
    model(batch_of_three())
    head0 = list(model.heads.bbox_embed[0].parameters())
    layer1_boxes = captured["out"]["pred_boxes"]  # the last (second) layer
    grads = torch.autograd.grad(layer1_boxes.sum(), head0, retain_graph=True, allow_unused=True)
    reached = any(g is not None and g.abs().sum() > 0 for g in grads)
    assert reached == look_forward_twice
    # Layer 1's content never depends on layer 0's box head (its reference input is detached).
    hs1 = captured["decoded"].hs[1]
    grads = torch.autograd.grad(hs1.sum(), head0, retain_graph=True, allow_unused=True)
    assert all(g is None or g.abs().sum() == 0 for g in grads)
    # Layer 0's boxes are relative to the selected proposals, which are detached.
    encoder_head = list(model.heads.bbox_embed[-1].parameters())
    aux0 = captured["out"]["aux_outputs"][0]["pred_boxes"]
    grads = torch.autograd.grad(aux0.sum(), encoder_head, allow_unused=True)
    assert all(g is None or g.abs().sum() == 0 for g in grads)


def test_look_forward_twice_does_not_change_the_forward_pass():
    torch.manual_seed(0)
    a = build_model(dino_cfg(LOOK_FORWARD_TWICE=True)).eval()
    b = build_model(dino_cfg(LOOK_FORWARD_TWICE=False)).eval()
    b.load_state_dict(a.state_dict())
    with torch.no_grad():
        out_a, out_b = a(batch_of_three()), b(batch_of_three())
    for x, y in zip(out_a, out_b):
        torch.testing.assert_close(x["instances"].pred_boxes.tensor, y["instances"].pred_boxes.tensor)
        torch.testing.assert_close(x["instances"].scores, y["instances"].scores)


def test_training_step_has_the_encoder_denoising_and_matching_losses():
    torch.manual_seed(0)
    model = build_model(dino_cfg()).train()
    losses = model(batch_of_three())
    for key in ("loss_focal", "loss_bbox_0", "loss_focal_dn", "loss_bbox_dn_0", "loss_focal_enc", "loss_giou_enc"):
        assert key in losses and torch.isfinite(losses[key])
    sum(losses.values()).backward()
    assert model.query_generator.base.tgt_embed.weight.grad.abs().sum() > 0
    assert model.query_generator.label_enc.weight.grad.abs().sum() > 0


def test_class_aware_proposals_are_supervised_with_the_classes():
    """DINO's encoder loss uses the real labels; Deformable DETR's makes every object class 0."""
    from updetr_d2.modeling.meta_arch.deformable_detr import EncoderProposalRoute

    criterion = SetCriterion(HungarianMatcher(cost_class=2.0, class_cost_type="focal"), [LabelFocal(C), BoxL1GIoU()],
                             {"loss_focal": 1.0, "loss_bbox": 5.0, "loss_giou": 2.0}, aux_loss=False)
    targets = [{"labels": torch.tensor([3]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2]])}]
    logits = torch.full((1, 5, C), -10.0)
    logits[0, 0, 3] = 10.0
    enc = {"pred_logits": logits, "pred_boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2]]).repeat(1, 5, 1)}
    aware = EncoderProposalRoute(enc, class_aware=True).losses(criterion, enc, targets)
    agnostic = EncoderProposalRoute(enc, class_aware=False).losses(criterion, enc, targets)
    assert aware["loss_focal_enc"] < 1e-3 < agnostic["loss_focal_enc"]
    assert F.sigmoid(logits[0, 0, 3]) > 0.99
