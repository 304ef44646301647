#!/usr/bin/env python
"""Time a DETR-R50 training step on the CPU, and the matcher + criterion share of it.

    python benchmarks/detr_train_step.py                       # batch 2 at 800x1066
    python benchmarks/detr_train_step.py --height 512 --width 683
    python benchmarks/detr_train_step.py --reference-detr /path/to/facebookresearch/detr

A step is what training does: forward, set criterion with auxiliary losses, backward,
full-model gradient clipping (0.1) and AdamW, on random weights and random images with
7 boxes each. It prints the median of --steps steps after warm-up, the matcher +
criterion time and its ratio to the step, and the peak RSS. With --reference-detr (a
checkout of the original DETR code, which is not part of this project) the original
model is timed on identical inputs in the same run and the ratio ours/original is printed.
"""
import argparse
import os
import resource
import statistics
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def median_time(fn, steps, warmup=2):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


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


def ours(images, targets):
    import updetr_d2  # noqa: F401
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model
    from detectron2.structures import Boxes, Instances
    from detectron2.utils.events import EventStorage
    from updetr_d2 import add_updetr_config
    from updetr_d2.solver import build_optimizer

    cfg = get_cfg()
    add_updetr_config(cfg)
    cfg.merge_from_file(os.path.join(ROOT, "configs", "detr", "detr_r50.yaml"))
    cfg.merge_from_list(args.opts)
    cfg.MODEL.DEVICE = "cpu"
    torch.manual_seed(0)
    model = build_model(cfg).train()
    optimizer = build_optimizer(cfg, model)
    inputs = []
    for image, (boxes, labels) in zip(images, targets):
        inst = Instances(tuple(image.shape[1:]))
        inst.gt_boxes, inst.gt_classes = Boxes(boxes), labels
        inputs.append({"image": image, "instances": inst})
    storage = EventStorage()

    def step():
        with storage:
            loss = sum(model(inputs).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    step_time = median_time(step, args.steps)
    with torch.no_grad():
        state = model.run_phases(inputs)
    outputs, prepared = state.outputs, state.targets

    def criterion():
        with storage:
            model.criterion(outputs, prepared)

    return step_time, median_time(criterion, args.steps)


def reference(path, images, targets):
    """The original DETR (models.build_model from a checkout of its repository)."""
    import torchvision

    # Random weights like ours: the original asks torchvision for ImageNet weights (a download).
    resnet50 = torchvision.models.resnet50
    torchvision.models.resnet50 = lambda *a, pretrained=False, **k: resnet50(*a, weights=None, **k)
    sys.path.insert(0, path)
    from main import get_args_parser  # noqa: E402  (the original code's own argument defaults)
    from models import build_model  # noqa: E402

    ref_args = get_args_parser().parse_args(["--device", "cpu", "--lr_backbone", "1e-5"])
    torch.manual_seed(0)
    model, criterion, _ = build_model(ref_args)
    model.train()
    params = [
        {"params": [p for n, p in model.named_parameters() if "backbone" not in n and p.requires_grad]},
        {"params": [p for n, p in model.named_parameters() if "backbone" in n and p.requires_grad], "lr": 1e-5},
    ]
    optimizer = torch.optim.AdamW(params, lr=1e-4, weight_decay=1e-4)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1) * 255
    std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1) * 255
    samples = [(im - mean) / std for im in images]
    ref_targets = []
    for image, (boxes, labels) in zip(images, targets):
        h, w = image.shape[1:]
        xyxy = boxes / torch.tensor([w, h, w, h])
        cxcywh = torch.cat([(xyxy[:, :2] + xyxy[:, 2:]) / 2, xyxy[:, 2:] - xyxy[:, :2]], 1)
        ref_targets.append({"boxes": cxcywh, "labels": labels})

    def step():
        outputs = model(samples)
        losses = criterion(outputs, ref_targets)
        loss = sum(losses[k] * criterion.weight_dict[k] for k in losses if k in criterion.weight_dict)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.1)
        optimizer.step()

    return median_time(step, args.steps)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--height", type=int, default=800)
    parser.add_argument("--width", type=int, default=1066)
    parser.add_argument("--boxes", type=int, default=7)
    parser.add_argument("--steps", type=int, default=7)
    parser.add_argument("--reference-detr", default=None, help="path to a checkout of facebookresearch/detr")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides for our model (KEY VALUE ...)")
    args = parser.parse_args()
    images, targets = random_batch(args.batch, args.height, args.width, args.boxes)
    print(f"DETR-R50 training step, batch {args.batch} at {args.height}x{args.width}, "
          f"{args.boxes} boxes/image, {torch.get_num_threads()} threads, median of {args.steps}")
    step_time, criterion_time = ours(images, targets)
    print(f"updetr_d2 step:            {step_time:8.3f} s")
    print(f"matcher + criterion:       {criterion_time * 1000:8.1f} ms  "
          f"({100 * criterion_time / step_time:.2f}% of a step; target < 1%)")
    print(f"peak RSS so far:           {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:8.2f} GiB")
    if args.reference_detr:
        ref_time = reference(args.reference_detr, images, targets)
        print(f"original DETR step:        {ref_time:8.3f} s")
        print(f"ratio updetr_d2/original:  {step_time / ref_time:8.3f}  (target <= 0.85)")
