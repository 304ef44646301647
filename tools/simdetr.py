#!/usr/bin/env python
"""SimDETR pretraining's offline steps (README "SimDETR pretraining").

    # A: proposals and region embeddings from a frozen extractor (resumes; --num-processes N)
    python tools/simdetr.py proposals --config-file projects/SimDETR/configs/proposals_effnet_lite0.yaml \\
        --dataset /data/unlabeled_images --output output/simdetr/proposals
    # B: K pseudo-classes by spherical k-means -> output/simdetr/targets/round_000.json
    python tools/simdetr.py cluster --proposals output/simdetr/proposals --output output/simdetr/targets \\
        SIMDETR.CLUSTERING.NUM_CLUSTERS 256
    # C and D: tools/train_net.py with a projects/SimDETR/configs pretraining config
    # D as a standalone step: relabel the images with a trained detector (the next round)
    python tools/simdetr.py relabel --config-file CFG.yaml MODEL.WEIGHTS output/.../model_final.pth
    # look at a round: each image with its targets, coloured and named by pseudo-class
    python tools/simdetr.py draw --targets output/simdetr/targets --output output/simdetr/pictures

``--dataset`` is a registered Detectron2 dataset name or an image folder. Trailing KEY VALUE
pairs override the yaml config (``SIMDETR.*``, ``INPUT.*``, ``MODEL.*``).
"""
import argparse
import json
import logging
import multiprocessing
import os
import sys

import torch

import updetr_d2  # noqa: F401  (compat fixes and registration, before Detectron2 is used)
from detectron2.utils.logger import setup_logger

from updetr_d2.config import load_yaml_config
from updetr_d2.engine.launch import dataset_records, device_or_cpu
from updetr_d2.methods import simdetr

logger = logging.getLogger("updetr_d2")


def _config(args):
    cfg = load_yaml_config(args.config_file, args.opts)
    cfg.MODEL.DEVICE = device_or_cpu(cfg.MODEL.DEVICE)
    return cfg


def _extract_shard(args, shard_index, num_shards, threads):
    if threads:  # a spawned process: its own logger and its share of the cores
        setup_logger(name="updetr_d2", distributed_rank=shard_index)
    if args.threads or threads:
        torch.set_num_threads(args.threads or threads)
    cfg = _config(args)
    extractor = simdetr.FeatureExtractor.from_config(cfg)
    return simdetr.extract_proposals(
        extractor, dataset_records(args.dataset), args.output, simdetr.proposal_params(cfg),
        min_size=cfg.INPUT.MIN_SIZE_TEST, max_size=cfg.INPUT.MAX_SIZE_TEST, image_format=cfg.INPUT.FORMAT,
        chunk_size=args.chunk_size, num_workers=args.num_workers, shard_index=shard_index,
        num_shards=num_shards, source=args.dataset, max_chunks=args.max_chunks,
        extractor_id=" ".join(str(v) for v in (cfg.MODEL.BACKBONE.NAME, cfg.MODEL.WEIGHTS, list(cfg.MODEL.PIXEL_MEAN),
                                                list(cfg.MODEL.PIXEL_STD), cfg.INPUT.FORMAT)),
    )


