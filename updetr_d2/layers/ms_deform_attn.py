"""Multi-scale deformable attention (Deformable DETR, Zhu et al., ICLR 2021).

Each query attends to a few sampled points per head and feature level instead of
every key: ``n_points`` locations per (head, level), predicted as offsets from the
query's reference point, are read from the value maps by bilinear interpolation
and summed with attention weights that are softmaxed over (levels x points).

Conventions
-----------
* Feature levels are flattened row-major and concatenated in level order:
  ``input_flatten`` / ``value`` are [B, S, ...] with S = sum of H_l * W_l, and
  ``level_start_index[l]`` is where level l starts.
* Locations are normalised ``(x, y)``: (0, 0) is the top-left corner of the
  top-left pixel, (1, 1) the bottom-right corner of the bottom-right pixel; the
  centre of pixel (row i, column j) is ((j + 0.5) / W, (i + 0.5) / H). That is
  ``F.grid_sample(..., align_corners=False)``, and the CUDA kernel of the original
  code. Samples outside the map read zeros.
* Padding masks are True at padded positions.

:func:`multi_scale_deformable_attention` is the PyTorch implementation (CPU or
GPU, any float dtype, autograd). If the original code's compiled extension
``MultiScaleDeformableAttention`` is importable, :func:`ms_deform_attn` uses it for
float32/float64 CUDA tensors; a missing kernel just means the PyTorch path.

Memory: to differentiate the weighted sum, autograd keeps every level's samples
([B * n_heads, head_dim, Lq, P] per level; for the encoder, whose queries are all
S positions, n_levels * n_points times the size of ``value``) until backward.
``recompute=True`` keeps only the inputs of each level's sampling and samples that
level again in backward, just before its gradient is taken: less peak memory in
training (at most one level's samples exist at a time, in the whole model), at
the price of a second sampling pass. The compiled kernel needs no such option:
its backward reads the value maps directly.
"""
import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable
from torch.utils.checkpoint import checkpoint

try:  # The original Deformable DETR's CUDA extension, if someone built it.
    import MultiScaleDeformableAttention as _C
except (ImportError, OSError):  # OSError: a build that does not match this torch
    _C = None

__all__ = [
    "HAS_COMPILED_KERNEL",
    "MSDeformAttn",
    "ms_deform_attn",
    "multi_scale_deformable_attention",
    "use_compiled_kernel",
]

HAS_COMPILED_KERNEL = _C is not None


def _sample_and_weigh(value_l: Tensor, grid: Tensor, weights_l: Tensor) -> Tensor:
    """One level: [B*M, D, H, W] sampled at grid [B*M, Lq, P, 2] ([-1, 1]), weighted by
    [B*M, 1, Lq, P] and summed over the points -> [B*M, D, Lq]."""
    sampled = F.grid_sample(value_l, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return (sampled * weights_l).sum(-1)


def multi_scale_deformable_attention(
    value: Tensor,
    spatial_shapes: Tensor,
    sampling_locations: Tensor,
    attention_weights: Tensor,
    recompute: bool = False,
) -> Tensor:
    """Sample ``value`` at ``sampling_locations`` and sum with ``attention_weights``.

    Args:
        value: [B, S, n_heads, head_dim], the levels flattened row-major and
            concatenated (S = sum of H_l * W_l).
        spatial_shapes: long [L, 2], (H_l, W_l) of each level.
        sampling_locations: [B, Lq, n_heads, L, P, 2], normalised (x, y), pixel
            centres at (j + 0.5) / W (``align_corners=False``); outside [0, 1] the
            map is zero.
        attention_weights: [B, Lq, n_heads, L, P], already normalised.
        recompute: when a gradient will be taken, keep no samples for backward but
            sample each level again there (see the module docstring); the same
            result and gradients.

    Returns:
        [B, Lq, n_heads * head_dim], head-major channels.
    """
    B, S, M, D = value.shape
    _, Lq, _, L, P, _ = sampling_locations.shape
    shapes = [(int(h), int(w)) for h, w in spatial_shapes.tolist()]
    if len(shapes) != L:
        raise ValueError(f"spatial_shapes has {len(shapes)} levels, sampling_locations {L}")
    if sum(h * w for h, w in shapes) != S:
        raise ValueError(f"spatial_shapes {shapes} cover {sum(h * w for h, w in shapes)} positions, value has {S}")

    # One copy of value as [B*M, D, S]: each level is then a [B*M, D, H, W] view,
    # so grid_sample runs once per level with batch and heads folded together.
    value = value.permute(0, 2, 3, 1).reshape(B * M, D, S)
    # [B, M, Lq, L, P, ...]: heads next to batch, like value.
    locations = sampling_locations.transpose(1, 2)
    weights = attention_weights.transpose(1, 2)
    # Without a gradient to take nothing is kept anyway: checkpointing would only cost.
    recompute = recompute and torch.is_grad_enabled() and (
        value.requires_grad or locations.requires_grad or weights.requires_grad
    )

    output = None
    start = 0
    for level, (h, w) in enumerate(shapes):
        value_l = value[:, :, start : start + h * w].unflatten(-1, (h, w))
        start += h * w
        # grid_sample wants [-1, 1]; the points of a query play the role of the output width.
        grid = (2 * locations[:, :, :, level] - 1).reshape(B * M, Lq, P, 2)
        weights_l = weights[:, :, :, level].reshape(B * M, 1, Lq, P)
        # [B*M, D, Lq, P] samples summed over points: only one level's samples exist at
        # a time (plus what autograd keeps), never all L*P stacked.
        if recompute:
            # A checkpoint per level rather than around the whole function: backward
            # then remakes one level's samples at a time, not all levels' at once.
            # Sampling draws no random numbers, so no RNG state needs restoring.
            contribution = checkpoint(
                _sample_and_weigh, value_l, grid, weights_l, use_reentrant=False, preserve_rng_state=False
            )
        else:
            contribution = _sample_and_weigh(value_l, grid, weights_l)
        output = contribution if output is None else output + contribution
    return output.view(B, M * D, Lq).transpose(1, 2).contiguous()


class _CompiledMSDeformAttn(torch.autograd.Function):
    """Autograd wrapper of the original extension's forward/backward kernels."""

    @staticmethod
    def forward(ctx, value, spatial_shapes, level_start_index, sampling_locations, attention_weights, im2col_step):
        ctx.im2col_step = im2col_step
        ctx.save_for_backward(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)
        return _C.ms_deform_attn_forward(
            value, spatial_shapes, level_start_index, sampling_locations, attention_weights, im2col_step
        )

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):
        grad_value, grad_locations, grad_weights = _C.ms_deform_attn_backward(
            *ctx.saved_tensors, grad_output.contiguous(), ctx.im2col_step
        )
        return grad_value, None, None, grad_locations, grad_weights, None


