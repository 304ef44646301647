#!/usr/bin/env python
"""Encoder pretexts' offline steps.

    # discrete MIM: a k-means codebook of the pretraining images' patches
    python tools/pretext.py codebook --config-file CFG.yaml --output output/pretext/codebook.npz \\
        [--num-codes 512] [--pool 4] [--max-images 1000] [--max-patches 200000] [--seed 0] \\
        [--dataset NAME_OR_FOLDER ...] [KEY VALUE ...]
    # then train with MODEL.PRETEXT.TASK mim_discrete MODEL.PRETEXT.CODEBOOK output/pretext/codebook.npz

The images are those of ``--dataset`` (repeatable; a registered Detectron2 dataset name or
an image folder) or else of the config's ``DATASETS.TRAIN``, resized as at test time
(``INPUT.MIN_SIZE_TEST`` / ``MAX_SIZE_TEST``, deterministic) and normalised with
``MODEL.PIXEL_MEAN`` / ``PIXEL_STD``; patches are ``MODEL.PRETEXT.PATCH_SIZE`` px. Trailing
KEY VALUE pairs override the yaml config.
"""
import argparse
import logging
import sys
import time

import numpy as np
import torch

import updetr_d2  # noqa: F401  (compat fixes and registration, before Detectron2 is used)
from detectron2.data import DatasetMapper, build_detection_test_loader
from detectron2.data import transforms as T
from detectron2.utils.logger import setup_logger

from updetr_d2.config import load_yaml_config
from updetr_d2.engine.launch import dataset_records
from updetr_d2.methods.pretext.tokenizer import build_codebook, save_codebook

logger = logging.getLogger("updetr_d2")


def _normalised_images(loader, pixel_mean, pixel_std, total, log_every=100):
    """The loader's images as normalised float tensors, logging progress."""
    mean = torch.tensor(pixel_mean, dtype=torch.float32).view(-1, 1, 1)
    std = torch.tensor(pixel_std, dtype=torch.float32).view(-1, 1, 1)
    start = time.perf_counter()
    for i, (item,) in enumerate(loader, 1):
        image = item["image"].float()
        if image.shape[0] != mean.shape[0]:
            raise SystemExit(f"error: {item.get('file_name')}: {image.shape[0]} channels but MODEL.PIXEL_MEAN has "
                             f"{mean.shape[0]} values")
        yield (image - mean) / std
        if i % log_every == 0 or i == total:
            logger.info("codebook: %d/%d images read (%.1f s)", i, total, time.perf_counter() - start)


def cmd_codebook(args) -> int:
    cfg = load_yaml_config(args.config_file, args.opts)
    names = list(args.dataset or cfg.DATASETS.TRAIN)
    if not names:
        raise SystemExit("error: give --dataset or DATASETS.TRAIN")
    records = dataset_records(names, "--dataset" if args.dataset else "DATASETS.TRAIN")
    if not records:
        raise SystemExit(f"error: no images in {names}")
    if 0 < args.max_images < len(records):
        # A seeded random subset, not the first images: one folder or class of a sorted
        # dataset should not make the whole codebook.
        keep = np.sort(np.random.default_rng(args.seed).choice(len(records), args.max_images, replace=False))
        records = [records[i] for i in keep]
    patch = int(cfg.MODEL.PRETEXT.PATCH_SIZE)
    logger.info("codebook: %d images of %s, %d-px patches, %d codes", len(records), names, patch, args.num_codes)
    mapper = DatasetMapper(is_train=False,
                           augmentations=[T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)],
                           image_format=cfg.INPUT.FORMAT)
    # Detectron2's test loader keeps the dataset order (one process), so the reservoir
    # sample, and the codebook, depend on the seed only.
    loader = build_detection_test_loader(records, mapper=mapper, num_workers=args.num_workers)
    images = _normalised_images(loader, cfg.MODEL.PIXEL_MEAN, cfg.MODEL.PIXEL_STD, len(records))
    centroids = build_codebook(images, patch, args.num_codes, pool=args.pool, max_patches=args.max_patches,
                               seed=args.seed, iterations=args.iterations)
    save_codebook(args.output, centroids, patch, args.pool, cfg.MODEL.PIXEL_MEAN, cfg.MODEL.PIXEL_STD)
    print(f"codebook: {centroids.shape[0]} codes of {centroids.shape[1]} values -> {args.output}")
    return 0


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("codebook", help="discrete MIM: a k-means codebook of image patches")
    c.add_argument("--config-file", default="", help="yaml config (MODEL.PRETEXT.PATCH_SIZE, INPUT.*, DATASETS.TRAIN)")
    c.add_argument("--output", required=True, help="the codebook .npz to write")
    c.add_argument("--dataset", action="append", default=[],
                   help="registered dataset name or image folder (repeatable; default DATASETS.TRAIN)")
    c.add_argument("--num-codes", type=int, default=512, help="codebook size K")
    c.add_argument("--pool", type=int, default=4, help="a patch is described by its pixels pooled to POOL x POOL")
    c.add_argument("--max-images", type=int, default=1000, help="images read (a seeded random subset; 0: all)")
    c.add_argument("--max-patches", type=int, default=200_000, help="patches clustered (a uniform sample)")
    c.add_argument("--iterations", type=int, default=20, help="k-means iterations")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--num-workers", type=int, default=2, help="data loading workers")
    for s in (c,):
        s.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    setup_logger(name="updetr_d2")
    setup_logger(name="detectron2")
    commands = {"codebook": cmd_codebook}
    return commands[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
