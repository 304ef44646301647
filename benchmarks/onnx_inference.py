#!/usr/bin/env python
"""Time inference of exported ONNX models in ONNX Runtime against the PyTorch models (CPU).

    python benchmarks/onnx_inference.py             # DETR and Deformable DETR, demo and R50 size
    python benchmarks/onnx_inference.py --quick     # fewer runs (2 warm-up, 3 timed)
    python benchmarks/onnx_inference.py --models detr --sizes demo

Models: the EfficientNet-Lite0 demo DETR and Deformable DETR at ``--demo-size`` (512x512)
and DETR-R50 / Deformable-DETR-R50 at 800x1066, all with random weights (the speed does
not depend on them; the demo backbones are built without their ImageNet weights) and
one random image, batch 1. Inference is the whole model call: PyTorch is the model's
forward in eval mode under ``torch.no_grad()`` (normalisation, padding, backbone,
transformer, heads, post-processing to ``Instances``); ONNX Runtime is
``updetr_d2.export.ExportedDetector`` on the file ``tools/export_model.py`` would write
(the same graph from its input image to the flattened ``Instances`` fields, rebuilt into
``Instances``), CPU execution provider, as many intra-op threads as PyTorch has.

Every arm runs in a process of its own (``_timing.run_arms``): PyTorch arms build the
model and time it; ONNX Runtime arms first export the model in a separate process (not
timed; it also compares the file's detections with PyTorch's and reports the largest
differences), then load only the file and time it. The time is the median of ``--steps``
runs after ``--warmup`` runs.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _timing import RESULT_TAG, median_time, run_arms  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = {
    ("detr", "demo"): "configs/demo/detr_effnet_lite0_demo.yaml",
    ("deformable", "demo"): "projects/DeformableDETR/configs/deformable_detr_effnet_lite0_demo.yaml",
    ("detr", "r50"): "configs/detr/detr_r50.yaml",
    ("deformable", "r50"): "projects/DeformableDETR/configs/deformable_detr_r50.yaml",
}
NAMES = {"detr": "DETR", "deformable": "Deformable DETR"}
BACKENDS = ("pytorch", "onnxruntime")


def build(model_name: str, size: str):
    from updetr_d2.config import load_yaml_config  # updetr_d2 first: compat fixes and registration
    from detectron2.modeling import build_model

    # Random weights: no ImageNet backbone for the demo configs (MODEL.WEIGHTS is never loaded).
    opts = ["MODEL.EFFICIENTNET.PRETRAINED", "False"] if size == "demo" else []
    cfg = load_yaml_config(os.path.join(ROOT, CONFIGS[(model_name, size)]), opts)
    cfg.MODEL.DEVICE = "cpu"
    torch.manual_seed(0)
    return build_model(cfg).eval()


def image_of(args, size: str) -> torch.Tensor:
    height, width = args.demo_size if size == "demo" else (800, 1066)
    return torch.rand(3, height, width, generator=torch.Generator().manual_seed(0)) * 255


def export_arm(args, model_name: str, size: str) -> None:
    """(Its own process) export to ``args.file`` and compare with PyTorch; one JSON line."""
    from updetr_d2.export import compare_instances, export_onnx, ExportedDetector

    model = build(model_name, size)
    image = image_of(args, size)
    start = time.perf_counter()
    export_onnx(model, [{"image": image}], args.file)
    seconds = time.perf_counter() - start
    with torch.no_grad():
        expected = model([{"image": image}])[0]["instances"]
    report = compare_instances(expected, ExportedDetector(args.file)([{"image": image}])[0]["instances"])
    print(RESULT_TAG + json.dumps({"export_seconds": seconds, "check": report}), flush=True)


def timed_arm(args, model_name: str, size: str, backend: str) -> None:
    image = image_of(args, size)
    inputs = [{"image": image}]
    extra = {}
    if backend == "pytorch":
        model = build(model_name, size)

        def step():
            with torch.no_grad():
                model(inputs)
    else:
        path = os.path.join(args.workdir, f"{model_name}_{size}.onnx")
        proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--arm", f"export:{model_name}:{size}",
                               "--file", path, *size_argv(args)], capture_output=True, text=True)
        lines = [line for line in proc.stdout.splitlines() if line.startswith(RESULT_TAG)]
        if proc.returncode != 0 or not lines:
            sys.exit(f"export of {model_name} at {size} failed:\n{(proc.stdout + proc.stderr)[-3000:]}")
        extra = json.loads(lines[-1][len(RESULT_TAG):])
        from updetr_d2.export import ExportedDetector

        exported = ExportedDetector(path, num_threads=torch.get_num_threads())

        def step():
            exported(inputs)

    seconds = median_time(step, args.steps, warmup=args.warmup)
    print(RESULT_TAG + json.dumps({"seconds": seconds, **extra}), flush=True)


def size_argv(args):
    return ["--demo-size", *map(str, args.demo_size)]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    parser.add_argument("--models", nargs="+", default=list(NAMES), choices=list(NAMES))
    parser.add_argument("--sizes", nargs="+", default=["demo", "r50"], choices=["demo", "r50"])
    parser.add_argument("--demo-size", nargs=2, type=int, default=(512, 512), metavar=("H", "W"))
    parser.add_argument("--steps", type=int, default=10, help="timed runs per arm (the median is reported)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="2 warm-up and 3 timed runs")
    parser.add_argument("--threads", type=int, default=None,
                        help="threads of both runtimes (default: PyTorch's, i.e. the cores or OMP_NUM_THREADS)")
    parser.add_argument("--arm", default=None, help=argparse.SUPPRESS)  # internal: run one arm
    parser.add_argument("--file", default=None, help=argparse.SUPPRESS)  # internal: the export's path
    parser.add_argument("--workdir", default=None, help=argparse.SUPPRESS)  # internal: exported files
    args = parser.parse_args()
    if args.quick:
        args.steps, args.warmup = 3, 2
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.arm:
        kind, *rest = args.arm.split(":")
        if kind == "export":
            export_arm(args, *rest)
        else:
            timed_arm(args, kind, *rest)
        return

    print(f"ONNX Runtime vs PyTorch inference, batch 1, CPU, {torch.get_num_threads()} threads, "
          f"median of {args.steps} after {args.warmup} warm-up; random weights and image", flush=True)
    cases = [(m, s) for s in args.sizes for m in args.models]
    with tempfile.TemporaryDirectory(prefix="onnx_inference_") as workdir:
        arms = [f"{m}:{s}:{b}" for m, s in cases for b in BACKENDS]
        argv = ["--steps", str(args.steps), "--warmup", str(args.warmup), "--workdir", workdir,
                "--threads", str(torch.get_num_threads()), *size_argv(args)]
        results = run_arms(os.path.abspath(__file__), arms, argv)

    print(f"\n  {'model':22s} {'input':>9s} {'PyTorch s':>10s} {'ORT s':>8s} {'ORT/PyTorch':>12s} "
          f"{'export s':>9s} {'max|dbox| px':>13s} {'max|dscore|':>12s}")
    for m, s in cases:
        torch_s = results[f"{m}:{s}:pytorch"]["seconds"]
        ort = results[f"{m}:{s}:onnxruntime"]
        h, w = args.demo_size if s == "demo" else (800, 1066)
        backbone = "Lite0" if s == "demo" else "R50"
        check = ort["check"]
        print(f"  {NAMES[m] + ' ' + backbone:22s} {f'{h}x{w}':>9s} {torch_s:10.3f} {ort['seconds']:8.3f} "
              f"{ort['seconds'] / torch_s:12.2f} {ort['export_seconds']:9.1f} {check['boxes']:13.2g} "
              f"{check['scores']:12.2g}")


if __name__ == "__main__":
    main()
