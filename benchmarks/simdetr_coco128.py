#!/usr/bin/env python
"""Does SimDETR pretraining help? Pretrain on unlabeled photos, fine-tune on COCO128 train,
evaluate on COCO128 val, next to UP-DETR pretraining and no pretraining (not a test).

    python benchmarks/simdetr_coco128.py --pretrain-iters 500 --finetune-iters 600

Arms, all fine-tuned with the same config, schedule and seed:
  none      the fine-tuning config as is (ImageNet EfficientNet-Lite0 backbone, DETR from scratch);
  UP-DETR   projects/UPDETR/configs/updetr_effnet_lite0_demo_pretrain.yaml (frozen backbone);
  SimDETR   stage A (tools/simdetr.py proposals, proposals_effnet_lite0.yaml) and B (cluster, K
            pseudo-classes) on the photos, then projects/SimDETR/configs/
            simdetr_detr_effnet_lite0_demo_pretrain.yaml (backbone trained, self-training rounds).
On a CPU, training EfficientNet-Lite0's depthwise convolutions makes a step ~4x slower
(1.7 s with the backbone frozen vs 7.6 s with res3-res5 trained, batch 4 at 256x341, 2 busy
cores), so by default every arm keeps the backbone frozen, in pretraining and fine-tuning
(--simdetr-opts / --finetune-opts ""  train it as the configs do).
Every step is a tools/ run with its own folder under --output; a rerun skips finished steps
(a step is finished when its model_final.pth / round_000.json exists), so a killed
benchmark resumes. Prints a table of COCO AP / AP50 / AP75 and writes results.json.
"""
import argparse
import json
import os
import sys

import numpy as np

from _common import ROOT, copypaste_ap, schedule, sh, train_net

SIMDETR = os.path.join(ROOT, "projects", "SimDETR", "configs")


def train(config, opts, out_dir):
    """A train_net run in ``out_dir`` (skipped once finished): its last COCO AP."""
    return copypaste_ap(os.path.join(train_net(config, opts, out_dir), "run.log"))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--unlabeled", default=os.path.join(ROOT, "..", "shared", "data", "unlabeled", "images"))
    parser.add_argument("--finetune-config", default=os.path.join(ROOT, "configs", "demo", "detr_effnet_lite0_demo.yaml"))
    parser.add_argument("--pretrain-iters", type=int, default=500)
    parser.add_argument("--finetune-iters", type=int, default=600)
    parser.add_argument("--num-clusters", type=int, default=64, help="K of the SimDETR pseudo-classes")
    parser.add_argument("--rounds", type=int, default=1, help="SimDETR self-training rounds")
    parser.add_argument("--seeds", default="1,2,3",
                        help="fine-tuning seeds (pretraining runs once, with the first)")
    parser.add_argument("--arms", default="none,UP-DETR,SimDETR")
    parser.add_argument("--simdetr-opts", default="MODEL.EFFICIENTNET.FREEZE_AT 5",
                        help="overrides of the SimDETR pretraining config (space-separated)")
    parser.add_argument("--finetune-opts", default="MODEL.EFFICIENTNET.FREEZE_AT 5",
                        help="overrides of every fine-tuning run (space-separated)")
    parser.add_argument("--output", default=os.path.join(ROOT, "output", "bench_simdetr_coco128"))
    args = parser.parse_args()

    from updetr_d2.data import coco128_available, coco128_root

    if not coco128_available():
        sys.exit(f"COCO128 not found at {coco128_root()} (set UPDETR_COCO128)")
    if not os.path.isdir(args.unlabeled):
        sys.exit(f"no unlabeled image folder at {args.unlabeled} (--unlabeled)")
    out = os.path.abspath(args.output)
    images = os.path.abspath(args.unlabeled)
    arms = args.arms.split(",")
    seeds = [int(x) for x in args.seeds.split(",")]
    seed = ["SEED", str(seeds[0])]

    def pretrain_opts(iters):
        return ["DATASETS.TRAIN", f"('{images}',)", *schedule(iters), *seed]

    weights = {"none": None}
    if "UP-DETR" in arms:
        pre = os.path.join(out, "updetr_pretrain")
        train(os.path.join(ROOT, "projects", "UPDETR", "configs", "updetr_effnet_lite0_demo_pretrain.yaml"),
              pretrain_opts(args.pretrain_iters), pre)
        weights["UP-DETR"] = os.path.join(pre, "model_final.pth")
    if "SimDETR" in arms:
        proposals, targets = os.path.join(out, "simdetr_proposals"), os.path.join(out, "simdetr_targets")
        os.makedirs(out, exist_ok=True)
        tool = [sys.executable, "tools/simdetr.py"]
        if not os.path.exists(os.path.join(proposals, "proposals.json")):
            sh(tool + ["proposals", "--config-file", os.path.join(SIMDETR, "proposals_effnet_lite0.yaml"),
                       "--dataset", images, "--output", proposals], os.path.join(out, "simdetr_stage_a.log"))
        if not os.path.exists(os.path.join(targets, "round_000.json")):
            sh(tool + ["cluster", "--proposals", proposals, "--output", targets,
                       "SIMDETR.CLUSTERING.NUM_CLUSTERS", str(args.num_clusters)],
               os.path.join(out, "simdetr_stage_b.log"))
        pre = os.path.join(out, "simdetr_pretrain")
        train(os.path.join(SIMDETR, "simdetr_detr_effnet_lite0_demo_pretrain.yaml"),
              pretrain_opts(args.pretrain_iters) + [
                  "MODEL.DETR.NUM_CLASSES", str(args.num_clusters), "SIMDETR.CLUSTERING.NUM_CLUSTERS",
                  str(args.num_clusters), "SIMDETR.TARGETS_DIR", targets,
                  "SIMDETR.SELF_TRAINING.ROUNDS", str(args.rounds), *args.simdetr_opts.split()], pre)
        weights["SimDETR"] = os.path.join(pre, "model_final.pth")

    finetune = ["DATASETS.TRAIN", "('coco128_train',)", "DATASETS.TEST", "('coco128_val',)",
                "MODEL.DETR.NUM_CLASSES", "80", *schedule(args.finetune_iters), *args.finetune_opts.split()]
    results = {}
    for arm in [a for a in ["none", "UP-DETR", "SimDETR"] if a in arms]:
        for s in seeds:
            opts = finetune + ["SEED", str(s)] + (["MODEL.WEIGHTS", weights[arm]] if weights[arm] else [])
            results.setdefault(arm, {})[s] = train(args.finetune_config, opts, os.path.join(out, f"finetune_{arm}_seed{s}"))
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump({"args": vars(args), "results": results}, f, indent=1)
    print(f"\nCOCO128 val after {args.finetune_iters} fine-tuning iterations, mean +- std over seeds {seeds}; "
          f"pretraining: {args.pretrain_iters} iterations on {images}")
    print(f"  {'pretraining':12s} " + " ".join(f"{k:>13s}" for k in ("AP", "AP50", "AP75")) + "   per seed AP")
    for arm, per_seed in results.items():
        cells = []
        for k in ("AP", "AP50", "AP75"):
            v = np.array([m.get(k, np.nan) for m in per_seed.values()])
            cells.append(f"{v.mean():6.2f} +- {v.std():4.2f}")
        print(f"  {arm:12s} " + " ".join(cells) + "   " + ", ".join(f"{m.get('AP', np.nan):.2f}" for m in per_seed.values()))


if __name__ == "__main__":
    main()
