"""One entry point for both config routes: a yaml file (Detectron2's CfgNode,
with ``add_updetr_config``) or a LazyConfig ``.py`` file, told apart by extension."""
import logging
import os

import torch
from detectron2.config import LazyConfig
from detectron2.engine import default_setup
from detectron2.evaluation import verify_results
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from detectron2.data import DatasetCatalog

from ..checkpoint import DetrCheckpointer
from ..config import apply_lazy_overrides, load_yaml_config, run_config_checks
from ..data import register_unlabeled_folder
from ..data.datasets import CocoDatasetError, register_coco_json
from . import lazy
from ..data.checks import InputCheckError
from .input_checks import run_input_checks
from .threads import configure_threads
from .trainer import Trainer

logger = logging.getLogger("detectron2")


def is_lazy_config(path: str) -> bool:
    return path.endswith(".py")


def device_or_cpu(device: str) -> str:
    """A config written for a GPU still runs on a machine without one."""
    if device.startswith("cuda") and not torch.cuda.is_available():
        logger.warning("Config asks for device '%s' but CUDA is not available: using the CPU.", device)
        return "cpu"
    return device


def register_image_folders(names):
    """A training "dataset" that is a folder path and not a registered name becomes an
    unlabeled image folder (for pretraining), e.g. ``DATASETS.TRAIN "('/data/images',)"``."""
    for name in [names] if isinstance(names, str) else names:
        if name not in DatasetCatalog.list() and os.path.isdir(name):
            register_unlabeled_folder(name, name)


def dataset_records(names, option: str = "--dataset"):
    """The records of registered datasets or image folders (registered on the way), in
    order; a name that is neither is an error naming it and the ``option`` it came from."""
    names = [names] if isinstance(names, str) else list(names)
    register_image_folders(names)
    records = []
    for name in names:
        if name not in DatasetCatalog.list():
            raise SystemExit(f"error: {option} {name!r} is neither a registered dataset nor a folder")
        records.extend(DatasetCatalog.get(name))
    return records


def register_coco_datasets(args):
    """``--coco-dataset NAME JSON IMAGE_DIR`` (repeatable, ``args.coco_dataset``): registers
    each NAME in this process, so that the config can name it; a bad value stops with an
    error naming the option and the file. Returns ``(name, counts)`` of the new ones."""
    registered = []
    for name, json_file, image_root in getattr(args, "coco_dataset", None) or ():
        try:
            counts = register_coco_json(name, json_file, image_root, option="--coco-dataset")
        except CocoDatasetError as e:
            raise SystemExit(f"error: {e}") from None
        if counts is not None:
            registered.append((name, counts))
    return registered


def setup(args):
    """Load, override and freeze the config named by ``args``; set up logging and the output dir."""
    if not args.config_file:
        raise ValueError("--config-file is required (a yaml file or a LazyConfig .py file)")
    # Here, not in the tool: every process of a multi-GPU launch runs setup.
    coco_datasets = register_coco_datasets(args)
    if is_lazy_config(args.config_file):
        cfg = LazyConfig.load(args.config_file)
        cfg = apply_lazy_overrides(cfg, args.opts)
        cfg.train.device = device_or_cpu(cfg.train.get("device", "cpu"))
        register_image_folders(cfg.dataloader.train.dataset.get("names", ()))
    else:
        cfg = load_yaml_config(args.config_file, args.opts)
        cfg.MODEL.DEVICE = device_or_cpu(cfg.MODEL.DEVICE)
        register_image_folders(cfg.DATASETS.TRAIN)
        cfg.freeze()
    run_config_checks(cfg)  # methods' checks of key combinations, before anything is built
    default_setup(cfg, args)
    # Detectron2 sets up its own loggers only; the project's messages go to the same places.
    output_dir = cfg.train.output_dir if is_lazy_config(args.config_file) else cfg.OUTPUT_DIR
    setup_logger(output_dir, distributed_rank=comm.get_rank(), name="updetr_d2")
    for name, counts in coco_datasets:
        logging.getLogger("updetr_d2").info(
            "Registered dataset '%s' (--coco-dataset): %d images, %d annotations, %d categories "
            "(the model's class count must be %d)", name, counts["images"], counts["annotations"],
            counts["categories"], counts["categories"])
    return cfg


def main(args):
    """Train (optionally resuming) or evaluate; returns the evaluation results."""
    cfg = setup(args)
    # After setup, so the choice is logged; each process of a multi-process run takes its
    # share of this machine's cores (comm.get_local_size() is 1 without one).
    configure_threads(comm.get_local_size())
    if not getattr(args, "skip_input_checks", False):
        # The main process scans (the records are the same in every process); the others
        # wait, so that none builds anything for a run that stops here.
        if comm.is_main_process():
            try:
                run_input_checks(cfg, eval_only=args.eval_only)
            except InputCheckError as e:
                # The message names the files and keys; a traceback would bury it.
                logger.error("%s", e)
                raise SystemExit(f"error: {e}") from None
        comm.synchronize()
    if is_lazy_config(args.config_file):
        if args.eval_only:
            return lazy.do_eval_only(cfg)
        return lazy.do_train(cfg, resume=args.resume)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        DetrCheckpointer.from_config(cfg, model, save_dir=cfg.OUTPUT_DIR).resume_or_load(
            cfg.MODEL.WEIGHTS, resume=args.resume
        )
        results = Trainer.test(cfg, model)
        verify_results(cfg, results)
        return results
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()
