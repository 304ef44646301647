#!/usr/bin/env python
"""Time of the input checks (updetr_d2.engine.input_checks) on a synthetic COCO dataset.

    python benchmarks/input_checks.py                       # 10,000 images, 7 boxes each
    python benchmarks/input_checks.py --images 100000 --degenerate 0.001

Writes a COCO json of ``--images`` records (sizes 200-1333 px, ``--boxes`` boxes each, a
fraction ``--degenerate`` of them with a negative width) and one empty file per image
(the checks stat files and never decode them), registers it, and prints the time
Detectron2 takes to load the records (paid by the data loader anyway) and the time of
the scan itself, with DETR's COCO resize (configs/detr/detr_r50.yaml), best of
``--repeat``; then the whole ``run_input_checks`` of that config (load + scan).
"""
import argparse
import json
import os
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import updetr_d2  # noqa: E402,F401
from detectron2.data import DatasetCatalog, MetadataCatalog  # noqa: E402
from detectron2.data.datasets import register_coco_instances  # noqa: E402
from updetr_d2.config import load_yaml_config  # noqa: E402
from updetr_d2.data.checks import scan_dataset  # noqa: E402
from updetr_d2.engine.input_checks import dataset_uses, run_input_checks  # noqa: E402


def write_dataset(folder: str, images: int, boxes: int, degenerate: float, seed: int = 0):
    rng = np.random.default_rng(seed)
    root = os.path.join(folder, "images")
    os.makedirs(root, exist_ok=True)
    heights = rng.integers(200, 1334, images)
    widths = rng.integers(200, 1334, images)
    coco = {"images": [], "annotations": [], "categories": [{"id": c + 1, "name": f"c{c}"} for c in range(80)]}
    for i in range(images):
        name = f"{i:07d}.jpg"
        open(os.path.join(root, name), "wb").close()
        h, w = int(heights[i]), int(widths[i])
        coco["images"].append({"id": i + 1, "file_name": name, "height": h, "width": w})
        x = rng.uniform(0, w * 0.8, boxes)
        y = rng.uniform(0, h * 0.8, boxes)
        bw = rng.uniform(1, w * 0.2, boxes)
        bh = rng.uniform(1, h * 0.2, boxes)
        bad = rng.random(boxes) < degenerate
        for k in range(boxes):
            width = -bw[k] if bad[k] else bw[k]
            coco["annotations"].append({
                "id": len(coco["annotations"]) + 1, "image_id": i + 1, "category_id": int(rng.integers(1, 81)),
                "bbox": [round(float(x[k]), 2), round(float(y[k]), 2), round(float(width), 2), round(float(bh[k]), 2)],
                "area": float(abs(width) * bh[k]), "iscrowd": 0,
            })
    json_file = os.path.join(folder, "instances.json")
    with open(json_file, "w") as f:
        json.dump(coco, f)
    return json_file, root


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=10000)
    parser.add_argument("--boxes", type=int, default=7, help="boxes per image")
    parser.add_argument("--degenerate", type=float, default=0.0, help="fraction of boxes with a negative width")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        json_file, root = write_dataset(folder, args.images, args.boxes, args.degenerate)
        print(f"wrote {args.images} records, {args.images * args.boxes} boxes in {time.perf_counter() - start:.1f} s")
        register_coco_instances("bench_input_checks", {}, json_file, root)
        cfg = load_yaml_config(os.path.join(ROOT, "configs", "detr", "detr_r50.yaml"),
                               ["DATASETS.TRAIN", "('bench_input_checks',)", "DATASETS.TEST", "()"])
        (use,) = dataset_uses(cfg)

        start = time.perf_counter()
        records = DatasetCatalog.get("bench_input_checks")
        print(f"records loaded by Detectron2 (the data loader does this too): {time.perf_counter() - start:.2f} s")
        times = []
        for _ in range(args.repeat):
            start = time.perf_counter()
            report = scan_dataset(records, use, MetadataCatalog.get("bench_input_checks"))
            report.errors(), report.warnings()
            times.append(time.perf_counter() - start)
        print(f"scan of {len(records)} records ({report.boxes} boxes, {len(report.degenerate)} degenerate): "
              f"{min(times):.3f} s (best of {args.repeat}; all: {', '.join(f'{t:.3f}' for t in times)})")
        start = time.perf_counter()
        run_input_checks(cfg)
        print(f"run_input_checks (load + scan): {time.perf_counter() - start:.2f} s")


if __name__ == "__main__":
    main()
