#!/usr/bin/env python
"""Which unsupervised pretraining pays off? Each method pretrains on unlabeled images, its
pretext is checked on held-out images, then every arm is fine-tuned on COCO128 train with
the same schedule and seeds and evaluated on COCO128 val (not a test).

    python benchmarks/pretraining.py --setting full        # ~1.5 hours on 2 CPU cores
    python benchmarks/pretraining.py --setting small --unlabeled updetr_demo_unlabeled \\
        --train updetr_demo_train --val updetr_demo_val --num-classes 4 --output output/bench_pretraining_small

Arms (--arms; the demo DETR on the ImageNet EfficientNet-Lite0 in every arm):
  none      configs/demo/detr_effnet_lite0_demo.yaml as is (--finetune-config);
  UP-DETR   projects/UPDETR/configs/updetr_effnet_lite0_demo_pretrain.yaml; one fine-tuning arm per
            --updetr-handoffs entry, all from the same pretraining: "all" (the default hand-off:
            everything but the pretext's heads), "encoder" (backbone, input projection and encoder;
            decoder, queries and box head fresh), "fresh-queries" (all but the query embeddings),
            through MODEL.WEIGHTS_SKIP;
  SimDETR   stage A (tools/simdetr.py proposals, proposals_effnet_lite0.yaml) and B (cluster,
            K = --num-clusters), then projects/SimDETR/configs/simdetr_detr_effnet_lite0_demo_pretrain.yaml;
  pretext   one arm per --pretext-tasks task: projects/EncoderPretext/configs/
            pretext_detr_effnet_lite0_demo_pretrain.yaml (mim_discrete builds its codebook first).
Pretraining runs once, with the first seed; fine-tuning (MODEL.WEIGHTS = the pretraining's
model_final.pth) runs per seed and evaluates every --eval-period iterations. The backbone is
frozen in every run by default (--opts): training EfficientNet's depthwise convolutions makes a
CPU step ~4x slower.

Each pretext's own success metric, on the first --held-out-images images of --val (labels
ignored), at initialisation and after pretraining, so a pretext that was never learned shows:
  UP-DETR   patch localisation AP / AP50 and feature reconstruction loss on seeded query patches
            (updetr_d2.methods.updetr.held_out_patch_metrics);
  SimDETR   COCO AP against held-out pseudo-labels: stage A on --val with the same settings, each
            proposal assigned to its nearest stage-B centroid (updetr_d2.methods.simdetr.pseudo_label_ap);
  pretext   the pretext loss (EncoderPretext.held_out_loss).

--setting small: a few iterations, one seed, 128 px inputs, one thread (CI-sized); --setting full: 1000
pretraining and 600 fine-tuning iterations, evaluation every 150, seeds 1,2,3. Every budget
has a flag. Each run is a tools/ run in its own folder under --output, skipped when finished
and resumed (--resume) when killed; held-out metrics are cached in held_out.json next to their
pretraining, and the diagnostics of each model where fine-tuning starts and ends (does the decoder
output vary with the image, are the encoder tokens alike; final losses) in handoff_diagnostics.json
and diagnostics.json. A changed budget needs a new --output. Writes results.json, table.md (the
tables and the command line) and ap_curves.png (AP and AP50 against fine-tuning iterations, mean
and min-max band over seeds).
"""
import argparse
import json
import os
import shlex
import sys
from typing import List

import numpy as np

from _common import ROOT, ap_curve, copypaste_ap, schedule, sh, train_net

