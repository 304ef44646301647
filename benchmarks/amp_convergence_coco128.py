#!/usr/bin/env python
"""Does bf16 mixed precision train like fp32? (not a test)

Two runs of the demo-size Deformable DETR on the ImageNet EfficientNet-Lite0
(projects/DeformableDETR/configs/deformable_detr_effnet_lite0_demo.yaml) on COCO128's train
split, evaluated on its val split every ``--eval-period`` iterations, with the same seed,
data order and schedule: one in fp32, one with ``SOLVER.AMP.ENABLED`` (bf16 autocast on a
CPU that has it) and ``TEST.AMP.ENABLED``. Prints the final AP / AP50 of both, their
difference (target: within 1 AP), whether any logged loss was NaN/inf, and the seconds per
iteration of each; writes the losses, learning rate and AP curves of both runs, overlaid,
to ``--plot``.

    python benchmarks/amp_convergence_coco128.py --iters 1000
    python benchmarks/amp_convergence_coco128.py --seed 1 --output output/bench_amp_convergence_coco128_seed1

Finished runs are reused and killed ones resume when the command is run again.
"""
import argparse
import math
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import ROOT, ap_curve, schedule, train_net  # noqa: E402

CONFIG = os.path.join(ROOT, "projects", "DeformableDETR", "configs", "deformable_detr_effnet_lite0_demo.yaml")
ARMS = {"fp32": [], "bf16": ["SOLVER.AMP.ENABLED", "True", "TEST.AMP.ENABLED", "True"]}


def seconds_per_iter(log_path: str) -> float:
    if not os.path.exists(log_path):
        return float("nan")
    with open(log_path) as f:
        speeds = re.findall(r"Overall training speed: .*\(([0-9.]+) s / it\)", f.read())
    return float(speeds[-1]) if speeds else float("nan")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    parser.add_argument("--iters", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--eval-period", type=int, default=250)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default=os.path.join(ROOT, "output", "bench_amp_convergence_coco128"))
    parser.add_argument("--plot", default=None, help="PNG of the curves (default: <output>/curves.png)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides for both runs")
    args = parser.parse_args()

    from updetr_d2.data import coco128_available, coco128_root
    from updetr_d2.engine.amp import cpu_supports_bf16
    from updetr_d2.utils.plots import plot_metrics, read_metrics

    if not coco128_available():
        sys.exit(f"COCO128 not found at {coco128_root()} (set UPDETR_COCO128)")
    if not cpu_supports_bf16():
        print("note: this CPU has no native bf16, so the 'bf16' run trains in fp32")
    common = ["DATASETS.TRAIN", "('coco128_train',)", "DATASETS.TEST", "('coco128_val',)",
              "MODEL.DETR.NUM_CLASSES", "80", "SOLVER.IMS_PER_BATCH", str(args.batch), "SEED", str(args.seed),
              "TEST.EVAL_PERIOD", str(args.eval_period), *schedule(args.iters), *args.opts]
    runs, finals = {}, {}
    for arm, extra in ARMS.items():
        out = train_net(CONFIG, common + extra, os.path.join(args.output, arm))
        records = read_metrics(os.path.join(out, "metrics.json"))
        losses = [v for r in records for k, v in r.items() if k.startswith("loss_") or k == "total_loss"]
        curve = ap_curve(os.path.join(out, "metrics.json"), args.iters)
        runs[arm] = records
        finals[arm] = dict(curve[-1] if curve else {}, finite=all(math.isfinite(v) for v in losses),
                           s_per_iter=seconds_per_iter(os.path.join(out, "run.log")))
    plot = plot_metrics(runs, args.plot or os.path.join(args.output, "curves.png"))

    print(f"\nCOCO128 val, Deformable DETR demo size, {args.iters} iterations at batch {args.batch}, seed {args.seed}:")
    for arm, f in finals.items():
        print(f"  {arm:5s} AP {f.get('AP', float('nan')):6.2f}  AP50 {f.get('AP50', float('nan')):6.2f}  "
              f"losses finite: {f['finite']}  {f['s_per_iter']:.3f} s/iter")
    gap = finals["bf16"].get("AP", float("nan")) - finals["fp32"].get("AP", float("nan"))
    speed = finals["bf16"]["s_per_iter"] / finals["fp32"]["s_per_iter"]
    print(f"  bf16 - fp32: {gap:+.2f} AP (target: within 1.0); bf16 step {speed:.2f}x fp32's")
    print(f"  curves: {plot}")


if __name__ == "__main__":
    main()
