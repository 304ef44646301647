#!/usr/bin/env python
"""Co-DETR's training cost: a Deformable DETR training step with and without the
auxiliary heads and positive queries, on the same inputs, timed alternately in one run.

    python benchmarks/codetr_step.py                                  # R50 configs, 512x683
    python benchmarks/codetr_step.py --config projects/CoDETR/configs/co_deformable_detr_R18_demo.yaml \\
        --height 256 --width 320

A step is forward, losses, backward and an AdamW update (random weights, random images
with --boxes boxes each). The base model is the same config with
MODEL.META_ARCHITECTURE DeformableDetr, i.e. exactly the Co-DETR model without its
training-only parts. Prints the median seconds per step of each and the ratio; also the
inference time of each (it should be equal: the heads do not run at inference).
"""
import argparse
import os
import statistics
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

from detr_train_step import random_batch  # noqa: E402


def build(config, opts, meta_arch):
    import updetr_d2  # noqa: F401
    from detectron2.modeling import build_model
    from updetr_d2.config import load_yaml_config
    from updetr_d2.solver import build_optimizer

    cfg = load_yaml_config(config, ["MODEL.DEVICE", "cpu", "MODEL.META_ARCHITECTURE", meta_arch, *opts])
    torch.manual_seed(0)
    model = build_model(cfg)
    return model, build_optimizer(cfg, model)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=os.path.join(ROOT, "projects", "CoDETR", "configs",
                                                         "co_deformable_detr_r50.yaml"))
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--height", type=int, default=512)
    parser.add_argument("--width", type=int, default=683)
    parser.add_argument("--boxes", type=int, default=7)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides for both models")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    import updetr_d2  # noqa: F401  (before Detectron2's modules)
    from detectron2.structures import Boxes, Instances
    from detectron2.utils.events import EventStorage

    images, targets = random_batch(args.batch, args.height, args.width, args.boxes)
    inputs = []
    for image, (boxes, classes) in zip(images, targets):
        inst = Instances((args.height, args.width))
        inst.gt_boxes, inst.gt_classes = Boxes(boxes), classes
        inputs.append({"image": image, "instances": inst})
    models = {name: build(args.config, args.opts, arch)
              for name, arch in (("Deformable DETR", "DeformableDetr"), ("Co-DETR", "CoDeformableDetr"))}

    def step(name):
        model, optimizer = models[name]
        model.train()
        losses = model(inputs)
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()

    def infer(name):
        model = models[name][0].eval()
        with torch.no_grad():
            model([{"image": x["image"]} for x in inputs])

    times = {(kind, name): [] for kind in ("train", "infer") for name in models}
    with EventStorage():
        for name in models:  # warm-up
            step(name)
            infer(name)
        for _ in range(args.steps):  # alternate so both see the same machine load
            for name in models:
                for kind, fn in (("train", step), ("infer", infer)):
                    start = time.perf_counter()
                    fn(name)
                    times[(kind, name)].append(time.perf_counter() - start)
    median = {key: statistics.median(v) for key, v in times.items()}
    print(f"{os.path.relpath(args.config, ROOT)}, batch {args.batch} at {args.height}x{args.width}, "
          f"{args.threads} threads, median of {args.steps}")
    for kind in ("train", "infer"):
        base, co = median[(kind, "Deformable DETR")], median[(kind, "Co-DETR")]
        print(f"  {kind:5s} step: Deformable DETR {base:6.3f} s   Co-DETR {co:6.3f} s   ratio {co / base:5.2f}")


if __name__ == "__main__":
    main()
