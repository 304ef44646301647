"""Deformable attention that samples again in backward (``recompute``,
``MODEL.DEFORMABLE_DETR.RECOMPUTE_SAMPLING``): the same outputs and gradients as
keeping the samples, fewer tensors kept for backward, and no checkpoint where no
gradient is taken or the compiled kernel runs."""
import copy
import os
import types

import pytest
import torch

import updetr_d2  # noqa: F401
from detectron2.config import LazyConfig, instantiate
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage
import updetr_d2.layers.ms_deform_attn as msda
from updetr_d2.layers.ms_deform_attn import MSDeformAttn, ms_deform_attn

from test_deformable_detr import DEFORMABLE, batch_of_three, tiny_cfg

SHAPES = [(8, 10), (4, 5)]  # (H, W) of the two levels
D_MODEL, HEADS, POINTS, BATCH, QUERIES = 16, 2, 2, 2, 7


def _levels():
    spatial_shapes = torch.tensor(SHAPES, dtype=torch.long)
    sizes = spatial_shapes.prod(1)
    return spatial_shapes, torch.cat([sizes.new_zeros(1), sizes.cumsum(0)[:-1]]), int(sizes.sum())


def _padding_mask(S):
    """Image 0: the right 3 columns and bottom 2 rows of each level padded; image 1: none."""
    mask = torch.zeros(BATCH, S, dtype=torch.bool)
    start = 0
    for h, w in SHAPES:
        level = torch.zeros(h, w, dtype=torch.bool)
        level[:, w - 3 :] = True
        level[h - 2 :] = True
        mask[0, start : start + h * w] = level.flatten()
        start += h * w
    return mask


def _layers():
    """The same weights with and without recompute; offsets and weights perturbed from
    the init so that the samples spread over the maps (some onto padding and outside)."""
    torch.manual_seed(0)
    layer = MSDeformAttn(D_MODEL, len(SHAPES), HEADS, POINTS)
    with torch.no_grad():
        layer.sampling_offsets.weight.normal_(std=1.0)
        layer.attention_weights.weight.normal_()
    recomputing = copy.deepcopy(layer)
    recomputing.recompute = True
    assert MSDeformAttn(D_MODEL, len(SHAPES), HEADS, POINTS, recompute=True).recompute
    assert not layer.recompute
    return layer, recomputing


def _inputs(ref_dim):
    g = torch.Generator().manual_seed(1)
    spatial_shapes, level_start_index, S = _levels()
    query = torch.randn(BATCH, QUERIES, D_MODEL, generator=g)
    src = torch.randn(BATCH, S, D_MODEL, generator=g)
    ref = torch.rand(BATCH, QUERIES, len(SHAPES), ref_dim, generator=g)
    if ref_dim == 4:
        ref[..., 2:] = ref[..., 2:] * 0.5 + 0.1
    return query, ref, src, spatial_shapes, level_start_index, _padding_mask(S)


@pytest.mark.parametrize("ref_dim", [2, 4])
def test_layer_same_output_and_gradients(ref_dim):
    layers = _layers()
    query, ref, src, spatial_shapes, level_start_index, mask = _inputs(ref_dim)
    upstream = torch.randn(BATCH, QUERIES, D_MODEL, generator=torch.Generator().manual_seed(2))
    outputs, grads = [], []
    for layer in layers:
        inputs = [t.clone().requires_grad_() for t in (query, ref, src)]
        out = layer(inputs[0], inputs[1], inputs[2], spatial_shapes, level_start_index, mask)
        params = list(layer.parameters())
        outputs.append(out)
        grads.append(torch.autograd.grad((out * upstream).sum(), inputs + params))
    assert torch.equal(outputs[0], outputs[1])
    names = ["query", "reference_points", "input_flatten"] + [n for n, _ in layers[0].named_parameters()]
    for name, a, b in zip(names, *grads):
        assert a.abs().sum() > 0, name  # every input and parameter is reached
        torch.testing.assert_close(b, a, atol=1e-6, rtol=0, msg=name)


def test_recompute_keeps_no_samples_for_backward():
    """What autograd keeps from the sampling + weighted sum: without recompute every
    level's samples [B*M, D, Lq, P]; with it nothing that large (the samples are made
    again in backward), and less in all."""
    spatial_shapes, level_start_index, S = _levels()
    g = torch.Generator().manual_seed(3)
    L, M, Dh = len(SHAPES), HEADS, D_MODEL // HEADS
    value = torch.randn(BATCH, S, M, Dh, generator=g).requires_grad_()
    locations = torch.rand(BATCH, S, M, L, POINTS, 2, generator=g).requires_grad_()
    weights = torch.rand(BATCH, S, M, L, POINTS, generator=g).requires_grad_()
    kept = {}
    for recompute in (False, True):
        sizes = []

        def pack(t):
            sizes.append(t.numel())
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            ms_deform_attn(value, spatial_shapes, level_start_index, locations, weights, recompute=recompute)
        kept[recompute] = sizes
    samples = BATCH * M * Dh * S * POINTS  # one level's samples (a query per position)
    assert sorted(kept[False]).count(samples) == L
    assert max(kept[True]) < samples and sum(kept[True]) < sum(kept[False]) - L * samples / 2