def cmd_proposals(args) -> int:
    if args.num_processes > 1:
        # Local processes split the chunks; each gets its share of the cores.
        threads = max(1, (os.cpu_count() or 1) // args.num_processes)
        ctx = multiprocessing.get_context("spawn")
        procs = [ctx.Process(target=_extract_shard, args=(args, i, args.num_processes, threads))
                 for i in range(args.num_processes)]
        for p in procs:
            p.start()
        for p in procs:
            p.join()
        if any(p.exitcode for p in procs):
            print("error: a stage A process failed; rerun the same command to resume", file=sys.stderr)
            return 1
    else:
        written, before = _extract_shard(args, args.shard_index, args.num_shards, 0)
        print(f"stage A: {written} chunks written now, {before} were already done (shard "
              f"{args.shard_index}/{args.num_shards})")
    try:
        proposals = simdetr.load_proposals(args.output)
    except FileNotFoundError as e:  # other shards still running or to run
        print(e)
        return 0
    path = os.path.join(args.output, "proposals.json")
    simdetr.write_class_agnostic_json(proposals, path)
    counts = [len(b) for b in proposals.boxes]
    print(f"stage A done: {sum(counts)} proposals on {len(counts)} images "
          f"({sum(c < 2 for c in counts)} with fewer than 2) -> {path}")
    return 0


def cmd_cluster(args) -> int:
    cfg = _config(args)
    summary = simdetr.cluster_proposals(args.proposals, args.output, simdetr.clustering_params(cfg))
    print(json.dumps(summary, indent=1))
    return 0


def cmd_relabel(args) -> int:
    from updetr_d2.checkpoint import DetrCheckpointer
    from updetr_d2.engine.trainer import Trainer

    cfg = _config(args)
    targets = args.targets or cfg.SIMDETR.TARGETS_DIR
    if not targets:
        raise SystemExit("error: give --targets or SIMDETR.TARGETS_DIR")
    model = Trainer.build_model(cfg)
    DetrCheckpointer.from_config(cfg, model).load(cfg.MODEL.WEIGHTS)
    rounds = simdetr.PseudoLabelRounds(targets)
    round_index = args.round if args.round >= 0 else max(r for r, _ in rounds.rounds()) + 1
    records, loader = simdetr.relabel_loader(cfg.DATASETS.TRAIN, cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST,
                                             cfg.INPUT.FORMAT, cfg.DATALOADER.NUM_WORKERS)
    coco = simdetr.relabel(model, records, loader, simdetr.self_training_params(cfg), model.num_classes,
                           info={"description": "SimDETR self-training (relabel tool)", "round": round_index,
                                 "weights": cfg.MODEL.WEIGHTS})
    path = rounds.write(round_index, coco)
    print(f"round {round_index}: {json.dumps(coco['info']['statistics'])} -> {path}")
    return 0


def cmd_draw(args) -> int:
    import numpy as np
    from detectron2.data.detection_utils import read_image
    from detectron2.utils.visualizer import Visualizer

    rounds = simdetr.PseudoLabelRounds(args.targets)
    round_index, targets = rounds.load(None if args.round < 0 else args.round)
    os.makedirs(args.output, exist_ok=True)
    for file_name in sorted(targets)[: args.num_images]:
        boxes, labels = targets[file_name]
        vis = Visualizer(read_image(file_name, format="RGB"))
        # One colour per pseudo-class, the same in every picture.
        colours = [tuple(np.random.default_rng(int(k)).uniform(0.2, 1.0, 3)) for k in labels]
        vis.overlay_instances(boxes=boxes, labels=[f"c{int(k) + 1}" for k in labels], assigned_colors=colours)
        out = os.path.join(args.output, f"round{round_index:03d}_{os.path.splitext(os.path.basename(file_name))[0]}.png")
        vis.get_output().save(out)
    print(f"round {round_index}: {min(args.num_images, len(targets))} pictures in {args.output}")
    return 0


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("proposals", help="stage A: proposals and region embeddings")
    p.add_argument("--config-file", default="", help="extractor yaml (MODEL.BACKBONE, SIMDETR.*)")
    p.add_argument("--dataset", required=True, help="registered dataset name or image folder")
    p.add_argument("--output", required=True, help="folder for the chunks (a rerun resumes)")
    p.add_argument("--num-workers", type=int, default=2, help="data loading workers per process")
    p.add_argument("--num-processes", type=int, default=1, help="local processes splitting the chunks")
    p.add_argument("--num-shards", type=int, default=1, help="shards over machines (with --shard-index)")
    p.add_argument("--shard-index", type=int, default=0)
    p.add_argument("--chunk-size", type=int, default=64, help="images per chunk file")
    # On shared or busy CPUs fewer threads than cores can be faster: torch's threads spin
    # while they wait (benchmarks/simdetr_stages.py measured 2-3x).
    p.add_argument("--threads", type=int, default=0, help="torch threads per process (0: torch's choice)")
    p.add_argument("--max-chunks", type=int, default=None, help="stop after this many chunks")
    c = sub.add_parser("cluster", help="stage B: pseudo-classes by spherical k-means")
    c.add_argument("--config-file", default="")
    c.add_argument("--proposals", required=True, help="stage A output folder")
    c.add_argument("--output", required=True, help="targets folder (round_000.json, current.json)")
    r = sub.add_parser("relabel", help="stage D: the next round's targets from a trained detector")
    r.add_argument("--config-file", required=True, help="the pretraining config (DATASETS.TRAIN, model)")
    r.add_argument("--targets", default="", help="targets folder (default SIMDETR.TARGETS_DIR)")
    r.add_argument("--round", type=int, default=-1, help="round number to write (default: the next)")
    d = sub.add_parser("draw", help="pictures of a round's targets")
    d.add_argument("--targets", required=True, help="targets folder")
    d.add_argument("--round", type=int, default=-1, help="round to draw (default: the current one)")
    d.add_argument("--output", required=True, help="folder for the PNGs")
    d.add_argument("--num-images", type=int, default=8)
    for s in (p, c, r):
        s.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    setup_logger(name="updetr_d2")
    setup_logger(name="detectron2")
    commands = {"proposals": cmd_proposals, "cluster": cmd_cluster, "relabel": cmd_relabel, "draw": cmd_draw}
    return commands[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
