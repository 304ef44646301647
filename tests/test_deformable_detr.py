"""Deformable DETR and DN-Deformable-DETR: yaml/lazy parity, the training losses of every
variant, inference, denoising switched on and off on the same weights, no leakage from
the denoising groups into the matching queries, zero-noise reconstruction, and the
deformable transformer's invariance to batch padding."""
import os

import pytest
import torch

import updetr_d2  # noqa: F401
from detectron2.config import LazyConfig, get_cfg, instantiate
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage
from updetr_d2 import add_updetr_config
from updetr_d2.layers.deformable_transformer import DeformableTransformer
from updetr_d2.methods.dn import DenoisingQueries
from updetr_d2.solver import build_optimizer, detr_param_groups

from helpers import fake_input

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFORMABLE = os.path.join(ROOT, "projects", "DeformableDETR", "configs")
DN = os.path.join(ROOT, "projects", "DNDETR", "configs")


def tiny_cfg(variant="plain", **dn):
    """A Deformable DETR that trains in seconds: ResNet-18 GN, 3 levels, 32 wide."""
    cfg = get_cfg()
    add_updetr_config(cfg)
    cfg.merge_from_file(os.path.join(DEFORMABLE, "deformable_detr_R18_demo.yaml"))
    d, dd = cfg.MODEL.DETR, cfg.MODEL.DEFORMABLE_DETR
    d.HIDDEN_DIM, d.NHEADS, d.DIM_FEEDFORWARD = 32, 4, 64
    d.ENC_LAYERS, d.DEC_LAYERS, d.NUM_OBJECT_QUERIES, d.DROPOUT = 1, 2, 10, 0.0
    dd.WITH_BOX_REFINE = variant in ("refine", "two_stage", "anchor", "dn")
    dd.TWO_STAGE = variant == "two_stage"
    dd.ANCHOR_QUERIES = variant in ("anchor", "dn")
    cfg.MODEL.DN.ENABLED = variant == "dn"
    for key, value in dn.items():
        cfg.MODEL.DN[key] = value
    cfg.SOLVER.BASE_LR = 1e-3
    cfg.MODEL.DEVICE = "cpu"
    return cfg


def batch_of_three():
    return [fake_input(96, 128, [[10, 10, 50, 60], [60, 20, 120, 90]], [0, 3], seed=1),
            fake_input(128, 96, [[5, 5, 40, 40]], [2], seed=2),
            fake_input(80, 80, [], [], seed=3)]  # an image without objects


def shapes(model):
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


@pytest.mark.parametrize("name", ["deformable_detr_r50", "dn_deformable_detr_r50"])
def test_yaml_and_lazy_build_the_same_model(name):
    folder = DN if name.startswith("dn_") else DEFORMABLE
    cfg = get_cfg()
    add_updetr_config(cfg)
    cfg.merge_from_file(os.path.join(folder, name + ".yaml"))
    cfg.MODEL.DEVICE = "cpu"
    from_yaml = build_model(cfg)
    from_lazy = instantiate(LazyConfig.load(os.path.join(folder, name + ".py")).model)
    assert shapes(from_yaml) == shapes(from_lazy)
    # Deformable DETR-R50 has 40M parameters (the paper's Table 1: 40M).
    count = sum(p.numel() for p in from_yaml.parameters())
    assert 39.5e6 < count < 41.5e6
    assert type(from_yaml.query_generator) is type(from_lazy.query_generator)
    for model in (from_yaml, from_lazy):
        assert model.criterion.matcher.class_cost_type == "focal"
        assert model.criterion.weight_dict == {"loss_focal": 2.0, "loss_bbox": 5.0, "loss_giou": 2.0}
        assert model.transformer.num_feature_levels == 4 and len(model.input_proj) == 4


@pytest.mark.parametrize("variant", ["plain", "refine", "two_stage", "anchor", "dn"])
def test_training_step_losses_and_gradients(variant):
    torch.manual_seed(0)
    model = build_model(tiny_cfg(variant)).train()
    with EventStorage():
        losses = model(batch_of_three())
    base = {"loss_focal", "loss_bbox", "loss_giou"}
    expected = base | {k + "_0" for k in base}
    if variant == "two_stage":
        expected |= {k + "_enc" for k in base}
    if variant == "dn":
        expected |= {k + "_dn" for k in base} | {k + "_dn_0" for k in base}
    assert set(losses) == expected
    assert all(torch.isfinite(v) and v.dim() == 0 for v in losses.values())
    sum(losses.values()).backward()
    grads = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    # (position and level embeddings reach the loss only through the offset and weight
    # projections, which start at zero: no gradient for them in the very first step)
    for part in ("sampling_offsets", "attention_weights", "value_proj", "input_proj", "backbone."):
        assert any(part in n for n in grads), part
    if variant == "dn":
        assert "query_generator.label_enc.weight" in grads  # the denoising content is learned
    if variant == "two_stage":
        assert any(n.startswith("transformer.enc_output") for n in grads)
    if variant in ("refine", "two_stage", "anchor", "dn"):
        assert len({n.split(".")[2] for n in grads if n.startswith("heads.bbox_embed.")}) >= 2  # per layer


