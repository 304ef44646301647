#!/usr/bin/env python
"""Panoptic fine-tuning on COCO128 (train -> val, 75 -> 25 images), from scratch vs from an
UP-DETR pretraining, through DETR's two-stage recipe (not a test).

Each arm trains the demo-size Deformable DETR on the ImageNet EfficientNet-Lite0
(projects/Panoptic/configs/deformable_detr_effnet_lite0_demo_panoptic_box.yaml, 133
classes) on the boxes of every segment, evaluates it (box AP of the things), then trains
the mask head alone on the frozen detector (..._panoptic_mask.yaml) and evaluates PQ /
PQ_th / PQ_st (Detectron2's COCOPanopticEvaluator) and box and segm AP of the things
(COCOEvaluator). The "updetr" arm first pretrains with UP-DETR on the same train images,
labels unused (projects/UPDETR/configs/updetr_deformable_effnet_lite0_demo_pretrain.yaml),
and starts the box stage from its encoder. Also printed: seconds per iteration and peak
resident memory of the box and mask stages (measured in this run; compare runs of one
invocation on an otherwise idle machine).

    python benchmarks/panoptic_coco128.py --box-iters 800 --mask-iters 400 --pretrain-iters 300

Finished runs are reused and killed ones resume when the command is run again.
"""
import argparse
import os
import re
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import ROOT, schedule  # noqa: E402

PANOPTIC = os.path.join(ROOT, "projects", "Panoptic", "configs")
BOX = os.path.join(PANOPTIC, "deformable_detr_effnet_lite0_demo_panoptic_box.yaml")
BOX_FROM_UPDETR = os.path.join(PANOPTIC, "deformable_detr_effnet_lite0_demo_panoptic_box_from_updetr.yaml")
MASK = os.path.join(PANOPTIC, "deformable_detr_effnet_lite0_demo_panoptic_mask.yaml")
PRETRAIN = os.path.join(ROOT, "projects", "UPDETR", "configs", "updetr_deformable_effnet_lite0_demo_pretrain.yaml")
DATA = ["DATASETS.TRAIN", "('coco128_panoptic_train',)", "DATASETS.TEST", "('coco128_panoptic_val',)",
        "MODEL.DETR.NUM_CLASSES", "133"]


def peak_rss_mib(pid: int, stop: threading.Event, out: list) -> None:
    """Polls the process's peak resident set (VmHWM) until it exits."""
    while not stop.is_set():
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        out.append(int(line.split()[1]) / 1024)
        except OSError:
            return
        time.sleep(0.5)


def train(config, opts, out_dir):
    """tools/train_net.py --resume in ``out_dir`` unless finished; returns its log text and
    the peak memory (MiB, None when the run was reused)."""
    log_path = os.path.join(out_dir, "run.log")
    peak = None
    if not os.path.exists(os.path.join(out_dir, "model_final.pth")):
        os.makedirs(out_dir, exist_ok=True)
        cmd = [sys.executable, "tools/train_net.py", "--config-file", config, "--resume", *opts,
               "OUTPUT_DIR", out_dir]
        print("+", " ".join(cmd), flush=True)
        with open(log_path, "a") as log:
            proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
            stop, samples = threading.Event(), []
            watcher = threading.Thread(target=peak_rss_mib, args=(proc.pid, stop, samples), daemon=True)
            watcher.start()
            code = proc.wait()
            stop.set()
        if code:
            sys.exit(f"{' '.join(cmd)} failed ({code}); see {log_path}")
        peak = max(samples) if samples else None
    with open(log_path) as f:
        return f.read(), peak


def copypaste(log: str, task: str) -> dict:
    """The last metrics Detectron2 printed for ``task``."""
    found = re.findall(rf"copypaste: Task: {task}\n.*copypaste: (\S+)\n.*copypaste: (\S+)", log)
    if not found:
        return {}
    keys, values = found[-1]
    return dict(zip(keys.split(","), map(float, values.split(","))))


def speed(log: str) -> float:
    found = re.findall(r"Overall training speed: .*\(([0-9.]+) s / it\)", log)
    return float(found[-1]) if found else float("nan")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--box-iters", type=int, default=800)
    parser.add_argument("--mask-iters", type=int, default=400)
    parser.add_argument("--pretrain-iters", type=int, default=300)
    parser.add_argument("--arms", nargs="+", default=["scratch", "updetr"], choices=["scratch", "updetr"])
    parser.add_argument("--output", default=os.path.join(ROOT, "output", "bench_panoptic_coco128"))
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides for every run (KEY VALUE ...)")
    args = parser.parse_args()

    from updetr_d2.data import coco128_available, coco128_root

    if not coco128_available():
        sys.exit(f"COCO128 not found at {coco128_root()} (set UPDETR_COCO128)")
    rows = {}
    for arm in args.arms:
        out = os.path.join(args.output, arm)
        box_config, box_opts = BOX, []
        if arm == "updetr":
            train(PRETRAIN, ["DATASETS.TRAIN", "('coco128_panoptic_train',)", *schedule(args.pretrain_iters),
                             *args.opts], os.path.join(out, "pretrain"))
            box_config = BOX_FROM_UPDETR
            box_opts = ["MODEL.WEIGHTS", os.path.join(out, "pretrain", "model_final.pth")]
        box_log, box_peak = train(box_config, [*DATA, *schedule(args.box_iters), "TEST.EVAL_PERIOD", "0",
                                               *box_opts, *args.opts], os.path.join(out, "box"))
        mask_log, mask_peak = train(MASK, [*DATA, *schedule(args.mask_iters), "TEST.EVAL_PERIOD", "0",
                                           "MODEL.WEIGHTS", os.path.join(out, "box", "model_final.pth"),
                                           *args.opts], os.path.join(out, "mask"))
        rows[arm] = dict(box=copypaste(box_log, "bbox"), pq=copypaste(mask_log, "panoptic_seg"),
                         segm=copypaste(mask_log, "segm"), mask_box=copypaste(mask_log, "bbox"),
                         box_speed=speed(box_log), mask_speed=speed(mask_log), box_peak=box_peak, mask_peak=mask_peak)

    nan = float("nan")
    print(f"\nCOCO128 panoptic val (25 images) after {args.box_iters} box + {args.mask_iters} mask iterations"
          + (f", UP-DETR pretraining {args.pretrain_iters} iterations" if "updetr" in rows else "") + ":")
    print(f"  {'arm':8s} {'box AP':>7s} {'PQ':>6s} {'PQ_th':>6s} {'PQ_st':>6s} {'SQ':>6s} {'RQ':>6s} {'segm AP':>8s}"
          f" {'box s/it':>9s} {'mask s/it':>10s} {'box MiB':>8s} {'mask MiB':>9s}")
    for arm, r in rows.items():
        pq = r["pq"]
        print(f"  {arm:8s} {r['box'].get('AP', nan):7.2f} {pq.get('PQ', nan):6.2f} {pq.get('PQ_th', nan):6.2f}"
              f" {pq.get('PQ_st', nan):6.2f} {pq.get('SQ', nan):6.2f} {pq.get('RQ', nan):6.2f}"
              f" {r['segm'].get('AP', nan):8.2f} {r['box_speed']:9.3f} {r['mask_speed']:10.3f}"
              f" {r['box_peak'] or nan:8.0f} {r['mask_peak'] or nan:9.0f}")


if __name__ == "__main__":
    main()
