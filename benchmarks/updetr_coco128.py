#!/usr/bin/env python
"""Does UP-DETR pretraining help? A small real experiment (not a test).

1. Pretrain UP-DETR on a folder of unlabeled photos (default ../shared/data/unlabeled).
2. Fine-tune DETR on COCO128's train split starting from that checkpoint.
3. Fine-tune DETR on the same split from scratch, with the same iteration budget.
4. Print COCO AP / AP50 on COCO128's val split for both, side by side.

    python benchmarks/updetr_coco128.py --pretrain-iters 2000 --finetune-iters 3000

Each stage is a tools/train_net.py run (logs under --output). The default model is the
demo DETR on the ImageNet-pretrained EfficientNet-Lite0 (frozen during pretraining, as the
paper's CNN); pass --pretrain-config/--finetune-config and opts for others.
"""
import argparse
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(config, opts, log_path):
    cmd = [sys.executable, os.path.join(ROOT, "tools", "train_net.py"), "--config-file", config, *opts]
    print("+", " ".join(cmd), flush=True)
    with open(log_path, "w") as log:
        subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, check=True)
    with open(log_path) as f:
        rows = re.findall(r"copypaste: AP,AP50,AP75,APs,APm,APl\n.*copypaste: (\S+)", f.read())
    return dict(zip(["AP", "AP50", "AP75", "APs", "APm", "APl"], map(float, rows[-1].split(",")))) if rows else {}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--unlabeled", default=os.path.join(ROOT, "..", "shared", "data", "unlabeled", "images"))
    parser.add_argument("--pretrain-config", default=os.path.join(ROOT, "projects", "UPDETR", "configs",
                                                                  "updetr_effnet_lite0_demo_pretrain.yaml"))
    parser.add_argument("--finetune-config", default=os.path.join(ROOT, "configs", "demo", "detr_effnet_lite0_demo.yaml"))
    parser.add_argument("--pretrain-iters", type=int, default=2000)
    parser.add_argument("--finetune-iters", type=int, default=3000)
    parser.add_argument("--output", default=os.path.join(ROOT, "output", "bench_updetr_coco128"))
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides for every stage")
    args = parser.parse_args()

    from updetr_d2.data import coco128_available, coco128_root

    if not coco128_available():
        sys.exit(f"COCO128 not found at {coco128_root()} (set UPDETR_COCO128)")
    if not os.path.isdir(args.unlabeled):
        sys.exit(f"no unlabeled image folder at {args.unlabeled} (--unlabeled)")
    os.makedirs(args.output, exist_ok=True)
    pre_dir = os.path.join(args.output, "pretrain")
    steps = f"({int(args.finetune_iters * 0.8)},)"
    finetune = ["DATASETS.TRAIN", "('coco128_train',)", "DATASETS.TEST", "('coco128_val',)",
                "MODEL.DETR.NUM_CLASSES", "80", "SOLVER.MAX_ITER", str(args.finetune_iters),
                "SOLVER.STEPS", steps, "SOLVER.CHECKPOINT_PERIOD", str(args.finetune_iters), *args.opts]
    run(args.pretrain_config,
        ["DATASETS.TRAIN", f"('{os.path.abspath(args.unlabeled)}',)", "SOLVER.MAX_ITER", str(args.pretrain_iters),
         "SOLVER.STEPS", f"({int(args.pretrain_iters * 0.8)},)", "SOLVER.CHECKPOINT_PERIOD",
         str(args.pretrain_iters), "OUTPUT_DIR", pre_dir, *args.opts],
        os.path.join(args.output, "pretrain.log"))
    results = {
        "UP-DETR pretrained": run(args.finetune_config, finetune + [
            "MODEL.WEIGHTS", os.path.join(pre_dir, "model_final.pth"), "OUTPUT_DIR",
            os.path.join(args.output, "finetune")], os.path.join(args.output, "finetune.log")),
        "from scratch": run(args.finetune_config, finetune + [
            "OUTPUT_DIR", os.path.join(args.output, "scratch")], os.path.join(args.output, "scratch.log")),
    }
    print(f"\nCOCO128 val after {args.finetune_iters} fine-tuning iterations "
          f"({args.pretrain_iters} pretraining iterations on {args.unlabeled}):")
    for name, metrics in results.items():
        print(f"  {name:20s} AP {metrics.get('AP', float('nan')):6.2f}   AP50 {metrics.get('AP50', float('nan')):6.2f}")


if __name__ == "__main__":
    main()
