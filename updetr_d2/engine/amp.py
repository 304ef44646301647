"""Mixed precision for training and inference, on CPUs as on GPUs.

Detectron2 v0.6's ``AMPTrainer`` asserts CUDA, so a CPU user of Detectron2 trains in fp32
only. CPUs with AVX-512 BF16 or AMX multiply bf16 matrices faster than fp32 (~2.1x on the
2-core machine of ``benchmarks/README.md``, whose speed benchmarks measure both rates), and
bf16 keeps fp32's exponent range, so it needs no loss scaling. Hence:

* CPU: bf16 autocast when the CPU supports it; otherwise fp32 with one log line.
* CUDA: fp16 autocast with a gradient scaler (Detectron2's behaviour), or bf16 without
  one when ``precision`` asks for it.

Parameters, gradients and optimizer state stay fp32 (autocast casts per op); the
prediction heads, the matcher and the losses run in fp32 (``layers/precision.py``).

Config: yaml ``SOLVER.AMP.ENABLED``, ``SOLVER.AMP.PRECISION`` ("auto", "bfloat16",
"float16"), ``TEST.AMP.ENABLED`` (inference); lazy ``train.amp.enabled``,
``train.amp.precision``, ``train.amp.inference``.
"""
import contextlib
import logging
import time
from typing import Optional

import torch
from detectron2.engine import SimpleTrainer

__all__ = ["MixedPrecisionTrainer", "PRECISIONS", "autocast_dtype", "cpu_supports_bf16", "inference_autocast",
           "with_mixed_precision"]

logger = logging.getLogger(__name__)

PRECISIONS = ("auto", "bfloat16", "float16")
_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}


def cpu_supports_bf16() -> bool:
    """Whether this CPU runs bf16 natively (oneDNN's check: AVX-512 BF16 or AMX)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a build without oneDNN
        return False


def autocast_dtype(device_type: str, precision: str = "auto", option: str = "SOLVER.AMP.PRECISION",
                   bf16_supported: Optional[bool] = None) -> Optional[torch.dtype]:
    """The autocast dtype for ``device_type`` ("cpu" or "cuda") and the configured
    ``precision`` (named by ``option`` in errors), or None (fp32) on a CPU without bf16,
    which is logged. ``bf16_supported``: the CPU check's answer (default: asked)."""
    if precision not in PRECISIONS:
        raise ValueError(f"{option} must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    if device_type == "cuda":
        return torch.float16 if precision == "auto" else _DTYPES[precision]
    if device_type != "cpu":
        raise ValueError(f"mixed precision runs on 'cpu' or 'cuda', not on {device_type!r}")
    if precision == "float16":
        raise ValueError(f"{option} float16 needs a GPU; on a CPU use bfloat16 (or auto)")
    supported = cpu_supports_bf16() if bf16_supported is None else bf16_supported
    if not supported:
        logger.info("Mixed precision: this CPU has no native bf16 (AVX-512 BF16 or AMX), so it runs in fp32.")
        return None
    return torch.bfloat16


def autocast_context(device_type: str, dtype: Optional[torch.dtype]):
    """``torch.autocast`` for ``dtype``, or nothing when ``dtype`` is None (fp32)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type, dtype=dtype)


def inference_autocast(device: str, enabled: bool, precision: str = "auto", option: str = "TEST.AMP.ENABLED"):
    """The context evaluation runs in: autocast at ``precision`` when ``enabled``."""
    if not enabled:
        return contextlib.nullcontext()
    device_type = torch.device(device).type
    return autocast_context(device_type, autocast_dtype(device_type, precision, option))


class MixedPrecisionTrainer(SimpleTrainer):
    """``SimpleTrainer`` whose forward runs under autocast (``dtype``; None: fp32), with a
    gradient scaler for fp16 only (bf16 has fp32's range). The scaler's state is part of
    the trainer's state, so a resumed run continues with its scale."""

    def __init__(self, model, data_loader, optimizer, device_type: str, dtype: Optional[torch.dtype]):
        super().__init__(model, data_loader, optimizer)
        self._setup(device_type, dtype)

    @classmethod
    def replacing(cls, trainer: SimpleTrainer, device_type: str, dtype: Optional[torch.dtype]):
        """The same model, optimizer and running data-loader iterator as ``trainer`` (a
        second ``iter()`` would start a second set of loader workers)."""
        new = cls.__new__(cls)
        new.__dict__.update(trainer.__dict__)
        new._setup(device_type, dtype)
        return new

    def _setup(self, device_type: str, dtype: Optional[torch.dtype]):
        self.device_type = device_type
        self.dtype = dtype
        self.grad_scaler = torch.amp.GradScaler(device_type) if dtype == torch.float16 else None
        logger.info("Mixed precision training: %s autocast on %s%s.", str(dtype or "no (fp32)").replace("torch.", ""),
                    device_type, ", gradient scaler" if self.grad_scaler else "")

    def run_step(self):
        assert self.model.training, "[MixedPrecisionTrainer] model was changed to eval mode!"
        start = time.perf_counter()
        data = next(self._data_loader_iter)
        data_time = time.perf_counter() - start
        with autocast_context(self.device_type, self.dtype):
            loss_dict = self.model(data)
            if isinstance(loss_dict, torch.Tensor):
                losses, loss_dict = loss_dict, {"total_loss": loss_dict}
            else:
                losses = sum(loss_dict.values())
        self.optimizer.zero_grad()
        # Backward outside autocast, as PyTorch recommends: each op's backward runs in the
        # dtype its forward chose.
        (self.grad_scaler.scale(losses) if self.grad_scaler else losses).backward()
        self._write_metrics(loss_dict, data_time)
        if self.grad_scaler:
            # step() unscales before the optimizer's own step, so gradient clipping (a
            # wrapped optimizer step) sees true gradients; steps with inf/NaN are skipped.
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
        else:
            self.optimizer.step()

    def state_dict(self):
        ret = super().state_dict()
        if self.grad_scaler:
            ret["grad_scaler"] = self.grad_scaler.state_dict()
        return ret

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        if self.grad_scaler and "grad_scaler" in state_dict:
            self.grad_scaler.load_state_dict(state_dict["grad_scaler"])


def with_mixed_precision(trainer: SimpleTrainer, device: str, precision: str, option: str) -> MixedPrecisionTrainer:
    """``trainer`` (its model, optimizer and running loader) training under the autocast that
    ``precision`` (named ``option`` in errors) gives on ``device``: both config routes' AMP."""
    device_type = torch.device(device).type
    return MixedPrecisionTrainer.replacing(trainer, device_type, autocast_dtype(device_type, precision, option))
