"""Mixed precision (engine/amp.py, layers/precision.py): the precision each device and
setting gets, a bf16 training step of every meta-architecture against fp32 on the same
weights and inputs, fp32 parameters, gradients and optimizer state, fp32 matcher costs
and losses, bf16 inference, and the trainer for both config routes."""
import copy
import logging

import pytest
import torch

import updetr_d2  # noqa: F401
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage
from omegaconf import OmegaConf
from updetr_d2.engine.amp import MixedPrecisionTrainer, autocast_dtype, cpu_supports_bf16, inference_autocast
from updetr_d2.engine.lazy import build_trainer
from updetr_d2.layers.precision import float32_region, to_float32
from updetr_d2.modeling.matcher import HungarianMatcher
from updetr_d2.solver import build_optimizer

import test_codetr
import test_deformable_detr
import test_detr
import test_updetr
import test_updetr_deformable

needs_bf16 = pytest.mark.skipif(not cpu_supports_bf16(), reason="this CPU has no native bf16")


# --- which precision -------------------------------------------------------------------
def test_precision_per_device_and_setting(caplog):
    assert autocast_dtype("cpu", "auto", bf16_supported=True) == torch.bfloat16
    assert autocast_dtype("cpu", "bfloat16", bf16_supported=True) == torch.bfloat16
    assert autocast_dtype("cuda", "auto") == torch.float16  # Detectron2's AMP: fp16 + scaler
    assert autocast_dtype("cuda", "bfloat16") == torch.bfloat16
    with caplog.at_level(logging.INFO, logger="updetr_d2.engine.amp"):
        assert autocast_dtype("cpu", "auto", bf16_supported=False) is None
    assert sum("runs in fp32" in r.getMessage() for r in caplog.records) == 1
    with pytest.raises(ValueError, match="SOLVER.AMP.PRECISION float16 needs a GPU"):
        autocast_dtype("cpu", "float16")
    with pytest.raises(ValueError, match="train.amp.precision must be one of auto, bfloat16, float16; got 'half'"):
        autocast_dtype("cpu", "half", option="train.amp.precision")


def test_float32_region_casts_only_inside_autocast():
    seen = []

    @float32_region
    def f(x, tree):
        seen.append((x.dtype, tree["a"][0].dtype, tree["i"].dtype, torch.is_autocast_enabled("cpu")))
        return x @ x

    x = torch.randn(4, 4)
    tree = {"a": [x.bfloat16()], "i": torch.arange(3), "other": "kept"}
    assert f(x, tree).dtype == torch.float32 and seen[-1] == (torch.float32, torch.float32, torch.int64, False)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert (x @ x).dtype == torch.bfloat16
        assert f(x.bfloat16(), tree).dtype == torch.float32
    assert seen[-1] == (torch.float32, torch.float32, torch.int64, False)
    assert to_float32(tree)["other"] == "kept"


# --- a training step of every meta-architecture ----------------------------------------
def detr_case():
    batch = [test_detr.fake_input(96, 128, [[10, 10, 50, 60], [60, 20, 120, 90]], [0, 3]),
             test_detr.fake_input(128, 96, [[5, 5, 40, 40]], [2])]
    return test_detr.tiny_detr_cfg(), batch


def deformable_case(variant):
    return lambda: (test_deformable_detr.tiny_cfg(variant), test_deformable_detr.batch_of_three())


def updetr_case():
    return test_updetr.tiny(), [test_updetr.patch_input(seed=1), test_updetr.patch_input(seed=2)]


def deformable_updetr_case():
    return test_updetr_deformable.tiny(), [test_updetr.patch_input(seed=1), test_updetr.patch_input(seed=2)]


def codetr_case():
    return test_codetr.tiny_cfg(), test_codetr.batch()


CASES = {
    "Detr": detr_case,
    "DeformableDetr": deformable_case("refine"),
    "DeformableDetr-two-stage": deformable_case("two_stage"),
    "DeformableDetr-dn": deformable_case("dn"),
    "UpDetr": updetr_case,
    "DeformableUpDetr": deformable_updetr_case,
    "CoDeformableDetr": codetr_case,
}


def losses_and_grads(model, batch, dtype):
    torch.manual_seed(1)  # the same noise (DN, patches) in both precisions
    model.zero_grad()
    context = torch.autocast("cpu", dtype=dtype) if dtype else torch.autocast("cpu", enabled=False)
    with EventStorage(), context:
        losses = model(copy.deepcopy(batch))
    sum(losses.values()).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return {k: v.detach() for k, v in losses.items()}, grads


@needs_bf16
@pytest.mark.parametrize("name", list(CASES))
def test_bf16_training_step_is_close_to_fp32(name):
    cfg, batch = CASES[name]()
    torch.manual_seed(0)
    model = build_model(cfg).train()
    fp32, fp32_grads = losses_and_grads(model, batch, None)
    bf16, bf16_grads = losses_and_grads(model, batch, torch.bfloat16)
    assert set(bf16) == set(fp32)
    for key in fp32:
        # Losses come out of the fp32 criterion; bf16 keeps ~3 significant digits of what
        # feeds it, and a matching may flip between near-equal queries.
        assert bf16[key].dtype == torch.float32 and torch.isfinite(bf16[key]), key
        assert abs(bf16[key] - fp32[key]) <= 0.05 * abs(fp32[key]) + 0.02, (key, bf16[key], fp32[key])
    total32, total16 = sum(fp32.values()), sum(bf16.values())
    assert abs(total16 - total32) <= 0.03 * total32
    # Parameters and gradients stay fp32 (autocast casts per op, never the weights).
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert set(bf16_grads) == set(fp32_grads)
    assert all(g.dtype == torch.float32 and torch.isfinite(g).all() for g in bf16_grads.values())
    flat32 = torch.cat([g.flatten() for g in fp32_grads.values()])
    flat16 = torch.cat([bf16_grads[n].flatten() for n in fp32_grads])
    assert torch.nn.functional.cosine_similarity(flat32, flat16, dim=0) > 0.95


