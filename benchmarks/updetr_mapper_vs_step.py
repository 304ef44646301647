#!/usr/bin/env python
"""Is the query patch mapper ever the bottleneck of UP-DETR pretraining?

Measures, in one run and on the same images and settings (the paper's: ResNet-50,
10 patches of 128 px, shorter side 320-480):
  - how many samples/s Detectron2's training loader delivers with the project's
    QueryPatchDatasetMapper and --workers loader processes (consumer doing nothing);
  - how many samples/s a UP-DETR training step consumes (batch --batch, frozen CNN,
    feature reconstruction, AdamW);
and prints the ratio (target: >= 5 with 2 workers).

    python benchmarks/updetr_mapper_vs_step.py --data ../shared/data/unlabeled/images
"""
import argparse
import itertools
import os
import statistics
import time

import torch

import updetr_d2  # noqa: F401
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage
from updetr_d2 import add_updetr_config
from updetr_d2.data.datasets.demo import ensure_demo_dataset
from updetr_d2.engine import Trainer
from updetr_d2.engine.launch import register_image_folders
from updetr_d2.solver import build_optimizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=None, help="image folder (default: the demo's unlabeled images)")
    parser.add_argument("--config", default=os.path.join(ROOT, "projects", "UPDETR", "configs",
                                                         "updetr_r50_pretrain.yaml"))
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--loader-batches", type=int, default=40)
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()

    folder = os.path.abspath(args.data or os.path.join(ensure_demo_dataset(), "images", "unlabeled"))
    register_image_folders([folder])
    cfg = get_cfg()
    add_updetr_config(cfg)
    cfg.merge_from_file(args.config)
    cfg.merge_from_list(["DATASETS.TRAIN", (folder,), "SOLVER.IMS_PER_BATCH", args.batch,
                         "DATALOADER.NUM_WORKERS", args.workers, "MODEL.DEVICE", "cpu"])

    loader = iter(Trainer.build_train_loader(cfg))
    batches = [next(loader) for _ in range(3)]  # start the workers
    start = time.perf_counter()
    for _ in range(args.loader_batches):
        next(loader)
    loader_rate = args.loader_batches * args.batch / (time.perf_counter() - start)

    torch.manual_seed(0)
    model = build_model(cfg).train()
    optimizer = build_optimizer(cfg, model)
    times = []
    with EventStorage():
        for inputs in itertools.islice(itertools.cycle(batches), args.steps + 1):
            start = time.perf_counter()
            loss = sum(model(inputs).values())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            times.append(time.perf_counter() - start)
    step = statistics.median(times[1:])
    model_rate = args.batch / step

    print(f"UP-DETR pretraining ({os.path.basename(args.config)}), batch {args.batch}, images from {folder}")
    print(f"loader with {args.workers} workers: {loader_rate:8.1f} samples/s")
    print(f"training step:          {step:8.3f} s  = {model_rate:.2f} samples/s")
    print(f"ratio loader/model:     {loader_rate / model_rate:8.1f}  (target >= 5)")


if __name__ == "__main__":
    main()
