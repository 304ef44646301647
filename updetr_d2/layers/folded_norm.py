"""Frozen batch norm folded into the convolution before it.

A frozen batch norm is an affine map per channel, ``y = x * s + b`` with
``s = weight / sqrt(running_var + eps)`` and ``b = bias - running_mean * s``, so
``norm(conv(x, W)) = conv(x, W * s) + b``: the same function with the scale applied to the
weights (a few thousand numbers per layer) instead of to every activation. On a CPU, where
the two extra passes over each activation map and their backward are memory-bound, this
took a DETR-R50 training step (batch 2, 800x1066, 2 cores) from 8.74 to 7.92 s
(``benchmarks/detr_train_step.py``). Gradients
are the same function's (autograd goes through ``W * s``; a trainable convolution in front
of a frozen norm still gets its weight gradient); results differ from the unfolded layer by
float rounding only.

:func:`fold_frozen_batchnorm` switches Detectron2 ``Conv2d`` layers whose ``norm`` is a
``FrozenBatchNorm2d`` to :class:`FoldedNormConv2d` in place. Module names, parameters and
buffers are untouched, so checkpoints load either way, and the norm's statistics are read at
every call (a checkpoint loaded after folding is used as loaded).
"""
import torch
import torch.nn.functional as F
from detectron2.layers import Conv2d, FrozenBatchNorm2d
from torch import nn

__all__ = ["FoldedNormConv2d", "fold_frozen_batchnorm"]


class FoldedNormConv2d(Conv2d):
    """Detectron2's ``Conv2d`` with a ``FrozenBatchNorm2d`` ``norm``, computed folded."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        norm = self.norm
        scale = norm.weight * (norm.running_var + norm.eps).rsqrt()
        shift = norm.bias - norm.running_mean * scale
        if self.bias is not None:
            shift = shift + self.bias * scale
        weight = self.weight * scale.view(-1, 1, 1, 1)
        x = F.conv2d(x, weight, shift, self.stride, self.padding, self.dilation, self.groups)
        return self.activation(x) if self.activation is not None else x


def fold_frozen_batchnorm(module: nn.Module) -> int:
    """Folds every frozen-norm ``Conv2d`` under ``module`` (see the module docstring);
    returns how many were folded."""
    count = 0
    for child in module.modules():
        if type(child) is Conv2d and isinstance(child.norm, FrozenBatchNorm2d) and child.padding_mode == "zeros":
            child.__class__ = FoldedNormConv2d
            count += 1
    return count
