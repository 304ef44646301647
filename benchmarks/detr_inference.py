#!/usr/bin/env python
"""Time DETR-R50 inference on the CPU: ours in fp32 and bf16 against the original DETR.

    python benchmarks/detr_inference.py                        # batch 1 at 800x1066
    python benchmarks/detr_inference.py --reference-detr /path/to/facebookresearch/detr

Inference is what evaluation runs per image: normalisation, backbone, transformer, heads
and the post-processing to scored boxes in the input's size (ours: the model's forward in
eval mode, which returns Detectron2 ``Instances``; the original: ``model(samples)`` and its
``PostProcess``), under ``torch.no_grad()``, random weights, the same random image.
Arms as in detr_train_step.py (``ours-fp32``, ``ours-bf16`` under CPU bf16 autocast as
``TEST.AMP.ENABLED`` evaluates, ``original-fp32`` with --reference-detr), each in its own
process. Targets: fp32 <= 0.9x the original, bf16 <= 0.5x the original's fp32.
"""
import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _timing import add_arm_arguments, autocast, run_benchmark  # noqa: E402
from detr_train_step import MEAN, STD, build_ours, import_original, random_batch  # noqa: E402


def ours(args, precision):
    _, model = build_ours("configs/detr/detr_r50.yaml", args.opts)
    model.eval()
    images, _ = random_batch(args.batch, args.height, args.width, 0)
    inputs = [{"image": im, "height": im.shape[1], "width": im.shape[2]} for im in images]

    def step():
        with torch.no_grad(), autocast(precision):
            model(inputs)

    return step


def original(args):
    get_args_parser, build_model = import_original(args.reference_detr)
    torch.manual_seed(0)
    model, _, postprocessors = build_model(get_args_parser().parse_args(["--device", "cpu"]))
    model.eval()
    images, _ = random_batch(args.batch, args.height, args.width, 0)
    samples = [(im - MEAN) / STD for im in images]
    sizes = torch.tensor([im.shape[1:] for im in images])

    def step():
        with torch.no_grad():
            postprocessors["bbox"](model(samples), sizes)

    return step


ARMS = {"ours-fp32": lambda a: ours(a, "fp32"), "ours-bf16": lambda a: ours(a, "bf16"), "original-fp32": original}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--height", type=int, default=800)
    parser.add_argument("--width", type=int, default=1066)
    parser.add_argument("--reference-detr", default=None, help="path to a checkout of facebookresearch/detr")
    add_arm_arguments(parser, ARMS, steps=7)
    args = parser.parse_args()
    if not args.arm:
        print(f"DETR-R50 inference, batch {args.batch} at {args.height}x{args.width}, "
              f"{torch.get_num_threads()} threads, median of {args.steps}", flush=True)
    run_benchmark(os.path.abspath(__file__), ARMS, args, ["batch", "height", "width"], "reference_detr",
                  "DETR-R50 inference", {"ours-fp32": 0.9, "ours-bf16": 0.5})