def test_inference_keeps_topk_pairs_in_input_coordinates():
    torch.manual_seed(0)
    model = build_model(tiny_cfg("refine")).eval()
    inputs = [{"image": torch.rand(3, 96, 128) * 255, "height": 192, "width": 256}]
    with torch.no_grad():
        inst = model(inputs)[0]["instances"]
    assert len(inst) == 40  # 10 queries x 4 classes, fewer than TEST_TOPK=100
    assert inst.image_size == (192, 256)
    box = inst.pred_boxes.tensor
    assert (box[:, 0::2] >= 0).all() and (box[:, 0::2] <= 256).all() and (box[:, 1::2] <= 192).all()
    assert torch.all(inst.scores[:-1] >= inst.scores[1:])  # sorted by score
    # every (query, class) pair once: the probabilities of the model's sigmoid logits
    assert set(inst.pred_classes.tolist()) == {0, 1, 2, 3}


def test_dn_is_training_only_same_weights_same_inference():
    """Denoising adds only a label embedding; with DN switched off the same weights give
    exactly the same detections."""
    torch.manual_seed(0)
    with_dn = build_model(tiny_cfg("dn")).eval()
    without = build_model(tiny_cfg("anchor")).eval()
    missing, unexpected = without.load_state_dict(with_dn.state_dict(), strict=False)
    assert missing == [] and unexpected == []  # anchor queries renamed, label embedding left out
    inputs = [{"image": torch.rand(3, 96, 128) * 255, "height": 96, "width": 128}]
    with torch.no_grad():
        a, b = with_dn(inputs)[0]["instances"], without(inputs)[0]["instances"]
    assert torch.equal(a.pred_boxes.tensor, b.pred_boxes.tensor) and torch.equal(a.scores, b.scores)
    # In training the DN part is there: more decoder queries than the matching ones.
    with_dn.train()
    state = with_dn.run_phases(batch_of_three())
    outputs, groups = state.outputs, state.queries.meta["dn"]
    assert groups.num_queries == 5 * 2  # 5 groups x the batch's largest object count
    assert outputs["pred_logits"].shape[1] == 10 + 10