CONFIGS = {
    "finetune": os.path.join(ROOT, "configs", "demo", "detr_effnet_lite0_demo.yaml"),
    "UP-DETR": os.path.join(ROOT, "projects", "UPDETR", "configs", "updetr_effnet_lite0_demo_pretrain.yaml"),
    "SimDETR": os.path.join(ROOT, "projects", "SimDETR", "configs", "simdetr_detr_effnet_lite0_demo_pretrain.yaml"),
    "stage_a": os.path.join(ROOT, "projects", "SimDETR", "configs", "proposals_effnet_lite0.yaml"),
    "pretext": os.path.join(ROOT, "projects", "EncoderPretext", "configs", "pretext_detr_effnet_lite0_demo_pretrain.yaml"),
}
SMALL_INPUT = ["INPUT.MIN_SIZE_TRAIN", "(128,)", "INPUT.MAX_SIZE_TRAIN", "192", "INPUT.MIN_SIZE_TEST", "128",
               "INPUT.MAX_SIZE_TEST", "192", "INPUT.CROP.SIZE", "(64, 128)", "INPUT.DETR_CROP.PRE_RESIZE", "(128,)",
               "INPUT.QUERY_PATCH.SIZE", "32", "SOLVER.IMS_PER_BATCH", "2", "DATALOADER.NUM_WORKERS", "0"]
SETTINGS = {
    "small": dict(pretrain_iters=4, finetune_iters=4, eval_period=2, seeds="1", held_out_images=4,
                  num_clusters=8, rounds=0, threads=1, updetr_handoffs="all", input_opts=SMALL_INPUT),
    "full": dict(pretrain_iters=1000, finetune_iters=600, eval_period=150, seeds="1,2,3", held_out_images=32,
                 num_clusters=64, rounds=1, threads=0, updetr_handoffs="all,encoder,fresh-queries", input_opts=[]),
}
# The UP-DETR fine-tuning arms: what each does not take from the pretraining (handoff_skip).
HANDOFFS = ("all", "encoder", "fresh-queries")
METRICS = ("AP", "AP50", "AP75")
DIAGNOSTICS = ("image_share", "memory_cosine", "memory_cross_cosine", "loss_ce", "loss_bbox", "loss_giou")
HELD_OUT_NAMES = {"patch_AP50": "patch localisation AP50 (higher: learned)", "patch_AP": "patch localisation AP",
                  "feature_loss": "feature reconstruction loss (lower: learned)",
                  "AP": "AP vs held-out pseudo-labels (higher: learned)", "AP50": "AP50 vs held-out pseudo-labels",
                  "AP75": "AP75 vs held-out pseudo-labels", "loss": "pretext loss (lower: learned)"}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--setting", choices=sorted(SETTINGS), default="full", help="budget defaults")
    parser.add_argument("--arms", default="none,UP-DETR,SimDETR,pretext", help="of none, UP-DETR, SimDETR, pretext")
    parser.add_argument("--pretext-tasks", default="mim_continuous", help="encoder pretext tasks, one arm each")
    parser.add_argument("--unlabeled", default=os.path.join(ROOT, "..", "shared", "data", "unlabeled", "images"),
                        help="pretraining images: a folder or a registered dataset name")
    parser.add_argument("--train", default="coco128_train", help="fine-tuning dataset (registered)")
    parser.add_argument("--val", default="coco128_val", help="evaluation dataset; its images are the held-out ones")
    parser.add_argument("--num-classes", type=int, default=80, help="classes of --train / --val")
    parser.add_argument("--finetune-config", default=CONFIGS["finetune"])
    for flag, kind in (("pretrain-iters", int), ("finetune-iters", int), ("eval-period", int), ("seeds", str),
                       ("held-out-images", int), ("num-clusters", int), ("rounds", int)):
        parser.add_argument(f"--{flag}", type=kind, default=None, help="default: from --setting")
    parser.add_argument("--updetr-handoffs", default=None,
                        help=f"UP-DETR fine-tuning arms, of {', '.join(HANDOFFS)}; default: from --setting")
    parser.add_argument("--num-codes", type=int, default=256, help="codebook size of mim_discrete")
    parser.add_argument("--threads", type=int, default=None,
                        help="OMP_NUM_THREADS of every run (0: leave it); default: from --setting")
    parser.add_argument("--opts", default="MODEL.EFFICIENTNET.FREEZE_AT 5",
                        help="overrides of every run, pretraining and fine-tuning, after the setting's (space-separated)")
    parser.add_argument("--output", default=os.path.join(ROOT, "output", "bench_pretraining"))
    args = parser.parse_args(argv)
    for key, value in SETTINGS[args.setting].items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    args.seed_list = [int(s) for s in args.seeds.split(",")]
    args.common = list(args.input_opts) + args.opts.split()
    args.out = os.path.abspath(args.output)
    return args