def use_compiled_kernel(value: Tensor) -> bool:
    """Whether :func:`ms_deform_attn` takes the compiled path for this ``value``.

    Only with the kernel imported, on CUDA, in the dtypes it is built for (it has
    no half-precision version), and not while tracing: a trace (TorchScript, ONNX
    export) must record operators that a file can hold, and the extension's op is
    not one of them. Everything else takes the PyTorch path (the same function).
    """
    return (
        _C is not None
        and value.is_cuda
        and value.dtype in (torch.float32, torch.float64)
        and not torch.jit.is_tracing()
    )


def ms_deform_attn(
    value: Tensor,
    spatial_shapes: Tensor,
    level_start_index: Tensor,
    sampling_locations: Tensor,
    attention_weights: Tensor,
    im2col_step: int = 64,
    recompute: bool = False,
) -> Tensor:
    """:func:`multi_scale_deformable_attention`, by the compiled kernel when :func:`use_compiled_kernel`.

    ``level_start_index`` and ``im2col_step`` are only used by the kernel.
    ``recompute`` applies to the PyTorch path only (less memory, more time; see the
    module docstring): the kernel keeps no samples for backward anyway.
    """
    if use_compiled_kernel(value):
        dtype = value.dtype
        return _CompiledMSDeformAttn.apply(
            value.contiguous(),
            spatial_shapes.contiguous(),
            level_start_index.contiguous(),
            sampling_locations.to(dtype).contiguous(),
            attention_weights.to(dtype).contiguous(),
            im2col_step,
        )
    return multi_scale_deformable_attention(value, spatial_shapes, sampling_locations, attention_weights, recompute)


