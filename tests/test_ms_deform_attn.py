"""Multi-scale deformable attention (tiny sizes, CPU)."""
import math
import types

import pytest
import torch

import updetr_d2.layers.ms_deform_attn as msda
from updetr_d2.layers.ms_deform_attn import (
    MSDeformAttn,
    ms_deform_attn,
    multi_scale_deformable_attention,
    use_compiled_kernel,
)

SHAPES = [(3, 5), (4, 2), (1, 3)]  # (H, W): non-square, different per level


def _levels(shapes):
    spatial_shapes = torch.tensor(shapes, dtype=torch.long)
    sizes = spatial_shapes.prod(1)
    level_start_index = torch.cat([sizes.new_zeros(1), sizes.cumsum(0)[:-1]])
    return spatial_shapes, level_start_index, int(sizes.sum())


def _inputs(B=2, Lq=3, M=2, D=4, P=2, shapes=SHAPES, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    spatial_shapes, _, S = _levels(shapes)
    L = len(shapes)
    value = torch.randn(B, S, M, D, generator=g, dtype=dtype)
    # [-0.3, 1.3]: a good share of the samples fall (partly) outside the map.
    locations = torch.rand(B, Lq, M, L, P, 2, generator=g, dtype=dtype) * 1.6 - 0.3
    weights = torch.rand(B, Lq, M, L, P, generator=g, dtype=dtype)
    weights = weights / weights.sum((-1, -2), keepdim=True)
    return value, spatial_shapes, locations, weights


def reference_attention(value, spatial_shapes, locations, weights):
    """Loops over everything; bilinear interpolation from the 4 neighbouring pixels."""
    B, S, M, D = value.shape
    _, Lq, _, L, P, _ = locations.shape
    out = value.new_zeros(B, Lq, M, D)
    starts = [0]
    for h, w in spatial_shapes.tolist():
        starts.append(starts[-1] + h * w)
    for b in range(B):
        for q in range(Lq):
            for m in range(M):
                for lvl in range(L):
                    H, W = spatial_shapes[lvl].tolist()
                    for p in range(P):
                        # Pixel (i, j) has its centre at ((j + 0.5) / W, (i + 0.5) / H).
                        x = locations[b, q, m, lvl, p, 0].item() * W - 0.5
                        y = locations[b, q, m, lvl, p, 1].item() * H - 0.5
                        x0, y0 = math.floor(x), math.floor(y)
                        fx, fy = x - x0, y - y0
                        sample = value.new_zeros(D)
                        for j, wx in ((x0, 1 - fx), (x0 + 1, fx)):
                            for i, wy in ((y0, 1 - fy), (y0 + 1, fy)):
                                if 0 <= i < H and 0 <= j < W:  # zero outside
                                    sample += wx * wy * value[b, starts[lvl] + i * W + j, m]
                        out[b, q, m] += weights[b, q, m, lvl, p] * sample
    return out.reshape(B, Lq, M * D)


@pytest.mark.parametrize("dtype,atol", [(torch.float32, 1e-5), (torch.float64, 1e-10)])
def test_matches_loop_reference(dtype, atol):
    value, spatial_shapes, locations, weights = _inputs(dtype=dtype)
    outside = ((locations < 0) | (locations > 1)).any(-1)
    assert outside.any() and not outside.all()
    out = multi_scale_deformable_attention(value, spatial_shapes, locations, weights)
    assert out.shape == (2, 3, 2 * 4) and out.dtype == dtype
    torch.testing.assert_close(out, reference_attention(value, spatial_shapes, locations, weights), atol=atol, rtol=0)


def test_pixel_centres_and_corners():
    """A sample at a pixel centre reads that pixel; at the map's corner, a quarter of the corner pixel."""
    value = torch.arange(1.0, 7.0).view(1, 6, 1, 1)  # one level 2x3
    spatial_shapes = torch.tensor([[2, 3]])
    centre_1_2 = [(2 + 0.5) / 3, (1 + 0.5) / 2]
    locations = torch.tensor([centre_1_2, [0.0, 0.0], [1.0, 1.0]]).view(1, 3, 1, 1, 1, 2)
    weights = torch.ones(1, 3, 1, 1, 1)
    out = multi_scale_deformable_attention(value, spatial_shapes, locations, weights)
    torch.testing.assert_close(out.flatten(), torch.tensor([6.0, 1.0 / 4, 6.0 / 4]))


def test_gradcheck():
    torch.manual_seed(0)
    shapes = [(2, 3), (3, 2)]
    spatial_shapes, _, S = _levels(shapes)
    B, Lq, M, D, L, P = 1, 2, 2, 3, len(shapes), 2
    value = torch.randn(B, S, M, D, dtype=torch.float64)
    # Bilinear interpolation has kinks where a coordinate crosses a pixel centre
    # (x * W - 0.5 an integer): place every sample at pixel k + [0.15, 0.85] past a
    # centre, k from -1 (between outside and the first pixel) to W - 1.
    wh = spatial_shapes.flip(-1).double()  # (W, H) per level
    cell = torch.floor(torch.rand(B, Lq, M, L, P, 2, dtype=torch.float64) * (wh[:, None, :] + 1)) - 1
    frac = 0.15 + 0.7 * torch.rand(B, Lq, M, L, P, 2, dtype=torch.float64)
    locations = (cell + 0.5 + frac) / wh[:, None, :]
    weights = torch.rand(B, Lq, M, L, P, dtype=torch.float64)
    inputs = (value.requires_grad_(), locations.requires_grad_(), weights.requires_grad_())

    def fn(v, loc, w):
        return multi_scale_deformable_attention(v, spatial_shapes, loc, w)

    assert torch.autograd.gradcheck(fn, inputs)


def _layer(d_model=16, n_levels=3, n_heads=8, n_points=2, seed=0):
    torch.manual_seed(seed)
    return MSDeformAttn(d_model, n_levels, n_heads, n_points)


def _layer_inputs(B=2, Lq=5, d_model=16, shapes=SHAPES, ref_dim=2, seed=1):
    g = torch.Generator().manual_seed(seed)
    spatial_shapes, level_start_index, S = _levels(shapes)
    query = torch.randn(B, Lq, d_model, generator=g)
    src = torch.randn(B, S, d_model, generator=g)
    ref = torch.rand(B, Lq, len(shapes), ref_dim, generator=g)
    if ref_dim == 4:
        ref[..., 2:] = ref[..., 2:] * 0.5 + 0.1
    return query, ref, src, spatial_shapes, level_start_index


@pytest.mark.parametrize("ref_dim", [2, 4])
def test_layer_output_shape_and_backward(ref_dim):
    layer = _layer()
    query, ref, src, spatial_shapes, level_start_index = _layer_inputs(ref_dim=ref_dim)
    query.requires_grad_()
    out = layer(query, ref, src, spatial_shapes, level_start_index)
    assert out.shape == (2, 5, 16)
    out.sum().backward()
    assert query.grad is not None and layer.sampling_offsets.weight.grad.abs().sum() > 0


def test_parameter_names_and_shapes():
    layer = MSDeformAttn(d_model=256, n_levels=4, n_heads=8, n_points=4)
    shapes = {k: tuple(v.shape) for k, v in layer.state_dict().items()}
    assert shapes == {
        "sampling_offsets.weight": (256, 256),
        "sampling_offsets.bias": (256,),
        "attention_weights.weight": (128, 256),
        "attention_weights.bias": (128,),
        "value_proj.weight": (256, 256),
        "value_proj.bias": (256,),
        "output_proj.weight": (256, 256),
        "output_proj.bias": (256,),
    }


# Unit steps of the 8 heads' directions (angle 2*pi*h/8, larger component 1), by hand.
HEAD_DIRECTIONS_8 = [(1, 0), (1, 1), (0, 1), (-1, 1), (-1, 0), (-1, -1), (0, -1), (1, -1)]


def test_init_sampling_pattern():
    n_points = 2
    layer = _layer(n_points=n_points)
    assert layer.sampling_offsets.weight.abs().sum() == 0
    assert layer.attention_weights.weight.abs().sum() == 0 and layer.attention_weights.bias.abs().sum() == 0
    assert layer.value_proj.bias.abs().sum() == 0 and layer.output_proj.bias.abs().sum() == 0
    query, ref, src, spatial_shapes, level_start_index = _layer_inputs()
    locations, weights = layer.compute_sampling(query, ref, spatial_shapes)

    B, Lq, L = ref.shape[:3]
    expected = torch.empty(B, Lq, 8, L, n_points, 2)
    for h, (dx, dy) in enumerate(HEAD_DIRECTIONS_8):
        for lvl, (H, W) in enumerate(SHAPES):
            for p in range(n_points):
                # Offsets are in pixels of the level: one pixel is 1/W (x), 1/H (y).
                expected[:, :, h, lvl, p, 0] = ref[:, :, lvl, 0] + dx * (p + 1) / W
                expected[:, :, h, lvl, p, 1] = ref[:, :, lvl, 1] + dy * (p + 1) / H
    torch.testing.assert_close(locations, expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(weights, torch.full_like(weights, 1 / (L * n_points)))

    # Boxes: offsets scale with the box, p+1 steps of (w, h) / (2 * n_points).
    query, ref4, *_ = _layer_inputs(ref_dim=4)
    locations, _ = layer.compute_sampling(query, ref4, spatial_shapes)
    direction = torch.tensor(HEAD_DIRECTIONS_8, dtype=torch.float32)[:, None, None, :]  # [8, 1, 1, 2]
    steps = torch.arange(1, n_points + 1, dtype=torch.float32)[None, None, :, None]
    box = ref4[:, :, None, :, None, :]
    expected = box[..., :2] + direction * steps * box[..., 2:] / (2 * n_points)
    torch.testing.assert_close(locations, expected, atol=1e-6, rtol=0)


def test_forward_uses_computed_sampling():
    layer = _layer()
    with torch.no_grad():
        layer.sampling_offsets.weight.normal_(std=0.5)
        layer.attention_weights.weight.normal_()
    query, ref, src, spatial_shapes, level_start_index = _layer_inputs()
    locations, weights = layer.compute_sampling(query, ref, spatial_shapes)
    value = layer.value_proj(src).view(*src.shape[:2], 8, 2)
    expected = layer.output_proj(reference_attention(value, spatial_shapes, locations, weights))
    out = layer(query, ref, src, spatial_shapes, level_start_index)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_padding_mask():
    layer = _layer()
    with torch.no_grad():  # spread the samples so that many land on padded pixels
        layer.sampling_offsets.weight.normal_(std=2.0)
        layer.attention_weights.weight.normal_()
    query, ref, src, spatial_shapes, level_start_index = _layer_inputs()
    mask = torch.zeros(src.shape[:2], dtype=torch.bool)
    start = 0
    for h, w in SHAPES:  # pad the right half of each level in image 0
        level = torch.zeros(h, w, dtype=torch.bool)
        level[:, w // 2 :] = True
        mask[0, start : start + h * w] = level.flatten()
        start += h * w
    mask[1, -4:] = True
    out = layer(query, ref, src, spatial_shapes, level_start_index, mask)

    changed = src.clone()
    changed[mask] = torch.randn(int(mask.sum()), src.shape[-1]) * 100
    assert torch.equal(layer(query, ref, src.clone(), spatial_shapes, level_start_index, mask), out)
    torch.testing.assert_close(layer(query, ref, changed, spatial_shapes, level_start_index, mask), out, atol=0, rtol=0)
    # Without the mask the same change does show (so the samples do reach those pixels).
    unmasked = layer(query, ref, src, spatial_shapes, level_start_index)
    assert not torch.allclose(layer(query, ref, changed, spatial_shapes, level_start_index), unmasked)


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match="divisible by n_heads"):
        MSDeformAttn(d_model=30, n_heads=8)
    layer = _layer()
    query, ref, src, spatial_shapes, level_start_index = _layer_inputs()
    with pytest.raises(ValueError, match=r"reference_points.*got \[2, 5, 3, 3\]"):
        layer(query, torch.rand(2, 5, 3, 3), src, spatial_shapes, level_start_index)
    with pytest.raises(ValueError, match=r"reference_points.*got \[2, 5, 2\]"):
        layer(query, torch.rand(2, 5, 2), src, spatial_shapes, level_start_index)
    with pytest.raises(ValueError, match=r"cover 26 positions but input_flatten has S=25"):
        layer(query, ref, src[:, :-1], spatial_shapes, level_start_index)
    with pytest.raises(ValueError, match=r"spatial_shapes must be \[3, 2\]"):
        layer(query, ref, src, spatial_shapes[:2], level_start_index)
    with pytest.raises(ValueError, match="input_padding_mask must be"):
        layer(query, ref, src, spatial_shapes, level_start_index, torch.zeros(2, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="query"):
        layer(query[..., :8], ref, src, spatial_shapes, level_start_index)
    value, spatial_shapes, locations, weights = _inputs()
    with pytest.raises(ValueError, match="cover"):
        multi_scale_deformable_attention(value[:, 1:], spatial_shapes, locations, weights)


def test_pytorch_path_without_kernel(monkeypatch):
    monkeypatch.setattr(msda, "_C", None)
    value, spatial_shapes, locations, weights = _inputs()
    assert not use_compiled_kernel(value)
    calls = []
    original = msda.multi_scale_deformable_attention
    monkeypatch.setattr(msda, "multi_scale_deformable_attention", lambda *a: calls.append(1) or original(*a))
    layer = _layer()
    layer(*_layer_inputs())
    assert calls == [1]


def test_cpu_tensors_never_use_kernel(monkeypatch):
    monkeypatch.setattr(msda, "_C", types.SimpleNamespace())  # "imported"
    assert not use_compiled_kernel(torch.zeros(1))


def test_compiled_path_plumbing(monkeypatch):
    """The autograd wrapper around a kernel, with a fake kernel (PyTorch inside) on CPU."""

    def fake_forward(value, spatial_shapes, level_start_index, locations, weights, im2col_step):
        assert all(t.is_contiguous() for t in (value, locations, weights)) and im2col_step == 64
        return multi_scale_deformable_attention(value, spatial_shapes, locations, weights)

    def fake_backward(value, spatial_shapes, level_start_index, locations, weights, grad_output, im2col_step):
        with torch.enable_grad():
            inputs = [t.detach().requires_grad_() for t in (value, locations, weights)]
            out = multi_scale_deformable_attention(inputs[0], spatial_shapes, inputs[1], inputs[2])
            return list(torch.autograd.grad(out, inputs, grad_output))

    monkeypatch.setattr(msda, "_C", types.SimpleNamespace(ms_deform_attn_forward=fake_forward,
                                                          ms_deform_attn_backward=fake_backward))
    monkeypatch.setattr(msda, "use_compiled_kernel", lambda value: True)
    value, spatial_shapes, locations, weights = _inputs(dtype=torch.float64)
    _, level_start_index, _ = _levels(SHAPES)
    inputs = [t.requires_grad_() for t in (value, locations, weights)]
    out = ms_deform_attn(inputs[0], spatial_shapes, level_start_index, inputs[1], inputs[2])
    expected = multi_scale_deformable_attention(inputs[0], spatial_shapes, inputs[1], inputs[2])
    torch.testing.assert_close(out, expected)
    grad = torch.randn_like(out)
    torch.testing.assert_close(torch.autograd.grad(out, inputs, grad), torch.autograd.grad(expected, inputs, grad))