def arm_names(args):
    names = []
    for arm in args.arms.split(","):
        if arm not in ("none", "UP-DETR", "SimDETR", "pretext"):
            sys.exit(f"unknown arm {arm!r} (--arms: none, UP-DETR, SimDETR, pretext)")
        if arm == "pretext":
            names += [f"pretext:{t}" for t in args.pretext_tasks.split(",")]
        elif arm == "UP-DETR":
            for handoff in args.updetr_handoffs.split(","):
                if handoff not in HANDOFFS:
                    sys.exit(f"unknown --updetr-handoffs entry {handoff!r} (of {', '.join(HANDOFFS)})")
                names.append("UP-DETR" if handoff == "all" else f"UP-DETR/{handoff}")
        else:
            names.append(arm)
    return names


def slug(arm: str) -> str:
    return arm.replace(":", "_").replace("/", "_")


def handoff_skip(handoff: str):
    """MODEL.WEIGHTS_SKIP of a hand-off (the pretext's class head, patch projection and feature
    head are never taken): "encoder" is the project's UP-DETR fine-tuning configs' own."""
    # Imported here: torch must not load before main() has set OMP_NUM_THREADS.
    from updetr_d2.methods.updetr.checkpoint import ENCODER_HANDOFF_SKIP

    return {"all": (), "encoder": ENCODER_HANDOFF_SKIP, "fresh-queries": ("query_generator.query_embed.",)}[handoff]


def handoff_opts(arm: str):
    """The fine-tuning overrides of an arm: UP-DETR/<handoff> skips parts of the weights."""
    skip = handoff_skip(arm.split("/", 1)[1]) if arm.startswith("UP-DETR/") else ()
    return ["MODEL.WEIGHTS_SKIP", repr(tuple(skip))] if skip else []


def pretrain_opts(args):
    return ["DATASETS.TRAIN", f"('{args.unlabeled}',)", *schedule(args.pretrain_iters),
            "SEED", str(args.seed_list[0]), *args.common]


# --- held-out metrics (in this process: one model build each) ---------------------------------
def build(config, opts, weights):
    """(cfg, model on the CPU) of a config, with ``weights`` or as initialised (seeded)."""
    import torch
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.modeling import build_model
    from updetr_d2.config import load_yaml_config

    cfg = load_yaml_config(config, opts)
    cfg.MODEL.DEVICE = "cpu"
    torch.manual_seed(0)
    model = build_model(cfg)
    if weights:
        DetectionCheckpointer(model).load(weights)
    return cfg, model


def cached(path, key, compute):
    """``compute()``, cached in the json file ``path`` under ``key`` (recomputed when it changed)."""
    if os.path.exists(path):
        with open(path) as f:
            stored = json.load(f)
        if stored.get("key") == key:
            return stored["metrics"]
    metrics = compute()
    with open(path, "w") as f:
        json.dump({"key": key, "metrics": metrics}, f, indent=1)
    return metrics


def held_out(run_dir, args, weights, measure):
    """``{"init": measure(""), "pretrained": measure(weights)}``, cached in run_dir/held_out.json
    (recomputed when the held-out images or the weights file changed)."""
    def compute():
        print(f"held-out metrics of {run_dir}", flush=True)
        return {"init": measure(""), "pretrained": measure(weights)}

    key = [args.val, args.held_out_images, weights, os.path.getmtime(weights)]
    return cached(os.path.join(run_dir, "held_out.json"), key, compute)


DIAGNOSTICS_VERSION = 3  # part of the cache key: a cached result without a newer metric is redone