def test_matching_queries_do_not_see_denoising_queries():
    """With dropout off, the matching part's predictions in training are the same with
    and without the denoising groups: the ground truth in them does not leak."""
    torch.manual_seed(0)
    model = build_model(tiny_cfg("dn")).train()
    model.backbone.eval()  # GroupNorm has no batch statistics; be explicit anyway
    batch = batch_of_three()
    with torch.no_grad():
        state = model.run_phases(batch)
        _, matching = state.queries.meta["dn"].split(state.outputs)
        model.query_generator.num_groups = 0  # the same model, denoising off
        plain_state = model.run_phases(batch)
        plain = plain_state.outputs
    assert "dn" not in plain_state.queries.meta
    for key in ("pred_logits", "pred_boxes"):
        torch.testing.assert_close(matching[key], plain[key], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(matching["aux_outputs"][0][key], plain["aux_outputs"][0][key],
                                   rtol=1e-5, atol=1e-5)


def test_zero_noise_denoising_queries_decode_to_the_ground_truth():
    """Without noise the denoising queries start on the ground truth boxes with the true
    labels; a short overfit makes them reproduce it."""
    torch.manual_seed(0)
    cfg = tiny_cfg("dn", LABEL_NOISE_PROB=0.0, BOX_NOISE_SCALE=0.0, NUM_GROUPS=2)
    model = build_model(cfg).train()
    optimizer = build_optimizer(cfg, model)
    batch = batch_of_three()[:2]
    with EventStorage():
        for _ in range(40):
            losses = model(batch)
            optimizer.zero_grad()
            sum(losses.values()).backward()
            optimizer.step()
        state = model.run_phases(batch)
    outputs, groups = state.outputs, state.queries.meta["dn"]
    dn, _ = groups.split(outputs)
    targets = state.targets
    for b, (slots, gt) in enumerate(groups.indices()):
        boxes = dn["pred_boxes"][b, slots]
        assert (boxes - targets[b]["boxes"][gt]).abs().max() < 0.03
        assert torch.equal(dn["pred_logits"][b, slots].argmax(-1), targets[b]["labels"][gt])


def test_dn_needs_anchor_queries_and_not_two_stage():
    cfg = tiny_cfg("refine")
    cfg.MODEL.DN.ENABLED = True
    with pytest.raises(ValueError, match="MODEL.DEFORMABLE_DETR.ANCHOR_QUERIES"):
        build_model(cfg)
    cfg = tiny_cfg("two_stage")
    cfg.MODEL.DEFORMABLE_DETR.ANCHOR_QUERIES = True
    with pytest.raises(ValueError, match="TWO_STAGE"):
        build_model(cfg)
    cfg = tiny_cfg()
    cfg.MODEL.DEFORMABLE_DETR.NUM_FEATURE_LEVELS = 2
    with pytest.raises(ValueError, match="NUM_FEATURE_LEVELS"):
        build_model(cfg)


def test_sampling_offsets_train_at_the_offset_learning_rate():
    model = build_model(tiny_cfg())
    groups = detr_param_groups(model, base_lr=1.0, weight_decay=0.0, backbone_multiplier=0.5, offset_multiplier=0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    by_lr = {g["lr"]: {names[id(p)] for p in g["params"]} for g in groups}
    assert set(by_lr) == {1.0, 0.5, 0.1}
    assert by_lr[0.1] and all("sampling_offsets" in n or "reference_points" in n for n in by_lr[0.1])
    assert "query_generator.reference_points.weight" in by_lr[0.1]
    assert all(n.startswith("backbone.") for n in by_lr[0.5])
    assert sum(len(v) for v in by_lr.values()) == len(list(model.parameters()))


def test_transformer_output_does_not_depend_on_batch_padding():
    """An image's encoder memory and decoder output are the same alone and padded into a
    larger batch: reference points and sampling follow the valid area only."""
    torch.manual_seed(0)
    d = 16
    transformer = DeformableTransformer(d_model=d, nhead=2, num_encoder_layers=2, num_decoder_layers=2,
                                        dim_feedforward=32, dropout=0.0, num_feature_levels=2).eval()
    sizes = [(8, 10), (4, 5)]  # valid sizes of the image's two levels
    padded = [(11, 13), (6, 7)]
    srcs = [torch.randn(1, d, h, w) for h, w in sizes]
    pos = [torch.randn(1, d, h, w) for h, w in sizes]

    def pad(x, size, fill):
        out = torch.full((2, d, *size), fill)
        out[1] = torch.randn(d, *size)  # another image, unpadded
        out[0, :, : x.shape[-2], : x.shape[-1]] = x[0]
        return out

    big_srcs = [pad(s, p, 7.0) for s, p in zip(srcs, padded)]  # garbage in the padding
    big_pos = [pad(s, p, -3.0) for s, p in zip(pos, padded)]
    masks = [torch.zeros(1, h, w, dtype=torch.bool) for h, w in sizes]
    big_masks = []
    for (h, w), (ph, pw) in zip(sizes, padded):
        m = torch.ones(2, ph, pw, dtype=torch.bool)
        m[0, :h, :w] = False
        m[1] = False
        big_masks.append(m)
    tgt, ref = torch.randn(1, 5, d), torch.rand(1, 5, 2)
    query_pos = torch.randn(1, 5, d)
    with torch.no_grad():
        alone = transformer.encode(srcs, masks, pos)
        batched = transformer.encode(big_srcs, big_masks, big_pos)
        hs_alone, _ = transformer.decode(alone, tgt, ref, query_pos=query_pos)
        hs_batched, _ = transformer.decode(batched, tgt.expand(2, -1, -1), ref.expand(2, -1, -1),
                                           query_pos=query_pos.expand(2, -1, -1))
    start = 0
    for (h, w), (ph, pw) in zip(sizes, padded):
        level = batched.memory[0, start: start + ph * pw].view(ph, pw, d)[:h, :w].reshape(-1, d)
        own = alone.memory[0, sum(a * b for a, b in sizes[: sizes.index((h, w))]):][: h * w]
        torch.testing.assert_close(level, own, rtol=1e-4, atol=1e-4)
        start += ph * pw
    torch.testing.assert_close(hs_batched[:, 0], hs_alone[:, 0], rtol=1e-4, atol=1e-4)


def test_two_stage_never_picks_padding_or_border_proposals():
    torch.manual_seed(0)
    model = build_model(tiny_cfg("two_stage")).eval()
    inputs = [{"image": torch.rand(3, 64, 64) * 255}, {"image": torch.rand(3, 128, 160) * 255}]
    with torch.no_grad():
        encoded = model.run_phases(inputs).memory
        _, proposals, usable = model.transformer.encoder_proposals(encoded)
        assert usable[0].sum() < usable[1].sum()  # the small image's padding is unusable
        assert torch.isinf(proposals[~usable]).all() and torch.isfinite(proposals[usable]).all()
        # force unusable positions to score highest: still not chosen
        head = model.heads.class_embed[-1]
        query_pos, tgt, reference, enc = model.transformer.two_stage_proposals(
            encoded, lambda m: head(m) + 100.0 * (~usable)[..., None], model.heads.bbox_embed[-1], 10)
    assert reference.shape == (2, 10, 4) and torch.isfinite(reference).all()
    assert (reference > 0).all() and (reference < 1).all()
    assert enc["pred_logits"].shape[:2] == enc["pred_boxes"].shape[:2] == usable.shape
    assert isinstance(build_model(tiny_cfg("dn")).query_generator, DenoisingQueries)
