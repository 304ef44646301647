#!/usr/bin/env python
"""The DETR family at an equal iteration budget (not a test): DETR, Deformable DETR,
DN-Deformable-DETR, DINO, Co-Deformable-DETR and Co-DINO.

Each model is trained on COCO128's train split and evaluated on its val split through
tools/train_net.py with the same data, input sizes, batch, schedule and iteration count;
COCO AP / AP50 are printed side by side with the seconds per training iteration and its
ratio to Deformable DETR's (Detectron2's "Overall training speed"; measured in the same
run, so compare only runs of one invocation on an otherwise idle machine).

    python benchmarks/detr_family_coco128.py --iters 1000

The default models are the demo-sized ones on the ImageNet-pretrained EfficientNet-Lite0
(128-wide 2+2-layer transformers): configs/demo/detr_effnet_lite0_demo.yaml,
projects/DeformableDETR/configs/deformable_detr_effnet_lite0_demo.yaml,
projects/DNDETR/configs/dn_deformable_detr_effnet_lite0_demo.yaml,
projects/DINO/configs/dino_effnet_lite0_demo.yaml,
projects/CoDETR/configs/co_deformable_detr_effnet_lite0_demo.yaml and
projects/CoDETR/configs/co_dino_effnet_lite0_demo.yaml (``--models`` picks). Extra config
overrides (KEY VALUE ...) after the options apply to every run. A model whose log in
``--output`` already has its result is not trained again (``--rerun`` trains it anyway),
so an interrupted invocation continues where it stopped.
"""
import argparse
import os
import re
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = {
    "DETR": os.path.join(ROOT, "configs", "demo", "detr_effnet_lite0_demo.yaml"),
    "Deformable DETR": os.path.join(ROOT, "projects", "DeformableDETR", "configs",
                                    "deformable_detr_effnet_lite0_demo.yaml"),
    "DN-Deformable DETR": os.path.join(ROOT, "projects", "DNDETR", "configs",
                                       "dn_deformable_detr_effnet_lite0_demo.yaml"),
    "DINO": os.path.join(ROOT, "projects", "DINO", "configs", "dino_effnet_lite0_demo.yaml"),
    "Co-Deformable DETR": os.path.join(ROOT, "projects", "CoDETR", "configs",
                                       "co_deformable_detr_effnet_lite0_demo.yaml"),
    "Co-DINO": os.path.join(ROOT, "projects", "CoDETR", "configs", "co_dino_effnet_lite0_demo.yaml"),
}


def read_log(log_path):
    """(metrics with ``s_per_iter``, seconds of the run) from a finished run's log, or None."""
    if not os.path.exists(log_path):
        return None
    with open(log_path) as f:
        log = f.read()
    rows = re.findall(r"copypaste: AP,AP50,AP75,APs,APm,APl\n.*copypaste: (\S+)", log)
    speed = re.findall(r"Overall training speed: .*\(([0-9.]+) s / it\)", log)
    wall = re.findall(r"^# wall seconds: ([0-9.]+)$", log, re.MULTILINE)
    if not (rows and speed and wall):
        return None
    metrics = dict(zip(["AP", "AP50", "AP75", "APs", "APm", "APl"], map(float, rows[-1].split(","))))
    metrics["s_per_iter"] = float(speed[-1])
    return metrics, float(wall[-1])


def run(config, opts, log_path, rerun=False):
    done = None if rerun else read_log(log_path)
    if done is not None:
        print(f"= {log_path}: finished before, not trained again", flush=True)
        return done
    cmd = [sys.executable, os.path.join(ROOT, "tools", "train_net.py"), "--config-file", config, *opts]
    print("+", " ".join(cmd), flush=True)
    start = time.perf_counter()
    with open(log_path, "w") as log:
        subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, check=True)
    with open(log_path, "a") as log:
        log.write(f"# wall seconds: {time.perf_counter() - start:.1f}\n")
    return read_log(log_path)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--iters", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--output", default=os.path.join(ROOT, "output", "bench_detr_family_coco128"))
    parser.add_argument("--rerun", action="store_true", help="train every model again, even if its log has a result")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides for every run")
    args = parser.parse_args()

    from updetr_d2.data import coco128_available, coco128_root

    if not coco128_available():
        sys.exit(f"COCO128 not found at {coco128_root()} (set UPDETR_COCO128)")
    os.makedirs(args.output, exist_ok=True)
    common = ["DATASETS.TRAIN", "('coco128_train',)", "DATASETS.TEST", "('coco128_val',)",
              "MODEL.DETR.NUM_CLASSES", "80", "SOLVER.IMS_PER_BATCH", str(args.batch),
              "SOLVER.MAX_ITER", str(args.iters), "SOLVER.STEPS", f"({int(args.iters * 0.8)},)",
              "SOLVER.CHECKPOINT_PERIOD", str(args.iters), "SEED", "0", *args.opts]
    results = {}
    for name in args.models:
        slug = name.lower().replace(" ", "_").replace("-", "_")
        results[name] = run(MODELS[name], common + ["OUTPUT_DIR", os.path.join(args.output, slug)],
                            os.path.join(args.output, slug + ".log"), args.rerun)
    print(f"\nCOCO128 val after {args.iters} iterations at batch {args.batch} (train split, same schedule):")
    reference = results.get("Deformable DETR", ({}, 0))[0].get("s_per_iter", float("nan"))
    for name, (metrics, seconds) in results.items():
        step = metrics["s_per_iter"]
        print(f"  {name:20s} AP {metrics.get('AP', float('nan')):6.2f}   AP50 {metrics.get('AP50', float('nan')):6.2f}"
              f"   {step:5.2f} s/iter ({step / reference:4.2f}x Deformable DETR)   {seconds / 60:5.1f} min")


if __name__ == "__main__":
    main()