def measure_decoder(opts, weights, args, handoff=False):
    """decoder_dependence of the fine-tuning config with ``weights`` on the held-out images:
    loaded as the fine-tuning run starts from them (``handoff``: the checkpoint's hand-off
    rules and MODEL.WEIGHTS_SKIP apply, fresh parts seeded) or as saved by the run."""
    from detectron2.data import DatasetCatalog, DatasetMapper
    from updetr_d2.checkpoint import DetrCheckpointer
    from updetr_d2.modeling.diagnostics import decoder_dependence

    cfg, model = build(args.finetune_config, opts, "" if handoff else weights)
    if handoff and weights:
        DetrCheckpointer.from_config(cfg, model).resume_or_load(weights, resume=False)
    mapper = DatasetMapper(cfg, is_train=False)
    return decoder_dependence(model, [mapper(r) for r in DatasetCatalog.get(args.val)[: args.held_out_images]])


def handoff_diagnostics(args, arm, weights):
    """What fine-tuning starts from: measure_decoder at the hand-off, once per arm (cached in
    the arm's first fine-tuning folder)."""
    run_dir = os.path.join(args.out, f"finetune_{slug(arm)}_seed{args.seed_list[0]}")
    os.makedirs(run_dir, exist_ok=True)
    opts = ["MODEL.DETR.NUM_CLASSES", str(args.num_classes), *handoff_opts(arm), *args.common]
    key = [DIAGNOSTICS_VERSION, args.val, args.held_out_images, weights, os.path.getmtime(weights) if weights else 0]
    return cached(os.path.join(run_dir, "handoff_diagnostics.json"), key,
                  lambda: measure_decoder(opts, weights, args, handoff=True))


def diagnostics(run_dir, opts, args):
    """Why a fine-tuned detector scores what it does: how much its decoder output varies with
    the image and how alike its encoder tokens are (updetr_d2.modeling.diagnostics, on the
    held-out images) and its training losses at the end (median of the last 5 logged values)."""
    weights = os.path.join(run_dir, "model_final.pth")

    def compute():
        from updetr_d2.utils.plots import read_metrics

        found = measure_decoder(opts, weights, args)
        records = read_metrics(run_dir)
        for k in ("loss_ce", "loss_bbox", "loss_giou"):
            logged = [r[k] for r in records if k in r]
            if logged:
                found[k] = float(np.median(logged[-5:]))
        return found

    key = [DIAGNOSTICS_VERSION, args.val, args.held_out_images, os.path.getmtime(weights)]
    return cached(os.path.join(run_dir, "diagnostics.json"), key, compute)


def updetr_metrics(opts, weights, args):
    from detectron2.data import DatasetCatalog
    from updetr_d2.methods.updetr import QueryPatchDatasetMapper, held_out_patch_metrics

    cfg, model = build(CONFIGS["UP-DETR"], opts, weights)
    mapper = QueryPatchDatasetMapper(cfg, False, seed=0)  # the same patches at every evaluation
    return held_out_patch_metrics(model, [mapper(r) for r in DatasetCatalog.get(args.val)[: args.held_out_images]])


def simdetr_metrics(opts, weights, proposals_dir, targets_dir, args):
    from updetr_d2.methods.simdetr import held_out_pseudo_labels, load_proposals, pseudo_label_ap

    centroids = np.load(os.path.join(targets_dir, "centroids.npy"))
    coco = held_out_pseudo_labels(load_proposals(proposals_dir), centroids, args.held_out_images)
    with open(os.path.join(args.out, "simdetr_held_out_pseudo_labels.json"), "w") as f:
        json.dump(coco, f)
    cfg, model = build(CONFIGS["SimDETR"], opts, weights)
    return pseudo_label_ap(model, coco, cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST, cfg.INPUT.FORMAT)


# --- pretraining arms: (weights, held-out metrics) ---------------------------------------------
def pretrain_updetr(args):
    opts = pretrain_opts(args)
    run = train_net(CONFIGS["UP-DETR"], opts, os.path.join(args.out, "pretrain_UP-DETR"))
    weights = os.path.join(run, "model_final.pth")
    return weights, held_out(run, args, weights, lambda w: updetr_metrics(opts, w, args))


