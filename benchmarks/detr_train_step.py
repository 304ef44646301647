#!/usr/bin/env python
"""Time a DETR-R50 training step on the CPU: ours in fp32 and bf16 against the original DETR.

    python benchmarks/detr_train_step.py                       # batch 2 at 800x1066
    python benchmarks/detr_train_step.py --height 512 --width 683
    python benchmarks/detr_train_step.py --reference-detr /path/to/facebookresearch/detr

A step is what training does: forward, set criterion with auxiliary losses, backward,
full-model gradient clipping (0.1) and AdamW, on random weights and random images with
7 boxes each. Arms (each in a process of its own, one after the other; see _timing.py):
``ours-fp32``, ``ours-bf16`` (forward under CPU bf16 autocast, as ``SOLVER.AMP.ENABLED``
trains) and, with --reference-detr (a checkout of the original DETR code, not part of
this project), ``original-fp32`` on identical inputs. Printed: the median of --steps steps
after warm-up, peak RSS, GMAC per step, MFU against this machine's GEMM rate measured in the
same run, the matcher + criterion share of our step, and the ratios of the targets
(fp32 <= 0.85x the original, bf16 <= 0.5x the original's fp32 step). Extra arguments
after the options are config overrides for our model (KEY VALUE ...).
"""
import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _timing import add_arm_arguments, autocast, run_benchmark  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1) * 255  # the original's ImageNet normalisation
STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1) * 255


def random_batch(batch, height, width, boxes, seed=0):
    """Images (0-255, CHW) and xyxy pixel boxes shared by both implementations."""
    g = torch.Generator().manual_seed(seed)
    images = [torch.rand(3, height, width, generator=g) * 255 for _ in range(batch)]
    targets = []
    for _ in range(batch):
        xy = torch.rand(boxes, 2, generator=g) * torch.tensor([width * 0.7, height * 0.7])
        wh = (torch.rand(boxes, 2, generator=g) * 0.25 + 0.05) * torch.tensor([width, height])
        targets.append((torch.cat([xy, xy + wh], 1), torch.randint(0, 80, (boxes,), generator=g)))
    return images, targets


def build_ours(config: str, opts):
    import updetr_d2  # noqa: F401
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model
    from updetr_d2 import add_updetr_config

    cfg = get_cfg()
    add_updetr_config(cfg)
    cfg.merge_from_file(os.path.join(ROOT, config))
    cfg.merge_from_list([o for o in opts if o != "--"])  # "--" ends --arms before overrides
    cfg.MODEL.DEVICE = "cpu"
    torch.manual_seed(0)
    return cfg, build_model(cfg)


def ours_inputs(images, targets):
    from detectron2.structures import Boxes, Instances

    inputs = []
    for image, (boxes, labels) in zip(images, targets):
        inst = Instances(tuple(image.shape[1:]))
        inst.gt_boxes, inst.gt_classes = Boxes(boxes), labels
        inputs.append({"image": image, "instances": inst})
    return inputs


def ours_train_step(cfg, model, inputs, precision):
    """Our training step as ``MixedPrecisionTrainer`` runs it (forward under autocast)."""
    from detectron2.utils.events import EventStorage
    from updetr_d2.solver import build_optimizer

    model.train()
    optimizer = build_optimizer(cfg, model)  # AdamW with full-model clipping (SOLVER.CLIP_GRADIENTS)
    storage = EventStorage()

    def step():
        with storage, autocast(precision):
            loss = sum(model(inputs).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return step


def ours(args, precision):
    cfg, model = build_ours("configs/detr/detr_r50.yaml", args.opts)
    images, targets = random_batch(args.batch, args.height, args.width, args.boxes)
    inputs = ours_inputs(images, targets)
    step = ours_train_step(cfg, model, inputs, precision)
    if precision != "fp32":
        return step
    from detectron2.utils.events import EventStorage

    with torch.no_grad():
        state = model.run_phases(inputs)

    def criterion():
        with EventStorage():
            model.criterion(state.outputs, state.targets)

    return step, {"matcher + criterion": criterion}


def import_original(path):
    """The original DETR's ``main.get_args_parser`` and ``models.build_model``, with random
    weights like ours (it would ask torchvision for ImageNet weights: a download)."""
    import torchvision

    resnet50 = torchvision.models.resnet50
    torchvision.models.resnet50 = lambda *a, pretrained=False, **k: resnet50(*a, weights=None, **k)
    sys.path.insert(0, path)
    from main import get_args_parser  # noqa: E402  (the original code's own argument defaults)
    from models import build_model  # noqa: E402

    return get_args_parser, build_model


def original_targets(images, targets):
    out = []
    for image, (boxes, labels) in zip(images, targets):
        h, w = image.shape[1:]
        xyxy = boxes / torch.tensor([w, h, w, h])
        cxcywh = torch.cat([(xyxy[:, :2] + xyxy[:, 2:]) / 2, xyxy[:, 2:] - xyxy[:, :2]], 1)
        out.append({"boxes": cxcywh, "labels": labels})
    return out


def original_train_step(model, criterion, forward, ref_targets, lr_backbone, precision="fp32"):
    """The original engine's step: weighted loss sum, AdamW (backbone at its own lr), clip 0.1."""
    model.train()
    params = [
        {"params": [p for n, p in model.named_parameters() if "backbone" not in n and p.requires_grad]},
        {"params": [p for n, p in model.named_parameters() if "backbone" in n and p.requires_grad], "lr": lr_backbone},
    ]
    optimizer = torch.optim.AdamW(params, lr=1e-4, weight_decay=1e-4)

    def step():
        with autocast(precision):
            outputs = forward()
        losses = criterion(outputs, ref_targets)
        loss = sum(losses[k] * criterion.weight_dict[k] for k in losses if k in criterion.weight_dict)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.1)
        optimizer.step()

    return step


def original(args, precision="fp32"):
    get_args_parser, build_model = import_original(args.reference_detr)
    ref_args = get_args_parser().parse_args(["--device", "cpu", "--lr_backbone", "1e-5"])
    torch.manual_seed(0)
    model, criterion, _ = build_model(ref_args)
    images, targets = random_batch(args.batch, args.height, args.width, args.boxes)
    samples = [(im - MEAN) / STD for im in images]
    return original_train_step(model, criterion, lambda: model(samples), original_targets(images, targets), 1e-5,
                               precision)


ARMS = {"ours-fp32": lambda a: ours(a, "fp32"), "ours-bf16": lambda a: ours(a, "bf16"), "original-fp32": original}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--height", type=int, default=800)
    parser.add_argument("--width", type=int, default=1066)
    parser.add_argument("--boxes", type=int, default=7)
    parser.add_argument("--reference-detr", default=None, help="path to a checkout of facebookresearch/detr")
    add_arm_arguments(parser, ARMS, steps=5)
    args = parser.parse_args()
    if not args.arm:
        print(f"DETR-R50 training step, batch {args.batch} at {args.height}x{args.width}, {args.boxes} boxes/image, "
              f"{torch.get_num_threads()} threads, median of {args.steps}", flush=True)
    run_benchmark(os.path.abspath(__file__), ARMS, args, ["batch", "height", "width", "boxes"], "reference_detr",
                  "DETR-R50 training step", {"ours-fp32": 0.85, "ours-bf16": 0.5})
