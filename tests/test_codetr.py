"""Co-DETR on Deformable DETR: positive-query selection (caps, padding, targets), the
encoder pyramid, loss weights, independence of the auxiliary passes from the main one,
and inference that is exactly the base detector's (same outputs, same FLOPs)."""
import os

import pytest
import torch
from fvcore.nn import FlopCountAnalysis

import updetr_d2  # noqa: F401
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage
from updetr_d2 import add_updetr_config
from updetr_d2.methods.codetr.aux_heads import PositiveSamples
from updetr_d2.methods.codetr.positive_queries import PositiveQueries, select_positive_queries
from updetr_d2.modeling.criterion import BoxL1GIoU, SetCriterion
from updetr_d2.modeling.matcher import HungarianMatcher

from helpers import fake_input

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CODETR = os.path.join(ROOT, "projects", "CoDETR", "configs")
C = 4  # classes


def samples_with_positives(counts, total=600, feature_dim=3):
    """Per image ``total`` candidates of which the first counts[b] are positives (class 1)."""
    boxes, labels, targets, feats = [], [], [], []
    for b, n in enumerate(counts):
        lab = torch.full((total,), C)
        lab[:n] = 1
        xy = torch.rand(total, 2, generator=torch.Generator().manual_seed(b)) * 100
        box = torch.cat([xy, xy + 20], 1)
        boxes.append(box)
        labels.append(lab)
        targets.append(box + 1)
        feats.append(torch.arange(total, dtype=torch.float32)[:, None].expand(-1, feature_dim).clone())
    return PositiveSamples(boxes, labels, targets, feats)


@pytest.mark.parametrize("counts, expected_q", [([3, 40], 40), ([2, 1], 9), ([500, 10], 300), ([0, 0], 9)])
def test_query_count_is_the_largest_positive_count_clamped(counts, expected_q):
    samples = samples_with_positives(counts)
    selected = select_positive_queries(samples, [(128, 128)] * len(counts), C, 9, 300,
                                       generator=torch.Generator().manual_seed(0))
    assert selected.num_queries == expected_q
    for b, n in enumerate(counts):
        kept = min(n, expected_q)
        assert selected.positive[b].sum() == kept and selected.positive[b, :kept].all()
        assert (selected.labels[b, :kept] == 1).all() and (selected.labels[b, kept:] == C).all()
        assert selected.valid[b].all()  # filled up with negatives: no padding needed
        # the features travel with their candidates: positives are the first n candidates
        assert (selected.features[b, :kept, 0] < n).all() and (selected.features[b, kept:, 0] >= n).all()
    if counts == [500, 10]:  # a random subset of image 0's positives, without repeats
        chosen = selected.features[0, :, 0]
        assert len(set(chosen.tolist())) == 300 and chosen.max() > 300


def test_too_few_candidates_leave_hidden_padding_slots():
    """Image 0 has only 5 candidates (2 positive) where 9 queries are needed: 4 padding
    slots, hidden from every query and from the loss."""
    small, large = samples_with_positives([2], total=5), samples_with_positives([3], total=20)
    samples = PositiveSamples(small.boxes + large.boxes, small.labels + large.labels,
                              small.target_boxes + large.target_boxes, small.features + large.features)
    selected = select_positive_queries(samples, [(128, 128)] * 2, C, 9, 300)
    assert selected.num_queries == 9
    assert selected.valid.sum(1).tolist() == [5, 9]
    assert selected.positive.sum(1).tolist() == [2, 3]
    bundle = PositiveQueries(1, 8, 3)(0, selected, num_heads=2)
    mask = bundle.self_attn_mask  # [B * heads, Q, Q], True = blocked
    assert mask.shape == (2 * 2, 9, 9)
    off_diagonal = ~torch.eye(9, dtype=torch.bool)
    assert mask[0][:, 5:][off_diagonal[:, 5:]].all() and not mask[0][:, :5].any()
    assert not mask[2].any()  # image 1 has no padding