@needs_bf16
def test_matcher_and_losses_get_fp32_under_autocast(monkeypatch):
    cfg, batch = detr_case()
    torch.manual_seed(0)
    model = build_model(cfg).train()
    seen = []
    original = HungarianMatcher.class_cost

    def spy(self, logits, labels):
        cost = original(self, logits, labels)
        seen.append((logits.dtype, cost.dtype, torch.is_autocast_enabled("cpu")))
        return cost

    monkeypatch.setattr(HungarianMatcher, "class_cost", spy)
    with EventStorage(), torch.autocast("cpu", dtype=torch.bfloat16):
        state = model.run_phases(batch)
        losses = model.losses(state)
    assert seen and all(s == (torch.float32, torch.float32, False) for s in seen)
    # The heads run in fp32 too: boxes keep their precision.
    assert state.outputs["pred_boxes"].dtype == torch.float32
    assert state.outputs["pred_logits"].dtype == torch.float32
    assert all(v.dtype == torch.float32 for v in losses.values())


class _Loader:
    def __init__(self, batch):
        self.batch = batch

    def __iter__(self):
        while True:
            yield copy.deepcopy(self.batch)


@needs_bf16
def test_trainer_steps_keep_optimizer_state_fp32_and_resume():
    cfg, batch = detr_case()
    cfg.SOLVER.OPTIMIZER = "ADAMW"
    torch.manual_seed(0)
    model = build_model(cfg)
    trainer = MixedPrecisionTrainer(model, _Loader(batch), build_optimizer(cfg, model), "cpu", torch.bfloat16)
    assert trainer.grad_scaler is None  # bf16 has fp32's range: nothing to scale
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with EventStorage() as storage:
        for trainer.iter in range(2):
            storage.iter = trainer.iter
            trainer.run_step()
    assert all(p.dtype == torch.float32 for p in model.parameters())
    state = trainer.optimizer.state_dict()["state"]
    assert state and all(v.dtype == torch.float32 for s in state.values() for k, v in s.items() if k != "step")
    moved = [n for n, p in model.named_parameters() if p.requires_grad and not torch.equal(p, before[n])]
    assert len(moved) > 0.9 * sum(p.requires_grad for p in model.parameters())
    assert "grad_scaler" not in trainer.state_dict() and "optimizer" in trainer.state_dict()


def test_fp16_gets_a_gradient_scaler_whose_state_is_saved():
    cfg, batch = detr_case()
    model = build_model(cfg)
    trainer = MixedPrecisionTrainer.replacing(
        MixedPrecisionTrainer(model, _Loader(batch), build_optimizer(cfg, model), "cpu", None), "cpu", torch.float16
    )
    assert trainer.grad_scaler is not None and "grad_scaler" in trainer.state_dict()


def test_lazy_route_builds_the_mixed_precision_trainer():
    cfg, batch = detr_case()
    model = build_model(cfg)
    train = OmegaConf.create({"train": {"device": "cpu", "amp": {"enabled": True, "precision": "auto"}}})
    trainer = build_trainer(train, model, _Loader(batch), build_optimizer(cfg, model))
    assert isinstance(trainer, MixedPrecisionTrainer)
    assert trainer.dtype == (torch.bfloat16 if cpu_supports_bf16() else None)
    plain = OmegaConf.create({"train": {"device": "cpu"}})  # an older config without train.amp
    assert type(build_trainer(plain, model, _Loader(batch), build_optimizer(cfg, model))).__name__ == "SimpleTrainer"


# --- inference -------------------------------------------------------------------------
@needs_bf16
@pytest.mark.parametrize("name", ["Detr", "DeformableDetr"])
def test_bf16_inference_gives_fp32_detections_close_to_fp32(name):
    cfg, batch = CASES[name]()
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    inputs = [{"image": x["image"]} for x in batch]
    with torch.no_grad():
        fp32 = model(inputs)
        with inference_autocast("cpu", True):
            bf16 = model(inputs)
    for a, b in zip(fp32, bf16):
        a, b = a["instances"], b["instances"]
        assert b.pred_boxes.tensor.dtype == torch.float32 and b.scores.dtype == torch.float32
        assert len(a) == len(b)
        # The same queries score highest; their boxes agree to a few pixels.
        top = a.scores.argsort(descending=True)[:3]
        assert torch.allclose(a.scores.sort().values, b.scores.sort().values, atol=0.02)
        ia = a.query_index[top] if a.has("query_index") else top
        ib = b.query_index if b.has("query_index") else torch.arange(len(b))
        for q, box in zip(ia, a.pred_boxes.tensor[top]):
            match = (ib == q).nonzero()
            if len(match):
                assert (b.pred_boxes.tensor[match[0, 0]] - box).abs().max() < 4.0


def test_inference_autocast_off_is_plain_fp32():
    with inference_autocast("cpu", False):
        assert not torch.is_autocast_enabled("cpu")
