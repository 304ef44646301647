"""One entry point for both config routes: a yaml file (Detectron2's CfgNode,
with ``add_updetr_config``) or a LazyConfig ``.py`` file, told apart by extension."""
import logging

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import LazyConfig, get_cfg
from detectron2.engine import default_setup
from detectron2.evaluation import verify_results

from ..config import add_updetr_config
from . import lazy
from .trainer import Trainer

logger = logging.getLogger("detectron2")


def is_lazy_config(path: str) -> bool:
    return path.endswith(".py")


def _device_or_cpu(device: str) -> str:
    """A config written for a GPU still runs on a machine without one."""
    if device.startswith("cuda") and not torch.cuda.is_available():
        logger.warning("Config asks for device '%s' but CUDA is not available: using the CPU.", device)
        return "cpu"
    return device


def setup(args):
    """Load, override and freeze the config named by ``args``; set up logging and the output dir."""
    if not args.config_file:
        raise ValueError("--config-file is required (a yaml file or a LazyConfig .py file)")
    if is_lazy_config(args.config_file):
        cfg = LazyConfig.load(args.config_file)
        cfg = LazyConfig.apply_overrides(cfg, args.opts)
        cfg.train.device = _device_or_cpu(cfg.train.get("device", "cpu"))
    else:
        cfg = get_cfg()
        add_updetr_config(cfg)
        cfg.merge_from_file(args.config_file)
        cfg.merge_from_list(args.opts)
        cfg.MODEL.DEVICE = _device_or_cpu(cfg.MODEL.DEVICE)
        cfg.freeze()
    default_setup(cfg, args)
    return cfg


def main(args):
    """Train (optionally resuming) or evaluate; returns the evaluation results."""
    cfg = setup(args)
    if is_lazy_config(args.config_file):
        if args.eval_only:
            return lazy.do_eval_only(cfg)
        return lazy.do_train(cfg, resume=args.resume)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        DetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(
            cfg.MODEL.WEIGHTS, resume=args.resume
        )
        results = Trainer.test(cfg, model)
        verify_results(cfg, results)
        return results
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()