def test_no_grad_and_eval_give_the_same_output_without_checkpoint(monkeypatch):
    layer, recomputing = _layers()
    query, ref, src, spatial_shapes, level_start_index, mask = _inputs(2)
    calls = []
    original = msda.checkpoint
    monkeypatch.setattr(msda, "checkpoint", lambda *a, **k: calls.append(1) or original(*a, **k))
    args = (query, ref, src, spatial_shapes, level_start_index, mask)
    for module in (layer, recomputing):
        module.eval()
    with torch.no_grad():
        expected = layer(*args)
        assert torch.equal(recomputing(*args), expected)
    with torch.inference_mode():
        assert torch.equal(recomputing(*args), expected)
    assert calls == []  # no gradient to take: nothing to save memory on
    # With gradients on (even in eval mode) the option applies and gives the same values.
    assert torch.equal(recomputing(*args), expected) and len(calls) == len(SHAPES)  # one per level


def test_compiled_kernel_path_is_never_checkpointed(monkeypatch):
    """The kernel keeps no samples for backward, so it runs as is, recompute or not."""
    kernel_calls, checkpoints = [], []

    def fake_forward(value, spatial_shapes, level_start_index, locations, weights, im2col_step):
        kernel_calls.append(1)
        return msda.multi_scale_deformable_attention(value, spatial_shapes, locations, weights)

    monkeypatch.setattr(msda, "_C", types.SimpleNamespace(ms_deform_attn_forward=fake_forward))
    monkeypatch.setattr(msda, "use_compiled_kernel", lambda value: True)
    monkeypatch.setattr(msda, "checkpoint", lambda *a, **k: checkpoints.append(1))
    _, recomputing = _layers()
    query, ref, src, spatial_shapes, level_start_index, mask = _inputs(2)
    recomputing(query.requires_grad_(), ref, src, spatial_shapes, level_start_index, mask)
    assert kernel_calls == [1] and checkpoints == []


def test_deformable_detr_from_config_same_losses_and_gradients():
    models = []
    for recompute in (False, True):
        cfg = tiny_cfg("refine")
        cfg.MODEL.DEFORMABLE_DETR.RECOMPUTE_SAMPLING = recompute
        torch.manual_seed(0)  # the same weights in both models
        models.append(build_model(cfg).train())
    attentions = [[m for m in model.modules() if isinstance(m, MSDeformAttn)] for model in models]
    # 1 encoder layer (self-attention) + 2 decoder layers (cross-attention)
    assert len(attentions[0]) == len(attentions[1]) == 3
    assert not any(m.recompute for m in attentions[0]) and all(m.recompute for m in attentions[1])

    losses = []
    for model in models:
        torch.manual_seed(1)
        with EventStorage():
            loss_dict = model(batch_of_three())
        sum(loss_dict.values()).backward()
        losses.append(loss_dict)
    assert set(losses[0]) == set(losses[1])
    for key in losses[0]:
        torch.testing.assert_close(losses[1][key], losses[0][key], atol=1e-5, rtol=0, msg=key)
    grads = [dict(model.named_parameters()) for model in models]
    assert grads[0].keys() == grads[1].keys()
    reached = 0
    for name, p in grads[0].items():
        q = grads[1][name]
        assert (p.grad is None) == (q.grad is None), name
        if p.grad is not None:
            reached += int(p.grad.abs().sum() > 0)
            torch.testing.assert_close(q.grad, p.grad, atol=1e-5, rtol=0, msg=name)
    assert reached > 0


def test_lazy_config_switch():
    """LazyConfig users set the transformer's argument (default off, as the yaml key)."""
    cfg = LazyConfig.load(os.path.join(DEFORMABLE, "deformable_detr_R18_demo.py"))
    assert not any(m.recompute for m in instantiate(cfg.model.transformer).modules() if isinstance(m, MSDeformAttn))
    LazyConfig.apply_overrides(cfg, ["model.transformer.recompute_sampling=True"])
    attentions = [m for m in instantiate(cfg.model.transformer).modules() if isinstance(m, MSDeformAttn)]
    assert len(attentions) == 4 and all(m.recompute for m in attentions)  # 2 encoder + 2 decoder layers
