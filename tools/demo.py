#!/usr/bin/env python
"""The project's main job, end to end on the generated demo data (`make demo`).

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

# (what it does, config file, overrides)
STAGES = [
    (
        "train + evaluate a small DETR (ResNet-18, 2+2 transformer layers) on the demo data",
        "configs/demo/detr_R18_demo.yaml",
        ["OUTPUT_DIR", os.path.join(OUTPUT, "detr")],
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
