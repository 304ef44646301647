#!/usr/bin/env python
"""The project's main job, end to end on the generated demo data (`make demo`):
UP-DETR pretraining of a Deformable DETR on unlabeled images, fine-tuning on labelled
ones, COCO evaluation, then pictures.

    python tools/demo.py                       # pretrain -> fine-tune -> evaluate -> pictures
    python tools/demo.py --baseline            # also train the same detector from scratch
    python tools/demo.py SOLVER.MAX_ITER 50    # trailing KEY VALUE pairs: overrides for every stage

Each stage is one `tools/train_net.py` run in its own folder under `output/demo/`; a stage
that finished before is not run again (delete its folder, or `make clean`, to redo it).
At the end it prints a table of the COCO metrics (AP, AP50, AP75 on `updetr_demo_val`) and
writes `curves_pretraining.png` and `curves_finetuning.png` (losses, learning rate, AP
over iterations) and `detections/` (the fine-tuned detector's boxes on a few val images).
Every stage is seeded (`SEED` in its config): a run on the same machine and software gives
the same numbers.
"""
import argparse
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(ROOT, "projects", "UPDETR", "configs")
PRETRAIN_CONFIG = os.path.join(CONFIGS, "updetr_deformable_effnet_lite0_demo_pretrain.yaml")
# Takes the pretraining's backbone, input projections and encoder (README, "UP-DETR": what
# the hand-off does).
FINETUNE_CONFIG = os.path.join(CONFIGS, "deformable_detr_effnet_lite0_demo_finetune.yaml")
NUM_DRAWN = 4  # val images the detections are drawn on
DRAW_THRESHOLD = 0.3


def stages(output: str, baseline: bool):
    """(name, what it does, config file, its own overrides) of each stage, in order."""
    pretrain_dir = os.path.join(output, "pretrain")
    listed = [
        ("pretrain", "UP-DETR pretraining on the demo's unlabeled images (random query patch detection)",
         PRETRAIN_CONFIG, ["OUTPUT_DIR", pretrain_dir]),
        ("finetune", "fine-tune the pretrained Deformable DETR on the labelled demo images, evaluate",
         FINETUNE_CONFIG, ["MODEL.WEIGHTS", os.path.join(pretrain_dir, "model_final.pth"),
                           "OUTPUT_DIR", os.path.join(output, "finetune")]),
    ]
    if baseline:
        listed.append(("scratch", "the same detector and schedule without pretraining (baseline)",
                       FINETUNE_CONFIG, ["MODEL.WEIGHTS", "", "MODEL.WEIGHTS_SKIP", "()",
                                         "OUTPUT_DIR", os.path.join(output, "scratch")]))
    return listed


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", action="store_true",
                        help="also train the fine-tuning detector from scratch, for comparison")
    parser.add_argument("--output", default=os.path.join(ROOT, "output", "demo"), metavar="DIR",
                        help="where the stages' folders, the pictures and results.json go")
    parser.add_argument("opts", nargs=argparse.REMAINDER, metavar="KEY VALUE",
                        help="config overrides given to every stage")
    return parser.parse_args(argv)


def finished(output_dir: str) -> bool:
    """A stage is done when its final weights exist (Detectron2 writes them last)."""
    return os.path.isfile(os.path.join(output_dir, "model_final.pth"))


def run_stage(config_file, overrides, opts, resume: bool):
    """One tools/train_net.py run, in its own process as a user would start it."""
    cmd = [sys.executable, os.path.join(ROOT, "tools", "train_net.py"), "--config-file", config_file,
           *(["--resume"] if resume else []), *overrides, *opts]
    subprocess.run(cmd, cwd=ROOT, check=True)


def final_metrics(output_dir: str) -> dict:
    """The COCO bbox metrics of the run's last evaluation, from its metrics.json."""
    from updetr_d2.utils.plots import read_metrics

    evaluated = [r for r in read_metrics(output_dir) if "bbox/AP" in r]
    if not evaluated:
        sys.exit(f"error: no evaluation results in {output_dir}/metrics.json")
    return {k.split("/", 1)[1]: v for k, v in evaluated[-1].items() if k.startswith("bbox/")}


def write_pictures(runs: dict, output: str, opts) -> list:
    """Curves of every stage and the fine-tuned detector's detections; returns the paths."""
    import updetr_d2  # noqa: F401  (compat fixes and registration)
    from updetr_d2.data import ensure_demo_dataset, list_image_files
    from updetr_d2.utils.plots import plot_metrics, read_metrics

    sys.path.insert(0, os.path.join(ROOT, "tools"))
    import draw_detections

    written = [plot_metrics({"pretrain": read_metrics(runs["pretrain"])},
                            os.path.join(output, "curves_pretraining.png"))]
    written.append(plot_metrics({name: read_metrics(d) for name, d in runs.items() if name != "pretrain"},
                                os.path.join(output, "curves_finetuning.png")))
    images = list_image_files(os.path.join(ensure_demo_dataset(), "images", "val"))[:NUM_DRAWN]
    drawn = draw_detections.main([
        "--config-file", FINETUNE_CONFIG, "--weights", os.path.join(runs["finetune"], "model_final.pth"),
        "--input", *images, "--output", os.path.join(output, "detections"),
        "--threshold", str(DRAW_THRESHOLD), *opts,
    ])
    return written + sorted(drawn["outputs"].values())


def main(argv=None):
    """Runs the stages, prints the table and the pictures' paths; returns the metrics by run."""
    args = parse_args(argv)
    listed = stages(args.output, args.baseline)
    runs, seconds = {}, {}
    for i, (name, what, config_file, overrides) in enumerate(listed, 1):
        output_dir = overrides[overrides.index("OUTPUT_DIR") + 1]
        runs[name] = output_dir
        # Overrides change what a stage computes: then every stage starts afresh.
        if finished(output_dir) and not args.opts:
            print(f"\n=== demo stage {i}/{len(listed)}: {name} finished before ({output_dir}); not run again")
            continue
        print(f"\n=== demo stage {i}/{len(listed)}: {what}\n    {os.path.relpath(config_file, ROOT)}", flush=True)
        start = time.perf_counter()
        # A stage killed part-way continues from its last checkpoint.
        resume = not args.opts and os.path.isfile(os.path.join(output_dir, "last_checkpoint"))
        run_stage(config_file, overrides, args.opts, resume=resume)
        seconds[name] = time.perf_counter() - start

    metrics = {name: final_metrics(runs[name]) for name in runs if name != "pretrain"}
    pictures = write_pictures(runs, args.output, args.opts)
    print(f"\n=== demo finished: {sum(seconds.values()):.0f} s of training and evaluation")
    print("COCO bbox metrics on updetr_demo_val (%):")
    print(f"  {'run':<10} {'AP':>6} {'AP50':>6} {'AP75':>6} {'seconds':>8}")
    for name in runs:
        took = f"{seconds[name]:.0f}" if name in seconds else "-"
        if name in metrics:
            m = metrics[name]
            print(f"  {name:<10} {m['AP']:6.2f} {m['AP50']:6.2f} {m['AP75']:6.2f} {took:>8}")
        else:
            print(f"  {name:<10} {'':>6} {'':>6} {'':>6} {took:>8}   (pretraining: no detection metrics)")
    print("Pictures:")
    for path in pictures:
        print("  " + os.path.relpath(path, ROOT))
    from updetr_d2.utils.files import write_json_atomic

    write_json_atomic({"metrics": metrics, "seconds": seconds}, os.path.join(args.output, "results.json"))
    return metrics


if __name__ == "__main__":
    main()
