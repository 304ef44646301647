"""Dropout whose random mask is cheaper to draw on a CPU.

PyTorch's CPU dropout draws one random number per element with ``bernoulli_``, which
runs at ~100 M elements/s on a 2-core machine: in a DETR-R50 training step at 800x1066
the transformer's dropouts (encoder attention maps of 850 x 850 tokens per head among
them) draw tens of millions. With this mask (and attention computed as in
:func:`.attention.attention_with_cpu_dropout`) the step went from 7.92 to 6.96 s in fp32
and from 5.33 to 3.40 s under bf16 autocast (batch 2, 2 cores,
``benchmarks/detr_train_step.py``). Here the mask comes from 32-bit random integers, two 15-bit uniform lanes per
integer, compared with ``round(p * 2^15)``: half the generator calls and no float
conversion. The drop probability is ``p`` rounded to a multiple of 2^-15 (0.1 becomes
0.100006), the scale is ``1 / (1 - p)`` as in ``nn.Dropout``, and ``torch.manual_seed``
makes it reproducible as before. On other devices it is ``F.dropout``.

The mask is kept as bool for backward (as PyTorch's own dropout keeps it).
"""
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["Dropout", "dropout", "keep_mask"]

_LANE_BITS = 15
_LANE_RANGE = 1 << _LANE_BITS


def keep_mask(shape, p: float) -> Tensor:
    """A CPU bool mask of ``shape``: each element True (kept) with probability ``1 - p``."""
    n = math.prod(shape)
    # int32 random_() is uniform on [0, 2^31): the low 16-bit lane has 16 random bits, the
    # high one 15; 15 of each are used.
    words = torch.empty((n + 1) // 2, dtype=torch.int32).random_()
    lanes = words.view(torch.int16)[:n].bitwise_and(_LANE_RANGE - 1)
    return lanes.ge(round(p * _LANE_RANGE)).view(shape)


class _MaskAndScale(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, mask: Tensor, scale: float) -> Tensor:
        ctx.save_for_backward(mask)
        ctx.scale = scale
        return x * mask if scale == 1.0 else x * mask * scale

    @staticmethod
    def backward(ctx, grad: Tensor):
        (mask,) = ctx.saved_tensors
        return (grad * mask if ctx.scale == 1.0 else grad * mask * ctx.scale), None, None


def dropout(x: Tensor, p: float, training: bool = True, rescale: bool = True) -> Tensor:
    """``F.dropout(x, p, training)`` with the cheaper mask on a CPU (see the module
    docstring). ``rescale=False`` leaves out the ``1 / (1 - p)`` factor for a caller that
    applies it to something smaller (attention scales its output, not its weights)."""
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu" or p >= 1.0:
        dropped = F.dropout(x, p, training)
        return dropped if rescale else dropped * (1.0 - p)
    return _MaskAndScale.apply(x, keep_mask(x.shape, p), 1.0 / (1.0 - p) if rescale else 1.0)


class Dropout(nn.Dropout):
    """``nn.Dropout`` (same arguments, no parameters, so state dicts are unchanged) drawing
    its mask with :func:`keep_mask` on a CPU."""

    def forward(self, x: Tensor) -> Tensor:
        if self.inplace:
            return F.dropout(x, self.p, self.training, inplace=True)
        return dropout(x, self.p, self.training)