def test_hand_case_reference_and_target_boxes_and_zero_loss():
    """One GT (0,0,100,100) in a 200x200 image, one positive anchor (10,10,90,90)."""
    samples = PositiveSamples([torch.tensor([[10.0, 10, 90, 90]])], [torch.tensor([2])],
                              [torch.tensor([[0.0, 0, 100, 100]])], [torch.zeros(1, 3)])
    selected = select_positive_queries(samples, [(200, 200)], C, min_queries=1)
    torch.testing.assert_close(selected.reference[0, 0], torch.tensor([0.25, 0.25, 0.4, 0.4]))
    torch.testing.assert_close(selected.target_boxes[0, 0], torch.tensor([0.25, 0.25, 0.5, 0.5]))
    targets, indices = selected.targets_and_indices()
    criterion = SetCriterion(HungarianMatcher(), [BoxL1GIoU()], {"loss_bbox": 5.0, "loss_giou": 2.0}, aux_loss=False)
    outputs = {"pred_logits": torch.zeros(1, 1, C), "pred_boxes": selected.target_boxes.clone()}
    losses = criterion(outputs, targets, indices=indices, tag="_co_atss")
    assert set(losses) == {"loss_bbox_co_atss", "loss_giou_co_atss"}
    assert losses["loss_bbox_co_atss"] == 0 and losses["loss_giou_co_atss"].abs() < 1e-6