def stage_a(dataset, output, args):
    if not os.path.exists(os.path.join(output, "proposals.json")):
        sh([sys.executable, "tools/simdetr.py", "proposals", "--config-file", CONFIGS["stage_a"], "--dataset", dataset,
            "--output", output, *args.common], output + ".log")


def pretrain_simdetr(args):
    proposals, targets = os.path.join(args.out, "simdetr_proposals"), os.path.join(args.out, "simdetr_targets")
    stage_a(args.unlabeled, proposals, args)
    if not os.path.exists(os.path.join(targets, "round_000.json")):
        sh([sys.executable, "tools/simdetr.py", "cluster", "--proposals", proposals, "--output", targets,
            "SIMDETR.CLUSTERING.NUM_CLUSTERS", str(args.num_clusters)], targets + ".log")
    k = str(args.num_clusters)
    opts = ["MODEL.DETR.NUM_CLASSES", k, "SIMDETR.CLUSTERING.NUM_CLUSTERS", k, "SIMDETR.TARGETS_DIR", targets,
            "SIMDETR.SELF_TRAINING.ROUNDS", str(args.rounds), *pretrain_opts(args)]
    run = train_net(CONFIGS["SimDETR"], opts, os.path.join(args.out, "pretrain_SimDETR"))
    held_proposals = os.path.join(args.out, "simdetr_held_out_proposals")
    stage_a(args.val, held_proposals, args)
    weights = os.path.join(run, "model_final.pth")
    return weights, held_out(run, args, weights, lambda w: simdetr_metrics(opts, w, held_proposals, targets, args))


def pretrain_pretext(args, task):
    from encoder_pretext_coco128 import held_out_pretext_loss

    task_opts = ["MODEL.PRETEXT.TASK", task]
    if task == "mim_discrete":
        codebook = os.path.join(args.out, "pretext_codebook.npz")
        if not os.path.exists(codebook):
            sh([sys.executable, "tools/pretext.py", "codebook", "--config-file", CONFIGS["pretext"], "--output",
                codebook, "--dataset", args.unlabeled, "--num-codes", str(args.num_codes), *args.common],
               codebook + ".log")
        task_opts += ["MODEL.PRETEXT.CODEBOOK", codebook]
    opts = task_opts + pretrain_opts(args)
    run = train_net(CONFIGS["pretext"], opts, os.path.join(args.out, f"pretrain_pretext_{task}"))
    weights = os.path.join(run, "model_final.pth")
    return weights, held_out(run, args, weights, lambda w: {
        "loss": held_out_pretext_loss(CONFIGS["pretext"], opts, w, args.val, args.held_out_images)})


# --- fine-tuning and the report --------------------------------------------------------------
def finetune(args, arm, weights, seed):
    """``{"final": {AP, AP50, AP75}, "curve": [{"iteration", AP, AP50, AP75}, ...]}``."""
    opts = ["DATASETS.TRAIN", f"('{args.train}',)", "DATASETS.TEST", f"('{args.val}',)",
            "MODEL.DETR.NUM_CLASSES", str(args.num_classes), *schedule(args.finetune_iters),
            "TEST.EVAL_PERIOD", str(args.eval_period), "SEED", str(seed),
            *(["MODEL.WEIGHTS", weights] if weights else []), *handoff_opts(arm), *args.common]
    run = train_net(args.finetune_config, opts, os.path.join(args.out, f"finetune_{slug(arm)}_seed{seed}"))
    diag = diagnostics(run, opts, args)
    curve = [{k: p[k] for k in ("iteration",) + METRICS} for p in ap_curve(os.path.join(run, "metrics.json"),
                                                                           args.finetune_iters)]
    if curve and curve[-1]["iteration"] == args.finetune_iters:
        final = curve[-1]
    else:  # no final evaluation in metrics.json (e.g. a run of an older version): the log's last one
        print(f"warning: {run} logged no evaluation at iteration {args.finetune_iters}; using its log")
        final = copypaste_ap(os.path.join(run, "run.log"))
    return {"final": {k: final.get(k, float("nan")) for k in METRICS}, "curve": curve, "diagnostics": diag}


