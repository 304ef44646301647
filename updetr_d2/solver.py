"""DETR's optimiser, the Detectron2 way: AdamW with a lower learning rate for the
backbone, and gradient clipping on the norm of the whole model's gradient."""
from typing import Dict, List

import torch
from detectron2.solver import build_optimizer as build_d2_optimizer
from detectron2.solver.build import maybe_add_gradient_clipping


def detr_param_groups(
    model: torch.nn.Module, base_lr: float, weight_decay: float, backbone_multiplier: float = 0.1,
    backbone_prefix: str = "backbone.",
) -> List[Dict]:
    """Two parameter groups: the CNN backbone at ``base_lr * backbone_multiplier`` and
    everything else at ``base_lr``; frozen parameters are left out. DETR decays every
    parameter, norms and biases included."""
    backbone, rest = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (backbone if name.startswith(backbone_prefix) else rest).append(param)
    groups = [{"params": rest, "lr": base_lr, "weight_decay": weight_decay}]
    if backbone:
        groups.append({"params": backbone, "lr": base_lr * backbone_multiplier, "weight_decay": weight_decay})
    return groups


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


def adamw(params, lr: float, weight_decay: float = 1e-4, clip_max_norm: float = 0.0, **kwargs):
    """AdamW over ``params`` with optional full-model clipping (for LazyConfig files)."""
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, **kwargs)
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
    params = detr_param_groups(model, solver.BASE_LR, solver.WEIGHT_DECAY, solver.BACKBONE_MULTIPLIER)
    optimizer = torch.optim.AdamW(params, lr=solver.BASE_LR, weight_decay=solver.WEIGHT_DECAY)
    clip = solver.CLIP_GRADIENTS
    if clip.ENABLED and clip.CLIP_TYPE == "full_model":
        return with_full_model_grad_clip(optimizer, clip.CLIP_VALUE)
    return maybe_add_gradient_clipping(cfg, optimizer)