# --- the meta-architecture ------------------------------------------------------------
class Detections(torch.nn.Module):
    """A detector as a function of one 96x128 image tensor (fvcore traces tensors, not the
    dict inputs): its boxes and scores."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, image):
        out = self.model([{"image": image, "height": 96, "width": 128}])[0]["instances"]
        return out.pred_boxes.tensor, out.scores


def tiny_cfg(heads=("FasterRCNNAuxHead", "ATSSAuxHead", "FCOSAuxHead"), variant="refine"):
    """A tiny Co-DETR; ``variant`` "dino" is Co-DINO (contrastive denoising, mixed query
    selection, look-forward-twice, positive queries without the feature term)."""
    cfg = get_cfg()
    add_updetr_config(cfg)
    config = "co_dino_R18_demo.yaml" if variant == "dino" else "co_deformable_detr_R18_demo.yaml"
    cfg.merge_from_file(os.path.join(CODETR, config))
    d, dd = cfg.MODEL.DETR, cfg.MODEL.DEFORMABLE_DETR
    d.HIDDEN_DIM, d.NHEADS, d.DIM_FEEDFORWARD = 32, 4, 64
    d.ENC_LAYERS, d.DEC_LAYERS, d.NUM_OBJECT_QUERIES, d.DROPOUT = 1, 2, 10, 0.0
    if variant != "dino":
        dd.TWO_STAGE = variant == "two_stage"
        dd.ANCHOR_QUERIES = variant == "dn"
        cfg.MODEL.DN.ENABLED = variant == "dn"
    cfg.MODEL.CO_DETR.AUX_HEADS = list(heads)
    cfg.MODEL.CO_DETR.MAX_POSITIVE_QUERIES = 30
    cfg.MODEL.DEVICE = "cpu"
    return cfg


def batch():
    return [fake_input(96, 128, [[10, 10, 50, 60], [60, 20, 120, 90]], [0, 3], seed=1),
            fake_input(128, 96, [[5, 5, 40, 40]], [2], seed=2)]


def test_loss_weights_follow_the_paper():
    cfg = tiny_cfg(heads=("ATSSAuxHead",))
    cfg.MODEL.DETR.DEC_LAYERS = 6
    model = build_model(cfg)
    assert model.aux_loss_weight == 12.0  # lambda2 2 x 6 decoder layers
    assert model.positive_query_weight == 1.0


@pytest.mark.parametrize("variant", ["refine", "two_stage", "dn", "dino"])
def test_training_step_gives_every_head_and_pass_finite_losses(variant):
    torch.manual_seed(0)
    model = build_model(tiny_cfg(variant=variant)).train()
    with EventStorage():
        losses = model(batch())
    for head in ("atss", "fcos", "rcnn"):
        assert any(k.startswith(f"loss_{head}_") for k in losses), head
        for key in ("loss_focal", "loss_bbox", "loss_giou", "loss_bbox_0"):
            assert f"{key.replace('_0', '')}_co_{head}{'_0' if key.endswith('_0') else ''}" in losses
    assert all(torch.isfinite(v) for v in losses.values()), {k: float(v) for k, v in losses.items()}
    sum(losses.values()).backward()


def test_aux_losses_alone_reach_the_encoder():
    torch.manual_seed(0)
    model = build_model(tiny_cfg(heads=("ATSSAuxHead",))).train()
    with EventStorage():
        losses = model(batch())
    sum(v for k, v in losses.items() if k.startswith("loss_atss_")).backward()
    encoder = [p.grad for n, p in model.named_parameters() if n.startswith("transformer.encoder.")]
    assert any(g is not None and g.abs().sum() > 0 for g in encoder)


def test_main_branch_is_independent_of_the_auxiliary_passes():
    torch.manual_seed(0)
    model = build_model(tiny_cfg()).train()
    with EventStorage(), torch.no_grad():
        torch.manual_seed(1)
        state = model.run_phases(batch())
        losses = model.losses(state)  # the auxiliary heads and positive-query passes run here
        torch.manual_seed(1)
        alone = model.run_phases(batch()).outputs
    heads = {h.name for h in model.aux_heads}
    assert len(heads) == 3 and all(any(k.endswith(f"_co_{h}") for k in losses) for h in heads)
    for key in ("pred_logits", "pred_boxes"):
        torch.testing.assert_close(state.outputs[key], alone[key])


@pytest.mark.parametrize("variant", ["refine", "dino"])
def test_inference_is_the_base_detector(variant):
    """Same weights, aux heads on or off: identical detections and identical FLOPs; the
    Co-DETR (Co-DINO) checkpoint loads into a plain Deformable DETR (DINO)."""
    torch.manual_seed(0)
    co = build_model(tiny_cfg(variant=variant)).eval()
    base_cfg = tiny_cfg(variant=variant)
    base_cfg.MODEL.META_ARCHITECTURE = "DeformableDetr"
    base = build_model(base_cfg).eval()
    missing, unexpected = base.load_state_dict(co.state_dict(), strict=False)
    assert missing == []
    assert unexpected and all(k.startswith(("aux_heads.", "positive_queries.", "pyramid_extra.")) for k in unexpected)
    inputs = [{"image": torch.rand(3, 96, 128) * 255, "height": 96, "width": 128}]
    with torch.no_grad():
        a, b = co(inputs)[0]["instances"], base(inputs)[0]["instances"]
    assert torch.equal(a.pred_boxes.tensor, b.pred_boxes.tensor) and torch.equal(a.scores, b.scores)

    image = torch.rand(3, 96, 128) * 255
    flops = [FlopCountAnalysis(Detections(m), (image,)).unsupported_ops_warnings(False).uncalled_modules_warnings(False)
             .total() for m in (co, base)]
    assert flops[0] == flops[1] > 0


@pytest.mark.parametrize("name", ["co_deformable_detr_r50", "co_dn_deformable_detr_r50", "co_deformable_detr_R18_demo",
                                  "co_dino_r50", "co_dino_R18_demo", "co_detr_r50", "co_detr_R18_demo"])
def test_yaml_and_lazy_build_the_same_model(name):
    from detectron2.config import LazyConfig, instantiate

    cfg = get_cfg()
    add_updetr_config(cfg)
    cfg.merge_from_file(os.path.join(CODETR, name + ".yaml"))
    cfg.MODEL.DEVICE = "cpu"
    from_yaml = build_model(cfg)
    from_lazy = instantiate(LazyConfig.load(os.path.join(CODETR, name + ".py")).model)
    shapes = lambda m: {k: tuple(v.shape) for k, v in m.state_dict().items()}  # noqa: E731
    assert shapes(from_yaml) == shapes(from_lazy)
    assert [h.name for h in from_yaml.aux_heads] == [h.name for h in from_lazy.aux_heads] == ["rcnn", "atss"]
    assert from_yaml.aux_loss_weight == from_lazy.aux_loss_weight
    assert getattr(from_yaml, "two_stage", None) == getattr(from_lazy, "two_stage", None)


# --- single-scale DETR (CoDetr) ---------------------------------------------------------
def tiny_single_scale_cfg(heads=("FasterRCNNAuxHead", "ATSSAuxHead")):
    cfg = get_cfg()
    add_updetr_config(cfg)
    cfg.merge_from_file(os.path.join(CODETR, "co_detr_R18_demo.yaml"))
    d = cfg.MODEL.DETR
    d.HIDDEN_DIM, d.NHEADS, d.DIM_FEEDFORWARD, d.ENC_LAYERS, d.DEC_LAYERS, d.NUM_OBJECT_QUERIES = 32, 4, 64, 1, 2, 10
    cfg.MODEL.CO_DETR.AUX_HEADS = list(heads)
    cfg.MODEL.CO_DETR.MAX_POSITIVE_QUERIES = 30
    cfg.MODEL.DEVICE = "cpu"
    return cfg


def test_single_scale_adapter_builds_the_pyramid_from_one_map():
    from updetr_d2.methods.codetr.pyramid import SingleScaleAdapter

    adapter = SingleScaleAdapter(32, 32, [8, 16, 32, 64, 128])
    x = torch.randn(2, 32, 5, 7)
    levels = adapter(x)
    assert list(levels) == ["p3", "p4", "p5", "p6", "p7"]
    assert [tuple(v.shape[-2:]) for v in levels.values()] == [(20, 28), (10, 14), (5, 7), (3, 4), (2, 2)]
    assert levels["p5"] is x  # the encoder map itself at its own stride
    assert len(adapter.up) == 2 and len(adapter.down) == 2
    # Only the levels asked for; every intermediate step still exists to chain through.
    coarse = SingleScaleAdapter(32, 32, [32, 128])
    assert list(coarse(x)) == ["p5", "p7"] and len(coarse.down) == 2 and len(coarse.up) == 0
    with pytest.raises(ValueError, match="SINGLE_SCALE_STRIDES"):
        SingleScaleAdapter(32, 32, [16, 8])
    with pytest.raises(ValueError, match="powers of two"):
        SingleScaleAdapter(32, 32, [12, 32])


def test_single_scale_training_step_trains_heads_adapter_and_encoder():
    torch.manual_seed(0)
    model = build_model(tiny_single_scale_cfg()).train()
    with EventStorage():
        losses = model(batch())
    for head in ("atss", "rcnn"):
        assert any(k.startswith(f"loss_{head}_") for k in losses), head
        assert f"loss_ce_co_{head}" in losses and f"loss_giou_co_{head}_0" in losses
    assert all(torch.isfinite(v) for v in losses.values()), {k: float(v) for k, v in losses.items()}
    aux = sum(v for k, v in losses.items() if k.startswith(("loss_atss_", "loss_rcnn_")))
    aux.backward()
    assert sum(p.grad.abs().sum() for p in model.pyramid_adapter.parameters()) > 0
    assert model.transformer.encoder.layers[0].linear1.weight.grad.abs().sum() > 0  # the heads reach the encoder


def test_single_scale_inference_is_detr():
    """Same weights: CoDetr and Detr give identical detections and FLOPs; the checkpoint
    loads into a plain Detr with only the auxiliary weights left over."""
    torch.manual_seed(0)
    co = build_model(tiny_single_scale_cfg()).eval()
    base_cfg = tiny_single_scale_cfg()
    base_cfg.MODEL.META_ARCHITECTURE = "Detr"
    base = build_model(base_cfg).eval()
    missing, unexpected = base.load_state_dict(co.state_dict(), strict=False)
    assert missing == []
    assert unexpected and all(k.startswith(("aux_heads.", "positive_queries.", "pyramid_adapter.")) for k in unexpected)
    image = torch.rand(3, 96, 128) * 255

    with torch.no_grad():
        a, b = Detections(co)(image), Detections(base)(image)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    flops = [FlopCountAnalysis(Detections(m), (image,)).unsupported_ops_warnings(False).uncalled_modules_warnings(False)
             .total() for m in (co, base)]
    assert flops[0] == flops[1] > 0