def mean_std(values) -> str:
    v = np.asarray(values, dtype=float)
    std = v.std(ddof=1) if len(v) > 1 else 0.0  # sample std over seeds
    return f"{v.mean():.2f} +- {std:.2f}"


def table(args, results, held, handoff) -> str:
    lines = [f"COCO AP on {args.val} after {args.finetune_iters} fine-tuning iterations on {args.train}, "
             f"mean +- std over seeds {args.seed_list}; pretraining: {args.pretrain_iters} iterations on "
             f"{args.unlabeled} (seed {args.seed_list[0]})", "",
             "| pretraining | AP | AP50 | AP75 | AP per seed |", "|---|---|---|---|---|"]
    for arm, per_seed in results.items():
        finals = [r["final"] for r in per_seed.values()]
        cells = [mean_std([f[k] for f in finals]) for k in METRICS]
        lines.append(f"| {arm} | " + " | ".join(cells) + " | " + ", ".join(f"{f['AP']:.2f}" for f in finals) + " |")
    lines += curve_table(args, results)
    lines += ["", f"Does the detector look at the image? On the first {args.held_out_images} images of {args.val}, "
              "where fine-tuning starts (hand-off) and where it ends (means over seeds): image share = the share of "
              "the last decoder layer's output variance that is across images (the rest is across query slots); "
              "token cos = mean |cosine| between two encoder tokens of one image / of two images (1: alike); "
              "query norm = the learned queries' mean norm; the final fine-tuning losses.", "",
              "| pretraining | hand-off: image share | token cos in / across images | query norm | "
              "fine-tuned: image share | token cos in / across images | loss_ce | loss_bbox | loss_giou |",
              "|---|---|---|---|---|---|---|---|---|"]
    for arm, per_seed in results.items():
        diags = [r["diagnostics"] for r in per_seed.values()]
        start = handoff.get(arm, {})
        end = {k: np.mean([d.get(k, float("nan")) for d in diags]) for k in DIAGNOSTICS}
        cells = [f"{start.get('image_share', float('nan')):.2f}",
                 " / ".join(f"{start.get(k, float('nan')):.2f}" for k in ("memory_cosine", "memory_cross_cosine")),
                 f"{start.get('query_norm', float('nan')):.1f}", f"{end['image_share']:.2f}",
                 f"{end['memory_cosine']:.2f} / {end['memory_cross_cosine']:.2f}",
                 *(f"{end[k]:.2f}" for k in ("loss_ce", "loss_bbox", "loss_giou"))]
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    if held:
        lines += ["", f"Pretext learned? Its own metric on the first {args.held_out_images} images of {args.val} "
                  "(labels ignored), at initialisation and after pretraining", "",
                  "| pretraining | held-out metric | init | pretrained |", "|---|---|---|---|"]
        for arm, m in held.items():
            for key in m["pretrained"]:
                lines.append(f"| {arm} | {HELD_OUT_NAMES.get(key, key)} | {m['init'][key]:.3f} | "
                             f"{m['pretrained'][key]:.3f} |")
    return "\n".join(lines)


def curves_by_step(per_seed, metric="AP"):
    """(iterations every seed evaluated at, array [seeds, iterations] of ``metric``)."""
    curves = [{p["iteration"]: p[metric] for p in r["curve"]} for r in per_seed.values()]
    steps = sorted(set.intersection(*(set(c) for c in curves))) if curves else []
    return steps, np.array([[c[i] for i in steps] for c in curves])


def curve_table(args, results) -> List[str]:
    """AP at every evaluation, mean +- std over seeds, and each arm's difference to "none" in
    units of the pooled seed std (sqrt of the mean of the two variances): > 2 is the bar
    for "beats no pretraining"."""
    if "none" not in results:
        return []
    base_steps, base = curves_by_step(results["none"])
    lines = ["", "AP at equal fine-tuning iterations: mean +- std over seeds; in brackets the difference to "
             "none in pooled seed standard deviations", "",
             "| pretraining | " + " | ".join(f"{i} it" for i in base_steps) + " |",
             "|---|" + "---|" * len(base_steps)]
    for arm, per_seed in results.items():
        steps, ap = curves_by_step(per_seed)
        cells = []
        for j, step in enumerate(base_steps):
            if step not in steps:
                cells.append("")
                continue
            a, b = ap[:, steps.index(step)], base[:, j]
            cell = mean_std(a)
            if arm != "none" and len(a) > 1 and len(b) > 1:
                pooled = np.sqrt((a.var(ddof=1) + b.var(ddof=1)) / 2)
                cell += f" ({(a.mean() - b.mean()) / pooled:+.1f})" if pooled > 0 else ""
            cells.append(cell)
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    return lines


