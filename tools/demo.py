#!/usr/bin/env python
"""The project's main job, end to end on the generated demo data (`make demo`):
UP-DETR pretraining on unlabeled images, DETR fine-tuning on labelled ones, COCO
evaluation.

Each stage is one `tools/train_net.py` run; the final evaluation's COCO metrics
are printed at the end. Extra arguments are passed to every stage as config
overrides, e.g. `python tools/demo.py SOLVER.MAX_ITER 50`.
"""
import os
import sys
import time

import updetr_d2  # noqa: F401
from detectron2.engine import default_argument_parser
from detectron2.evaluation import print_csv_format
from updetr_d2.engine import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUTPUT = os.path.join(ROOT, "output", "demo")

PRETRAIN_DIR = os.path.join(OUTPUT, "updetr_pretrain")

# (what it does, config file, overrides)
STAGES = [
    (
        "UP-DETR pretraining on the demo's unlabeled images (random query patch detection)",
        "projects/UPDETR/configs/updetr_R18_demo_pretrain.yaml",
        ["OUTPUT_DIR", PRETRAIN_DIR],
    ),
    (
        "fine-tune the pretrained DETR on the labelled demo images, then evaluate",
        "configs/demo/detr_R18_demo.yaml",
        ["MODEL.WEIGHTS", os.path.join(PRETRAIN_DIR, "model_final.pth"), "OUTPUT_DIR", os.path.join(OUTPUT, "detr")],
    ),
]


def run_stage(config_file, overrides):
    argv = ["--config-file", os.path.join(ROOT, config_file), *overrides, *sys.argv[1:]]
    return main(default_argument_parser().parse_args(argv))


if __name__ == "__main__":
    start = time.perf_counter()
    results = None
    for i, (what, config_file, overrides) in enumerate(STAGES, 1):
        print(f"\n=== demo stage {i}/{len(STAGES)}: {what} ({config_file})", flush=True)
        results = run_stage(config_file, overrides)
    print(f"\n=== demo finished in {time.perf_counter() - start:.0f} s; final COCO metrics:")
    if not results:
        sys.exit("no evaluation results: the last stage did not evaluate")
    print_csv_format(results)
    for task, metrics in results.items():
        print(f"{task}: " + ", ".join(f"{k}={v:.2f}" for k, v in metrics.items() if "-" not in k))
