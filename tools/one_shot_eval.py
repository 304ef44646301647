#!/usr/bin/env python
"""One-shot detection evaluation (UP-DETR paper, section 6) of an UpDetr model.

    python tools/one_shot_eval.py --config-file CFG.yaml MODEL.WEIGHTS model_final.pth \
        INPUT.ONE_SHOT.SEEN_CLASSES "('circle', 'square')"

The config describes the one-shot model (``MODEL.META_ARCHITECTURE "UPDETR"``,
``INPUT.QUERY_PATCH.NUM_PATCHES 1``, ``MODEL.UPDETR.FEATURE_RECONSTRUCTION False``). It is
evaluated on ``DATASETS.TEST[0]``: for every image and every class in it, one query crop
of that class from another image (seed ``INPUT.QUERY_PATCH.SEED``, 0 when -1), patch
size ``INPUT.QUERY_PATCH.SIZE``, image resize ``INPUT.MIN_SIZE_TEST``/``MAX_SIZE_TEST``.
Prints AP50 per class and the means over ``INPUT.ONE_SHOT.SEEN_CLASSES`` (empty: all
classes are seen) and over the other (unseen) classes. yaml configs only.
"""
import json
import os
import sys

import updetr_d2  # noqa: F401  (compat fixes and registration, before Detectron2 is used)
from updetr_d2.checkpoint import DetrCheckpointer
from detectron2.engine import default_argument_parser
from detectron2.modeling import build_model
from detectron2.utils.logger import setup_logger
from updetr_d2.config import load_yaml_config
from updetr_d2.methods.updetr import evaluate_one_shot, format_one_shot_results


def setup(args):
    if not args.config_file or args.config_file.endswith(".py"):
        raise SystemExit("--config-file must be a yaml config")
    cfg = load_yaml_config(args.config_file, args.opts)
    cfg.freeze()
    return cfg


def main(argv=None):
    parser = default_argument_parser()
    parser.add_argument("--max-images", type=int, default=None, help="evaluate the first N images only")
    parser.add_argument("--output", default=None, help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    setup_logger(name="updetr_d2")
    cfg = setup(args)
    if not cfg.DATASETS.TEST:
        raise SystemExit("DATASETS.TEST is empty: name the labelled dataset to evaluate on")
    model = build_model(cfg)
    if cfg.MODEL.WEIGHTS:
        DetrCheckpointer.from_config(cfg, model).load(cfg.MODEL.WEIGHTS)
    else:
        print("warning: MODEL.WEIGHTS is empty, evaluating a randomly initialised model", file=sys.stderr)
    seen = list(cfg.INPUT.ONE_SHOT.SEEN_CLASSES)
    seed = cfg.INPUT.QUERY_PATCH.SEED if cfg.INPUT.QUERY_PATCH.SEED >= 0 else 0
    results = evaluate_one_shot(
        model, cfg.DATASETS.TEST[0], seen, cfg.INPUT.QUERY_PATCH.SIZE, cfg.INPUT.MIN_SIZE_TEST,
        cfg.INPUT.MAX_SIZE_TEST, seed=seed, image_format=cfg.INPUT.FORMAT, max_images=args.max_images,
    )
    seen_names = seen or list(results["AP50"])
    print(f"One-shot AP50 on {cfg.DATASETS.TEST[0]}:")
    print(format_one_shot_results(results, seen_names))
    print("seen_AP50: " + (f"{results['seen_AP50']:.2f}" if "seen_AP50" in results else "n/a (no seen class queried)"))
    print("unseen_AP50: " + (f"{results['unseen_AP50']:.2f}" if "unseen_AP50" in results
                             else "n/a (no unseen class queried)"))
    if args.output:
        os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
        with open(args.output, "w") as f:
            json.dump(results, f, indent=2)
    return results


if __name__ == "__main__":
    main()
