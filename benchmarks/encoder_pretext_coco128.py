#!/usr/bin/env python
"""Do the encoder pretexts help? DETR and Deformable DETR on COCO128, from scratch vs
after each pretext's encoder-only pretraining on unlabeled photos vs multi-task (the
pretext next to the detection loss), at an equal fine-tuning budget and seed; the
multi-task step-time cost; each pretext's own loss on held-out images before and after
pretraining, so a pretext that was never learned is visible (not a test).

    python benchmarks/encoder_pretext_coco128.py --pretrain-iters 300 --finetune-iters 400

Arms per detector (the demo DETR / Deformable DETR on the ImageNet EfficientNet-Lite0,
backbone frozen in every arm by default: training its depthwise convolutions on a CPU
makes a step ~4x slower; --opts "" trains it as the configs do):
  none            the detector config as is, fine-tuned on COCO128 train;
  pre:<task>      projects/EncoderPretext/configs/pretext_<det>_effnet_lite0_demo_pretrain.yaml
                  on --unlabeled, then the detector config with MODEL.WEIGHTS;
  multi:<task>    pretext_<det>_effnet_lite0_demo_multitask.yaml on COCO128 train.
mim_discrete first builds a k-means codebook of the photos (tools/pretext.py codebook).
Every run is a tools/ run in its own folder under --output; a rerun skips finished runs
(model_final.pth exists), so a killed benchmark resumes. Prints the tables and writes
results.json.
"""
import argparse
import json
import os
import sys

import numpy as np

from _common import ROOT, copypaste_ap, schedule, sh, train_net

PRETEXT = os.path.join(ROOT, "projects", "EncoderPretext", "configs")
TASKS = ("reconstruction", "mim_continuous", "mim_discrete", "jigsaw_continuous", "jigsaw_discrete")
DETECTORS = {
    "detr": (os.path.join(ROOT, "configs", "demo", "detr_effnet_lite0_demo.yaml"), "detr"),
    "deformable": (os.path.join(ROOT, "projects", "DeformableDETR", "configs", "deformable_detr_effnet_lite0_demo.yaml"),
                   "deformable_detr"),
}


def train(config, opts, out_dir):
    """A train_net run (skipped once finished): (its last COCO AP, its seconds per iteration)."""
    train_net(config, opts, out_dir)
    return copypaste_ap(os.path.join(out_dir, "run.log")), seconds_per_iter(os.path.join(out_dir, "metrics.json"))


def seconds_per_iter(metrics_path):
    """Median logged iteration time (Detectron2's ``time``: the step, data loading excluded)."""
    if not os.path.exists(metrics_path):
        return float("nan")
    with open(metrics_path) as f:
        times = [json.loads(line).get("time") for line in f if line.strip()]
    times = [t for t in times if t is not None]
    return float(np.median(times)) if times else float("nan")