class MSDeformAttn(nn.Module):
    """Multi-scale deformable attention with the original module's parameter names.

    ``sampling_offsets``, ``attention_weights``, ``value_proj`` and ``output_proj``
    are named and shaped as in Deformable DETR, so its checkpoints load key for key.
    Sampling offsets are laid out [n_heads, n_levels, n_points, (x, y)], attention
    weights [n_heads, n_levels * n_points].

    ``recompute=True`` trades time for memory in training: the sampled values are
    computed again in backward instead of being kept (see :func:`ms_deform_attn`).
    """

    im2col_step = 64  # the compiled kernel's chunk size over the batch

    def __init__(
        self, d_model: int = 256, n_levels: int = 4, n_heads: int = 8, n_points: int = 4, recompute: bool = False
    ):
        super().__init__()
        if d_model % n_heads != 0:
            raise ValueError(f"d_model ({d_model}) must be divisible by n_heads ({n_heads})")
        self.d_model = d_model
        self.n_levels = n_levels
        self.n_heads = n_heads
        self.n_points = n_points
        self.recompute = recompute
        self.sampling_offsets = nn.Linear(d_model, n_heads * n_levels * n_points * 2)
        self.attention_weights = nn.Linear(d_model, n_heads * n_levels * n_points)
        self.value_proj = nn.Linear(d_model, d_model)
        self.output_proj = nn.Linear(d_model, d_model)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """The paper's init: offsets start as a fixed star, attention uniform.

        Head h samples along the direction of angle 2*pi*h/n_heads (scaled so its
        larger component is 1, i.e. to the border of a square), point p at (p + 1)
        times that step, the same on every level.
        """
        M, L, P = self.n_heads, self.n_levels, self.n_points
        nn.init.zeros_(self.sampling_offsets.weight)
        angles = torch.arange(M, dtype=torch.float64) * (2 * math.pi / M)
        directions = torch.stack([angles.cos(), angles.sin()], -1)
        directions = directions / directions.abs().amax(-1, keepdim=True)
        steps = torch.arange(1, P + 1, dtype=torch.float64)
        pattern = directions[:, None, None, :] * steps[None, None, :, None]  # [M, 1, P, 2]
        self.sampling_offsets.bias.copy_(pattern.expand(M, L, P, 2).reshape(-1))
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        for proj in (self.value_proj, self.output_proj):
            nn.init.xavier_uniform_(proj.weight)
            nn.init.zeros_(proj.bias)

    def compute_sampling(
        self, query: Tensor, reference_points: Tensor, spatial_shapes: Tensor
    ) -> Tuple[Tensor, Tensor]:
        """Sampling locations [B, Lq, M, L, P, 2] and attention weights [B, Lq, M, L, P].

        ``reference_points`` [B, Lq, L, 2] are normalised (x, y) and the offsets are
        in pixels of each level; [B, Lq, L, 4] are normalised (cx, cy, w, h) boxes
        and the offsets are in units of half the box size / n_points.
        """
        B, Lq, _ = query.shape
        M, L, P = self.n_heads, self.n_levels, self.n_points
        if reference_points.dim() != 4 or tuple(reference_points.shape[:3]) != (B, Lq, L) or (
            reference_points.shape[-1] not in (2, 4)
        ):
            raise ValueError(
                f"reference_points must be [B, Lq, n_levels, 2] (x, y) or [B, Lq, n_levels, 4] (cx, cy, w, h) "
                f"= [{B}, {Lq}, {L}, 2 or 4], got {list(reference_points.shape)}"
            )
        offsets = self.sampling_offsets(query).view(B, Lq, M, L, P, 2)
        weights = self.attention_weights(query).view(B, Lq, M, L * P).softmax(-1).view(B, Lq, M, L, P)
        ref = reference_points[:, :, None, :, None, :]  # broadcast over heads and points
        if reference_points.shape[-1] == 2:
            # (W, H) per level turns pixel offsets into normalised ones.
            normalizer = spatial_shapes.flip(-1).to(offsets.dtype)[None, None, None, :, None, :]
            locations = ref + offsets / normalizer
        else:
            locations = ref[..., :2] + offsets / P * ref[..., 2:] * 0.5
        return locations, weights

    def forward(
        self,
        query: Tensor,
        reference_points: Tensor,
        input_flatten: Tensor,
        spatial_shapes: Tensor,
        level_start_index: Tensor,
        input_padding_mask: Optional[Tensor] = None,
    ) -> Tensor:
        """
        Args:
            query: [B, Lq, d_model].
            reference_points: [B, Lq, n_levels, 2] normalised (x, y), or
                [B, Lq, n_levels, 4] normalised (cx, cy, w, h) (see :meth:`compute_sampling`).
            input_flatten: [B, S, d_model], levels flattened row-major and concatenated.
            spatial_shapes: long [n_levels, 2], (H, W) of each level; sum of H*W = S.
            level_start_index: long [n_levels], start of each level in S.
            input_padding_mask: bool [B, S], True = padding (its values are zeroed).

        Returns:
            [B, Lq, d_model].
        """
        B, Lq, C = query.shape
        _, S, _ = input_flatten.shape
        if C != self.d_model or input_flatten.shape[0] != B or input_flatten.shape[-1] != self.d_model:
            raise ValueError(
                f"query [B, Lq, {self.d_model}] and input_flatten [B, S, {self.d_model}] expected, "
                f"got {list(query.shape)} and {list(input_flatten.shape)}"
            )
        if tuple(spatial_shapes.shape) != (self.n_levels, 2):
            raise ValueError(f"spatial_shapes must be [{self.n_levels}, 2] (H, W), got {list(spatial_shapes.shape)}")
        if tuple(level_start_index.shape) != (self.n_levels,):
            raise ValueError(f"level_start_index must be [{self.n_levels}], got {list(level_start_index.shape)}")
        total = int((spatial_shapes[:, 0] * spatial_shapes[:, 1]).sum())
        if total != S:
            raise ValueError(
                f"spatial_shapes {spatial_shapes.tolist()} cover {total} positions but input_flatten has S={S}"
            )

        value = self.value_proj(input_flatten)
        if input_padding_mask is not None:
            if tuple(input_padding_mask.shape) != (B, S):
                raise ValueError(f"input_padding_mask must be [{B}, {S}], got {list(input_padding_mask.shape)}")
            value = value.masked_fill(input_padding_mask[..., None], 0.0)
        value = value.view(B, S, self.n_heads, self.d_model // self.n_heads)
        locations, weights = self.compute_sampling(query, reference_points, spatial_shapes)
        output = ms_deform_attn(
            value, spatial_shapes, level_start_index, locations, weights, self.im2col_step, recompute=self.recompute
        )
        return self.output_proj(output)
