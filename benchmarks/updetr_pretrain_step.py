#!/usr/bin/env python
"""Time an UP-DETR-R50 pretraining step on the CPU: ours in fp32 and bf16 against the original.

    python benchmarks/updetr_pretrain_step.py                  # batch 2 at 480x600, 10 patches
    python benchmarks/updetr_pretrain_step.py --reference-updetr /path/to/dddzg/up-detr

The paper's pretraining setting (projects/UPDETR/configs/updetr_r50_pretrain.yaml; the
original's ``--pre_norm --num_patches 10 --feature_recon --fre_cnn``): 100 queries in 10
groups, each given the pooled backbone feature of a 128x128 query patch, frozen CNN,
feature reconstruction; a step is forward (image and patches through the backbone),
matching, the losses with auxiliary ones, backward, clipping (0.1) and AdamW, on random
weights, random images, patches and patch boxes shared by both implementations. The
original asks for SwAV weights by URL; here it gets none (nothing is downloaded), so both
run random weights. Arms as in detr_train_step.py (``ours-fp32``, ``ours-bf16``,
``original-fp32`` with --reference-updetr), each in its own process. Targets: fp32 <= 0.85x
the original, bf16 <= 0.5x the original's fp32 step.
"""
import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _timing import add_arm_arguments, run_benchmark  # noqa: E402
from detr_train_step import (  # noqa: E402
    MEAN, STD, build_ours, import_original, original_targets, original_train_step, ours_train_step, random_batch,
)


def random_patches(args, seed=1):
    """uint8 [B, N, 3, S, S] query patches and their xyxy pixel boxes per image."""
    g = torch.Generator().manual_seed(seed)
    patches = torch.randint(0, 256, (args.batch, args.patches, 3, args.patch_size, args.patch_size),
                            generator=g, dtype=torch.uint8)
    _, targets = random_batch(args.batch, args.height, args.width, args.patches, seed=seed)
    return patches, [(boxes, torch.zeros_like(labels)) for boxes, labels in targets]


def ours(args, precision):
    from detectron2.structures import Boxes, Instances

    cfg, model = build_ours("projects/UPDETR/configs/updetr_r50_pretrain.yaml",
                            ["INPUT.QUERY_PATCH.NUM_PATCHES", str(args.patches), *args.opts])
    images, _ = random_batch(args.batch, args.height, args.width, 0)
    patches, targets = random_patches(args)
    inputs = []
    for image, image_patches, (boxes, labels) in zip(images, patches, targets):
        inst = Instances(tuple(image.shape[1:]))
        inst.gt_boxes, inst.gt_classes = Boxes(boxes), labels
        inputs.append({"image": image, "patches": image_patches, "instances": inst})
    return ours_train_step(cfg, model, inputs, precision)


def original(args):
    # The original's ResNet-50 loads SwAV weights from a URL: give it none instead.
    torch.hub.load_state_dict_from_url = lambda *a, **k: {}
    get_args_parser, build_model = import_original(args.reference_updetr)
    ref_args = get_args_parser().parse_args(
        ["--device", "cpu", "--pre_norm", "--num_patches", str(args.patches), "--feature_recon", "--fre_cnn"])
    # What the original main() sets before building (pretraining on unlabeled images, frozen CNN).
    ref_args.dataset_file, ref_args.masks, ref_args.lr_backbone = "ImageNet", None, 0
    torch.manual_seed(0)
    model, criterion, _ = build_model(ref_args)
    images, _ = random_batch(args.batch, args.height, args.width, 0)
    patches, targets = random_patches(args)
    samples = [(im - MEAN) / STD for im in images]
    norm_patches = (patches.float() - MEAN) / STD
    return original_train_step(model, criterion, lambda: model(samples, norm_patches),
                               original_targets(images, targets), 0.0)


ARMS = {"ours-fp32": lambda a: ours(a, "fp32"), "ours-bf16": lambda a: ours(a, "bf16"), "original-fp32": original}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=600)
    parser.add_argument("--patches", type=int, default=10)
    parser.add_argument("--patch-size", type=int, default=128)
    parser.add_argument("--reference-updetr", default=None, help="path to a checkout of dddzg/up-detr")
    add_arm_arguments(parser, ARMS, steps=5)
    args = parser.parse_args()
    if not args.arm:
        print(f"UP-DETR-R50 pretraining step, batch {args.batch} at {args.height}x{args.width}, {args.patches} "
              f"patches of {args.patch_size} px, {torch.get_num_threads()} threads, median of {args.steps}", flush=True)
    run_benchmark(os.path.abspath(__file__), ARMS, args, ["batch", "height", "width", "patches", "patch_size"],
                  "reference_updetr", "UP-DETR-R50 pretraining step", {"ours-fp32": 0.85, "ours-bf16": 0.5})
