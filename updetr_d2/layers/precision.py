"""Parts that stay in float32 under mixed precision.

Under ``torch.autocast`` (bf16 on a CPU, fp16/bf16 on a GPU) the convolutions, matmuls and
attention run in the low precision; what follows them is kept in float32 on purpose:

* the prediction heads: a box is ``sigmoid(MLP(h) [+ logit(reference)])`` and bf16 keeps 8
  bits of mantissa, i.e. a coordinate within ~0.4 % of the image (4 px at 1066 px), and
  the refinement adds small deltas to large logits, which a low precision loses;
* the matcher and the losses: the Hungarian costs compare GIoUs and L1 distances that
  differ in the third digit, and the losses are sums over many queries.

:func:`float32_region` wraps a function so that it runs with autocast off and its
floating-point tensor arguments (also inside dicts, lists and tuples) in float32; for a
float32 model it changes nothing."""
import contextlib
import functools
from typing import Any, Callable

import torch

__all__ = ["autocast_active", "float32_region", "to_float32"]

_DEVICE_TYPES = ("cpu", "cuda")


def autocast_active() -> bool:
    """Whether an autocast region is open for any device type this project runs on."""
    return any(torch.is_autocast_enabled(t) for t in _DEVICE_TYPES if t == "cpu" or torch.cuda.is_available())


def to_float32(tree: Any) -> Any:
    """``tree`` with every floating-point tensor (in dicts, lists, tuples) cast to float32;
    anything else (integer tensors, objects) unchanged."""
    if isinstance(tree, torch.Tensor):
        return tree.float() if tree.is_floating_point() and tree.dtype != torch.float32 else tree
    if isinstance(tree, dict):
        return type(tree)((k, to_float32(v)) for k, v in tree.items())
    if isinstance(tree, (list, tuple)) and not hasattr(tree, "_fields"):
        return type(tree)(to_float32(v) for v in tree)
    return tree


def float32_region(fn: Callable) -> Callable:
    """Decorator: ``fn`` runs in float32: autocast off, floating tensor arguments cast
    (a no-op for float32 tensors, so a float32 model computes exactly what it did)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        # Cast even with autocast already off: a region nested in another one (a loss
        # route's criterion call) may be handed low-precision tensors made before it.
        args, kwargs = to_float32(args), to_float32(kwargs)
        if not autocast_active():
            return fn(*args, **kwargs)
        with torch.autocast("cpu", enabled=False), _cuda_autocast_off():
            return fn(*args, **kwargs)

    return wrapper


def _cuda_autocast_off():
    return torch.autocast("cuda", enabled=False) if torch.cuda.is_available() else contextlib.nullcontext()
