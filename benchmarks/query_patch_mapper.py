#!/usr/bin/env python
"""Throughput of UP-DETR's QueryPatchDatasetMapper, single process.

    python benchmarks/query_patch_mapper.py                      # the demo unlabeled images
    python benchmarks/query_patch_mapper.py --data /work/shared/data/unlabeled
    python benchmarks/query_patch_mapper.py --no-augment --epochs 3

For each image set it maps every record ``--epochs`` times (after one warm-up pass over
a few records) and prints samples/s and the mean ms per sample split into image decode
(``read_image``), patch sampling + crop/resize + augmentation (``make_patches``), image
resize with the box transform (``resize``) and the rest of ``__call__`` (tensors,
Instances). OpenCV and torch run with ``--threads`` threads (1 by default, as in one
data-loader worker).
"""
import argparse
import os
import statistics
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

import updetr_d2  # noqa: E402,F401
from detectron2.data import DatasetCatalog  # noqa: E402
from updetr_d2.data.datasets import load_unlabeled_folder  # noqa: E402
from updetr_d2.data.datasets.demo import ensure_demo_dataset  # noqa: E402
from updetr_d2.methods.updetr import QueryPatchDatasetMapper  # noqa: E402

PHASES = ("decode", "patches", "resize")


class TimedMapper(QueryPatchDatasetMapper):
    """The mapper with each step of ``__call__`` timed (same code path)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.times = {name: [] for name in PHASES + ("total",)}

    def _timed(self, name, fn, *args):
        start = time.perf_counter()
        out = fn(*args)
        self.times[name].append(time.perf_counter() - start)
        return out

    def read_image(self, dataset_dict):
        return self._timed("decode", super().read_image, dataset_dict)

    def make_patches(self, image, rng):
        return self._timed("patches", super().make_patches, image, rng)

    def resize(self, image, boxes, resize_seed):
        return self._timed("resize", super().resize, image, boxes, resize_seed)

    def __call__(self, dataset_dict):
        return self._timed("total", super().__call__, dataset_dict)

    def reset(self):
        for v in self.times.values():
            v.clear()


def run(name, records, args):
    mapper = TimedMapper(num_patches=args.num_patches, patch_size=args.patch_size,
                         patch_augment=not args.no_augment, seed=args.seed)
    np.random.seed(0)
    for rec in records[: min(5, len(records))]:  # warm-up
        mapper(rec)
    mapper.reset()
    sizes = []
    start = time.perf_counter()
    for _ in range(args.epochs):
        for rec in records:
            out = mapper(rec)
            sizes.append(out["height"] * out["width"])
    wall = time.perf_counter() - start
    n = len(mapper.times["total"])
    ms = {k: 1e3 * sum(v) / n for k, v in mapper.times.items()}
    other = ms["total"] - sum(ms[p] for p in PHASES)
    print(f"{name}: {len(records)} images x {args.epochs} epochs, mean {statistics.mean(sizes) / 1e3:.0f} kpx "
          f"(original size), {args.num_patches} patches of {args.patch_size} px, "
          f"augment={'off' if args.no_augment else 'on'}")
    print(f"  {n / wall:.1f} samples/s; ms/sample: total {ms['total']:.2f} = decode {ms['decode']:.2f} "
          f"+ patches (sample+crop+augment) {ms['patches']:.2f} + resize {ms['resize']:.2f} "
          f"+ other {other:.2f}")
    p = 1e3 * np.array(mapper.times["patches"])
    print(f"  patches ms: median {np.median(p):.2f}, p90 {np.percentile(p, 90):.2f}, max {p.max():.2f}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=None, help="a folder of unlabeled images to time as well")
    parser.add_argument("--epochs", type=int, default=2, help="passes over each image set")
    parser.add_argument("--num-patches", type=int, default=10)
    parser.add_argument("--patch-size", type=int, default=128)
    parser.add_argument("--no-augment", action="store_true", help="turn the patch augmentation off")
    parser.add_argument("--seed", type=int, default=None, help="the mapper's seed (default: none)")
    parser.add_argument("--threads", type=int, default=1, help="OpenCV and torch threads")
    args = parser.parse_args(argv)
    cv2.setNumThreads(args.threads)
    torch.set_num_threads(args.threads)
    print(f"cv2 {cv2.__version__} threads={cv2.getNumThreads()}, numpy {np.__version__}, torch {torch.__version__}")

    ensure_demo_dataset()
    run("demo unlabeled", DatasetCatalog.get("updetr_demo_unlabeled"), args)
    if args.data:
        run(args.data, load_unlabeled_folder(args.data), args)


if __name__ == "__main__":
    main()