def plot(args, results, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), dpi=100)
    for ax, metric in zip(axes, ("AP", "AP50")):
        for arm, per_seed in results.items():
            steps, ap = curves_by_step(per_seed, metric)
            if not steps:
                continue
            (line,) = ax.plot(steps, ap.mean(0), marker="o", label=f"{arm} (n={len(ap)})")
            if len(ap) > 1:
                ax.fill_between(steps, ap.min(0), ap.max(0), color=line.get_color(), alpha=0.15, linewidth=0)
        ax.set_xlabel("fine-tuning iterations")
        ax.set_ylabel(f"COCO {metric} on {args.val} (%)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    axes[0].legend(loc="upper left", fontsize="small")
    fig.suptitle(f"Fine-tuning on {args.train} after each pretraining: mean over seeds, band = min-max",
                 fontsize="medium")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def check_datasets(args):
    import updetr_d2  # noqa: F401  (compat fixes and dataset registration, before Detectron2's data)
    from detectron2.data import DatasetCatalog
    from updetr_d2.data import coco128_available, coco128_root

    if os.path.isdir(args.unlabeled):
        args.unlabeled = os.path.abspath(args.unlabeled)
    elif args.unlabeled not in DatasetCatalog.list():
        sys.exit(f"--unlabeled {args.unlabeled!r} is neither an image folder nor a registered dataset")
    for name in (args.train, args.val):
        if name not in DatasetCatalog.list():
            sys.exit(f"dataset {name!r} is not registered")
        if name.startswith("coco128") and not coco128_available():
            sys.exit(f"COCO128 not found at {coco128_root()} (set UPDETR_COCO128)")


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        # Before torch is imported, here and in every run: on a busy CPU, torch's threads
        # spin while they wait for each other (1 thread ran stage A about 20x faster than 2 there).
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
    check_datasets(args)
    arms = arm_names(args)
    os.makedirs(args.out, exist_ok=True)
    weights, held = {}, {}
    for arm in arms:
        if arm == "none":
            weights[arm] = None
        elif arm.startswith("UP-DETR"):  # one pretraining for every hand-off arm
            if "UP-DETR" not in held:
                weights["UP-DETR"], held["UP-DETR"] = pretrain_updetr(args)
            weights[arm] = weights["UP-DETR"]
        elif arm == "SimDETR":
            weights[arm], held[arm] = pretrain_simdetr(args)
        else:
            weights[arm], held[arm] = pretrain_pretext(args, arm.split(":", 1)[1])
    results = {arm: {s: finetune(args, arm, weights[arm], s) for s in args.seed_list} for arm in arms}
    handoff = {arm: handoff_diagnostics(args, arm, weights[arm]) for arm in arms}

    command = "python benchmarks/pretraining.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    text = table(args, results, held, handoff)
    print("\n" + text)
    with open(os.path.join(args.out, "table.md"), "w") as f:
        f.write(f"# Pretraining benchmark\n\n`{command}`\n\n{text}\n")
    with open(os.path.join(args.out, "results.json"), "w") as f:
        settings = {k: v for k, v in vars(args).items() if k not in ("common", "out")}
        json.dump({"command": command, "args": settings, "held_out": held, "handoff": handoff, "results": results},
                  f, indent=1)
    plot(args, results, os.path.join(args.out, "ap_curves.png"))
    print(f"\nresults.json, table.md and ap_curves.png in {args.out}")


if __name__ == "__main__":
    main()