def held_out_pretext_loss(config, opts, weights, dataset, count=16):
    """The pretext loss of a pretraining config's model on ``count`` images of ``dataset``
    (not trained on; labels ignored; test-time resize, seeded corruption), with
    ``weights`` or at initialisation."""
    import torch

    import updetr_d2  # noqa: F401  (compat fixes before Detectron2's data modules)
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.modeling import build_model
    from updetr_d2.config import load_yaml_config
    from detectron2.data import DatasetCatalog
    from updetr_d2.methods.pretext import PretextDatasetMapper

    cfg = load_yaml_config(config, opts)
    cfg.MODEL.DEVICE = "cpu"
    records = DatasetCatalog.get(dataset)[:count]
    mapper = PretextDatasetMapper(cfg, False, seed=0)
    torch.manual_seed(0)
    model = build_model(cfg)
    if weights:
        DetectionCheckpointer(model).load(weights)
    model.eval()
    plugin = model.plugins[0]
    losses = [plugin.held_out_loss(model, [mapper(r) for r in records[i:i + 4]]) for i in range(0, len(records), 4)]
    return float(np.mean(losses))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--unlabeled", default=os.path.join(ROOT, "..", "shared", "data", "unlabeled", "images"))
    parser.add_argument("--held-out", default="coco128_val",
                        help="registered dataset for the held-out pretext loss (its labels are ignored)")
    parser.add_argument("--detectors", default="detr,deformable")
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--arms", default="none,pre,multi", help="which of none, pre, multi to run")
    parser.add_argument("--pretrain-iters", type=int, default=300)
    parser.add_argument("--finetune-iters", type=int, default=400)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--num-codes", type=int, default=256, help="codebook size for mim_discrete")
    parser.add_argument("--opts", default="MODEL.EFFICIENTNET.FREEZE_AT 5",
                        help="overrides of every run, pretraining and fine-tuning (space-separated)")
    parser.add_argument("--output", default=os.path.join(ROOT, "output", "bench_encoder_pretext_coco128"))
    args = parser.parse_args()

    from updetr_d2.data import coco128_available, coco128_root

    if not coco128_available():
        sys.exit(f"COCO128 not found at {coco128_root()} (set UPDETR_COCO128)")
    if not os.path.isdir(args.unlabeled):
        sys.exit(f"no unlabeled image folder at {args.unlabeled} (--unlabeled)")
    out, images = os.path.abspath(args.output), os.path.abspath(args.unlabeled)
    held_out = args.held_out
    tasks, arms = args.tasks.split(","), args.arms.split(",")
    common = ["SEED", str(args.seed), *args.opts.split()]
    n_pre, n_ft = args.pretrain_iters, args.finetune_iters
    pretrain = ["DATASETS.TRAIN", f"('{images}',)", *schedule(n_pre), *common]
    finetune = ["DATASETS.TRAIN", "('coco128_train',)", "DATASETS.TEST", "('coco128_val',)",
                "MODEL.DETR.NUM_CLASSES", "80", *schedule(n_ft), *common]
    results = {}
    for det in args.detectors.split(","):
        detector_config, stem = DETECTORS[det]
        pre_config = os.path.join(PRETEXT, f"pretext_{stem}_effnet_lite0_demo_pretrain.yaml")
        multi_config = os.path.join(PRETEXT, f"pretext_{stem}_effnet_lite0_demo_multitask.yaml")
        rows = results.setdefault(det, {})
        if "none" in arms:
            rows["none"] = train(detector_config, finetune, os.path.join(out, det, "none"))
        for task in tasks:
            task_opts = ["MODEL.PRETEXT.TASK", task]
            if task == "mim_discrete":
                codebook = os.path.join(out, det, "codebook.npz")
                if not os.path.exists(codebook):
                    os.makedirs(os.path.dirname(codebook), exist_ok=True)
                    sh([sys.executable, "tools/pretext.py", "codebook", "--config-file", pre_config, "--output",
                        codebook, "--dataset", images, "--num-codes", str(args.num_codes), *common],
                       os.path.join(out, det, "codebook.log"))
                task_opts += ["MODEL.PRETEXT.CODEBOOK", codebook]
            if "pre" in arms:
                pre_dir = os.path.join(out, det, f"pretrain_{task}")
                train(pre_config, pretrain + task_opts, pre_dir)
                weights = os.path.join(pre_dir, "model_final.pth")
                held = {w: held_out_pretext_loss(pre_config, common + task_opts, w, held_out)
                        for w in ("", weights)}
                ap, t = train(detector_config, finetune + ["MODEL.WEIGHTS", weights],
                              os.path.join(out, det, f"pre_{task}"))
                rows[f"pre:{task}"] = (ap, t, held[""], held[weights])
            if "multi" in arms:
                rows[f"multi:{task}"] = train(multi_config, finetune + task_opts, os.path.join(out, det, f"multi_{task}"))
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump({"args": vars(args), "results": results}, f, indent=1)
    print(f"\nCOCO128 val after {n_ft} fine-tuning iterations (seed {args.seed}); pretraining: {n_pre} "
          f"iterations on {images}; held-out pretext loss on 16 images of {held_out}")
    for det, rows in results.items():
        base_t = rows.get("none", ({}, float("nan")))[1]
        print(f"\n{det}\n  {'arm':26s} {'AP':>6s} {'AP50':>6s} {'AP75':>6s} {'s/iter':>7s} {'x none':>7s}"
              f"   held-out pretext loss (init -> pretrained)")
        for arm, row in rows.items():
            ap, t = row[0], row[1]
            held = f"   {row[2]:.3f} -> {row[3]:.3f}" if len(row) > 2 else ""
            print(f"  {arm:26s} " + " ".join(f"{ap.get(k, float('nan')):6.2f}" for k in ("AP", "AP50", "AP75"))
                  + f" {t:7.3f} {t / base_t:7.2f}" + held)


if __name__ == "__main__":
    main()
