#!/usr/bin/env python
"""What does a pretext cost per training step? The plain detector's step against the
multi-task step (its detection pass + the pretext's backbone + encoder pass on the
corrupted view) on the same batch, measured in one process, interleaved, so machine load
hits both alike (not a test).

    python benchmarks/encoder_pretext_step.py --detectors detr,deformable --steps 10

Models: the demo DETR / Deformable DETR on the ImageNet EfficientNet-Lite0 (backbone
frozen by default, as in benchmarks/encoder_pretext_coco128.py), batch 4 of COCO128 train
images at the configs' training sizes. Prints the median seconds per step and the ratio.
"""
import argparse
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PRETEXT = os.path.join(ROOT, "projects", "EncoderPretext", "configs")
STEMS = {"detr": "detr", "deformable": "deformable_detr"}
TASKS = ("reconstruction", "mim_continuous", "jigsaw_continuous", "jigsaw_discrete")


def step_time(model, optimizer, batch):
    start = time.perf_counter()
    losses = model(batch)
    optimizer.zero_grad()
    sum(losses.values()).backward()
    optimizer.step()
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--detectors", default="detr,deformable")
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--opts", default="MODEL.EFFICIENTNET.FREEZE_AT 5")
    args = parser.parse_args()

    import numpy as np
    import torch

    import updetr_d2  # noqa: F401  (compat fixes before Detectron2's data modules)
    from detectron2.data import DatasetCatalog
    from detectron2.modeling import build_model
    from detectron2.utils.events import EventStorage
    from updetr_d2.config import load_yaml_config
    from updetr_d2.data import coco128_available
    from updetr_d2.methods.pretext import PretextDatasetMapper
    from updetr_d2.solver import build_optimizer

    if not coco128_available():
        sys.exit("COCO128 not found (set UPDETR_COCO128)")
    records = DatasetCatalog.get("coco128_train")[:4]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; batch {len(records)}, "
          f"median of {args.steps} steps after 3 warm-up steps")
    for det in args.detectors.split(","):
        base = load_yaml_config(os.path.join(PRETEXT, f"pretext_{STEMS[det]}_effnet_lite0_demo_multitask.yaml"),
                                ["MODEL.DETR.NUM_CLASSES", "80", "MODEL.DEVICE", "cpu", *args.opts.split()])
        np.random.seed(0)
        batch = [PretextDatasetMapper(base, True, seed=0)(r) for r in records]
        models = {}
        for name in ["plain"] + args.tasks.split(","):
            cfg = base.clone()
            if name == "plain":
                cfg.MODEL.DETR.PLUGINS, cfg.INPUT.DATASET_MAPPER = [], "DetrDatasetMapper"
            else:
                cfg.MODEL.PRETEXT.TASK = name
            torch.manual_seed(0)
            model = build_model(cfg)
            model.train()
            models[name] = (model, build_optimizer(cfg, model), [])
        with EventStorage(0):
            for i in range(args.steps + 3):
                for model, optimizer, times in models.values():
                    t = step_time(model, optimizer, batch)
                    if i >= 3:
                        times.append(t)
        plain = statistics.median(models["plain"][2])
        print(f"\n{det}\n  {'model':22s} {'s/step':>7s} {'x plain':>8s}")
        for name, (_, _, times) in models.items():
            median = statistics.median(times)
            print(f"  {name:22s} {median:7.3f} {median / plain:8.2f}")


if __name__ == "__main__":
    main()
