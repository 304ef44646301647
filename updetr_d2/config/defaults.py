"""yaml-config keys of updetr_d2 (``add_updetr_config``); LazyConfig files under
``configs/`` set the same constructor arguments directly."""
import torch


def default_device() -> str:
    """The device a config runs on unless it says otherwise: the GPU when there is one."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def add_updetr_config(cfg):
    """Add the project's keys and defaults to a Detectron2 ``CfgNode`` (in place).

    Idempotent, so method-specific ``add_*_config`` functions can call it first.
    """
    # Detectron2 defaults to CUDA; we run wherever the machine can.
    cfg.MODEL.DEVICE = default_device()
    return cfg
