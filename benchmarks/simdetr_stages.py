#!/usr/bin/env python
"""SimDETR offline stages A and B: speed, memory and proposal quality (a benchmark, not a test).

    python benchmarks/simdetr_stages.py                       # defaults, a few minutes on 2 cores
    python benchmarks/simdetr_stages.py --images DIR --num-workers 2 \\
        --config-file projects/SimDETR/configs/proposals_effnet_lite0.yaml INPUT.MIN_SIZE_TEST 512
    python benchmarks/simdetr_stages.py --scale-1m            # adds the 1M-vector k-means point

Everything is measured in one run and printed as a table at the end; the same numbers go
to ``output/bench_simdetr_stages/results.json``. Trailing KEY VALUE pairs override the
extractor config (``INPUT.*``, ``SIMDETR.PROPOSALS.*``, ``SIMDETR.CLUSTERING.*``, ...) for
every stage, exactly as ``tools/simdetr.py`` takes them. Torch's thread count is left
as torch chooses unless ``--threads N`` is given (it is printed). On a machine whose CPUs
are shared (data loader workers, other jobs), OpenMP's default busy-waiting can make the
CNN several times slower; ``OMP_WAIT_POLICY=PASSIVE python benchmarks/simdetr_stages.py``
or ``--threads 1`` shows how much (the policy is printed).

1. Stage A (``extract_proposals``) over an image folder (default
   ``../shared/data/unlabeled/images``), in a fresh output folder, ``--num-workers`` data
   loading workers:
   - images/s: images / wall clock of the whole ``extract_proposals`` call (data loading,
     resize, extraction, Ward clustering, chunk writing); the model build is not included
     (it is printed separately).
   - peak RSS: ``ru_maxrss`` of this process (RUSAGE_SELF) once stage A is done, i.e. the
     peak of model + stage A; "before" is the same after the model build only. Workers:
     RUSAGE_CHILDREN, the peak RSS of the largest finished child (the data loader
     workers; pages they share with the parent after fork are counted in both).
   - proposals / image: median and mean of the stored proposals, the number of images
     with fewer than 2 (SimDETR skips those in training) and of images at the
     ``SIMDETR.PROPOSALS.MAX_PROPOSALS`` cap.
   - time split, on ``--sample`` images spread over the folder, after the main run, in this
     process, one image at a time: "load+resize" (reading and resizing, what the workers
     do in the main run), "features" (``extractor(image)``, the CNN forward) and
     "clustering" (``region_proposals``: Ward tree + cuts + boxes + de-dup), in ms / image.
     The grid (h x w cells of the feature map) that Ward clusters is printed too.
   - the 1-min load average (at the start, after stage A, at the end): above the CPU count,
     other processes shared the CPUs and every time here is inflated accordingly.
2. Stage B (``cluster_proposals``: load chunks, faiss spherical k-means, COCO json) over
   those proposals. K is ``SIMDETR.CLUSTERING.NUM_CLUSTERS`` (256), lowered to
   proposals // 4 when that is smaller (the K used is printed). Cluster sizes come from
   ``spherical_kmeans`` alone on the same embeddings (same seed, same labels), timed too.
   Scaling: ``spherical_kmeans`` alone on synthetic unit vectors (a mixture around K random
   directions) of the embeddings' dimension (``--kmeans-dim`` to change it), 100k and,
   with ``--scale-1m``, 1M vectors, K=256, niter 20: seconds and vectors/s. faiss trains
   on a subsample of K * max_points_per_centroid (65536) vectors, so past that size only
   the final assignment grows with N. Memory: about 2 * N * D * 4 bytes (the input and
   its normalised copy): 1M x 256 needs ~2 GB, 1M x 1280 (EfficientNet-Lite0 res5) ~10 GB.
3. Proposal quality against real labels on COCO128 (``coco128_all``, 128 images, when
   present; its labels are not seen by the extractor): stage A is run on it with the same
   config, then class-agnostic recall of the non-crowd ground-truth boxes at IoU 0.5 and
   0.7 (a GT box counts as found when some proposal overlaps it that much) and ABO, the
   average best overlap (mean over GT boxes of the best IoU with any proposal), for all
   proposals and for the first 10 / 30 of each image (stage A stores them coarse level
   first, then by decreasing area: there is no score, this order is the ranking). R@0.5
   is also split by GT size (COCO small < 32^2 < medium < 96^2 px < large). Baseline:
   the same number of boxes per image taken from a fixed grid pyramid, coarse first: the
   full image, then the 2x2, 3x3, 4x4, ... grid cells (1 + 4 + 9 + 16 = 30 boxes).
"""
import argparse
import dataclasses
import json
import os
import platform
import resource
import shutil
import sys
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import updetr_d2  # noqa: E402,F401  (compat fixes and dataset registration, before Detectron2 is used)
from detectron2.data import DatasetCatalog, DatasetMapper  # noqa: E402
from detectron2.data import transforms as T  # noqa: E402
from detectron2.structures import BoxMode  # noqa: E402
from torchvision.ops import box_iou  # noqa: E402

from updetr_d2.config import load_yaml_config  # noqa: E402
from updetr_d2.data import coco128_available, coco128_root, register_unlabeled_folder  # noqa: E402
from updetr_d2.methods import simdetr  # noqa: E402

DEFAULT_CONFIG = os.path.join(ROOT, "projects", "SimDETR", "configs", "proposals_effnet_lite0.yaml")
DEFAULT_IMAGES = os.path.join(ROOT, "..", "shared", "data", "unlabeled", "images")
DEFAULT_OUTPUT = os.path.join(ROOT, "output", "bench_simdetr_stages")


def log(msg):
    print(f"[simdetr_stages] {msg}", flush=True)


def maxrss_mib(who):
    # Linux reports ru_maxrss in KiB.
    return resource.getrusage(who).ru_maxrss / 1024.0


def fresh_dir(path):
    if os.path.exists(path):
        shutil.rmtree(path)
    os.makedirs(path)
    return path


def run_stage_a(cfg, extractor, records, out_dir, num_workers, source):
    """Stage A over ``records`` in a fresh ``out_dir``: (wall seconds, ProposalSet)."""
    fresh_dir(out_dir)
    start = time.perf_counter()
    simdetr.extract_proposals(
        extractor, records, out_dir, simdetr.proposal_params(cfg),
        min_size=cfg.INPUT.MIN_SIZE_TEST, max_size=cfg.INPUT.MAX_SIZE_TEST, image_format=cfg.INPUT.FORMAT,
        num_workers=num_workers, source=source,
    )
    wall = time.perf_counter() - start
    return wall, simdetr.load_proposals(out_dir)


def count_stats(proposals, max_proposals):
    counts = np.array([len(b) for b in proposals.boxes])
    return {
        "proposals_total": int(counts.sum()),
        "proposals_per_image_median": float(np.median(counts)) if len(counts) else 0.0,
        "proposals_per_image_mean": float(counts.mean()) if len(counts) else 0.0,
        "images_with_fewer_than_2": int((counts < 2).sum()),
        "images_at_cap": int((counts >= max_proposals).sum()),
    }


def time_split(cfg, extractor, records, sample):
    """ms / image of load+resize, features and clustering on ``sample`` spread images."""
    mapper = DatasetMapper(is_train=False, augmentations=[T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TEST,
                                                                              cfg.INPUT.MAX_SIZE_TEST)],
                           image_format=cfg.INPUT.FORMAT)
    params = simdetr.proposal_params(cfg)
    n = min(sample, len(records))
    picks = np.unique(np.linspace(0, len(records) - 1, n).round().astype(int))
    load_t, feat_t, clus_t, cells, counts = [], [], [], [], []
    with torch.no_grad():
        for i in picks:
            t0 = time.perf_counter()
            item = mapper(dict(records[i]))
            t1 = time.perf_counter()
            image = item["image"]
            feats = extractor(image)
            if feats.is_cuda:
                torch.cuda.synchronize()
            t2 = time.perf_counter()
            h, w = image.shape[-2:]
            found = simdetr.region_proposals(feats, extractor.stride, (h, w), params)
            t3 = time.perf_counter()
            load_t.append(t1 - t0)
            feat_t.append(t2 - t1)
            clus_t.append(t3 - t2)
            cells.append(min(feats.shape[1], -(-h // extractor.stride)) * min(feats.shape[2], -(-w // extractor.stride)))
            counts.append(len(found.boxes))
    ms = lambda v: 1000.0 * float(np.mean(v))  # noqa: E731
    return {
        "images": len(picks),
        "load_resize_ms_per_image": ms(load_t),
        "features_ms_per_image": ms(feat_t),
        "clustering_ms_per_image": ms(clus_t),
        "features_fraction": float(np.sum(feat_t) / (np.sum(feat_t) + np.sum(clus_t))),
        "grid_cells_median": float(np.median(cells)),
        "grid_cells_max": int(np.max(cells)),
        "proposals_per_image_mean": float(np.mean(counts)),
    }


def stage_a(cfg, args, extractor, results):
    folder = os.path.abspath(args.images)
    register_unlabeled_folder("bench_simdetr_stages_images", folder)
    records = DatasetCatalog.get("bench_simdetr_stages_images")
    rss_before = maxrss_mib(resource.RUSAGE_SELF)
    children_before = maxrss_mib(resource.RUSAGE_CHILDREN)
    out_dir = os.path.join(args.output, "proposals_images")
    log(f"stage A: {len(records)} images of {folder}, {args.num_workers} workers -> {out_dir}")
    wall, proposals = run_stage_a(cfg, extractor, records, out_dir, args.num_workers, folder)
    a = {
        "folder": folder,
        "images": len(records),
        "num_workers": args.num_workers,
        "wall_s": wall,
        "images_per_s": len(records) / wall,
        "rss_peak_mib_before": rss_before,
        "rss_peak_mib": maxrss_mib(resource.RUSAGE_SELF),
        "rss_peak_mib_children_before": children_before,
        "rss_peak_mib_children": maxrss_mib(resource.RUSAGE_CHILDREN),
        "embedding_dim": int(proposals.embeddings.shape[1]),
        "load_average_1min_after": os.getloadavg()[0],
        **count_stats(proposals, simdetr.proposal_params(cfg).max_proposals),
    }
    log(f"stage A: {wall:.1f} s, {a['images_per_s']:.2f} images/s; timing the split on {args.sample} images")
    a["split"] = time_split(cfg, extractor, records, args.sample)
    results["stage_a"] = a
    return out_dir, proposals


def synthetic_unit_vectors(n, d, k, seed=0):
    """``n`` unit vectors in ``d`` dims around ``k`` random directions (float32)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((k, d), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    x = np.empty((n, d), np.float32)
    step = 65536
    for s in range(0, n, step):
        e = min(n, s + step)
        x[s:e] = centres[rng.integers(0, k, e - s)] + 0.7 / np.sqrt(d) * rng.standard_normal((e - s, d),
                                                                                              dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def stage_b(cfg, args, proposals_dir, proposals, results):
    base = simdetr.clustering_params(cfg)
    n = len(proposals.embeddings)
    k = min(base.num_clusters, max(1, n // 4))
    params = dataclasses.replace(base, num_clusters=k)
    targets_dir = fresh_dir(os.path.join(args.output, "targets_images"))
    log(f"stage B: {n} proposals, K={k} (config {base.num_clusters}) -> {targets_dir}")
    start = time.perf_counter()
    summary = simdetr.cluster_proposals(proposals_dir, targets_dir, params)
    wall = time.perf_counter() - start
    start = time.perf_counter()
    labels, _ = simdetr.spherical_kmeans(proposals.embeddings.astype(np.float32), params)
    kmeans_wall = time.perf_counter() - start
    sizes = np.sort(np.bincount(labels, minlength=k))[::-1]
    b = {
        "proposals": n,
        "num_clusters_config": base.num_clusters,
        "num_clusters": k,
        "k_reduced": k != base.num_clusters,
        "niter": params.niter,
        "wall_s": wall,
        "proposals_per_s": n / wall,
        "kmeans_only_s": kmeans_wall,
        "largest_cluster_fraction": summary["largest_cluster_fraction"],
        "cluster_size_max": int(sizes[0]),
        "cluster_size_median": float(np.median(sizes)),
        "cluster_size_min": int(sizes[-1]),
        "largest_5_clusters_fraction": float(sizes[:5].sum() / n),
        "empty_clusters": summary["empty_clusters"],
        "clusters_below_5": int((sizes < 5).sum()),
        "warning": summary["warning"],
        "path": summary["path"],
    }
    dim = args.kmeans_dim or int(proposals.embeddings.shape[1])
    sizes_n = [100_000] + ([1_000_000] if args.scale_1m else [])
    scale_params = dataclasses.replace(base, num_clusters=256, niter=20)
    scaling = []
    for size in sizes_n:
        log(f"stage B scaling: spherical_kmeans on {size} x {dim} synthetic unit vectors, K=256, niter 20")
        x = synthetic_unit_vectors(size, dim, 256)
        start = time.perf_counter()
        simdetr.spherical_kmeans(x, scale_params)
        sec = time.perf_counter() - start
        del x
        scaling.append({"vectors": size, "dim": dim, "k": 256, "niter": 20, "seconds": sec,
                        "vectors_per_s": size / sec})
    b["scaling"] = scaling
    b["rss_peak_mib_after"] = maxrss_mib(resource.RUSAGE_SELF)
    results["stage_b"] = b


def grid_boxes(height, width, n):
    """The first ``n`` boxes of the pyramid: the full image, the 2x2 cells, the 3x3 cells, ..."""
    out, g = [], 1
    while len(out) < n:
        xs, ys = np.linspace(0, width, g + 1), np.linspace(0, height, g + 1)
        for r in range(g):
            for c in range(g):
                out.append([xs[c], ys[r], xs[c + 1], ys[r + 1]])
        g += 1
    return torch.tensor(out[:n], dtype=torch.float32).reshape(-1, 4)


def overlap_stats(best, areas):
    """Recall at 0.5 / 0.7, ABO and recall at 0.5 by COCO size from best IoUs per GT box."""
    best, areas = np.asarray(best), np.asarray(areas)
    out = {"recall_0.5": float((best >= 0.5).mean()), "recall_0.7": float((best >= 0.7).mean()),
           "abo": float(best.mean())}
    for name, lo, hi in (("small", 0, 32 ** 2), ("medium", 32 ** 2, 96 ** 2), ("large", 96 ** 2, np.inf)):
        m = (areas >= lo) & (areas < hi)
        out[f"recall_0.5_{name}"] = float((best[m] >= 0.5).mean()) if m.any() else float("nan")
        out[f"gt_{name}"] = int(m.sum())
    return out


def quality(cfg, args, extractor, results):
    if args.skip_coco128:
        results["quality"] = {"skipped": "--skip-coco128"}
        return
    if not coco128_available():
        msg = f"COCO128 not found at {coco128_root()} (set UPDETR_COCO128); proposal quality skipped"
        log(msg)
        results["quality"] = {"skipped": msg}
        return
    records = DatasetCatalog.get("coco128_all")
    out_dir = os.path.join(args.output, "proposals_coco128")
    log(f"quality: stage A on coco128_all ({len(records)} images) -> {out_dir}")
    wall, proposals = run_stage_a(cfg, extractor, records, out_dir, args.num_workers, "coco128_all")
    tops = [None, 10, 30]
    best = {("props", t): [] for t in tops}
    best.update({("grid", t): [] for t in tops})
    nboxes = {key: [] for key in best}
    areas, gt_total, crowd = [], 0, 0
    for rec, boxes in zip(records, proposals.boxes):
        anns = rec.get("annotations", [])
        crowd += sum(1 for a in anns if a.get("iscrowd", 0))
        gt = [BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS) for a in anns if not a.get("iscrowd", 0)]
        if not gt:
            continue
        gt = torch.tensor(gt, dtype=torch.float32).reshape(-1, 4)
        gt_total += len(gt)
        areas += ((gt[:, 2] - gt[:, 0]) * (gt[:, 3] - gt[:, 1])).tolist()
        props = torch.from_numpy(np.asarray(boxes, np.float32)).reshape(-1, 4)
        grid = grid_boxes(rec["height"], rec["width"], len(props))
        for t in tops:
            for kind, cand in (("props", props), ("grid", grid)):
                c = cand if t is None else cand[:t]
                nboxes[(kind, t)].append(len(c))
                b = box_iou(gt, c).max(dim=1).values if len(c) else torch.zeros(len(gt))
                best[(kind, t)] += b.tolist()
    rows = []
    for (kind, t), b in best.items():
        rows.append({"boxes": "stage A proposals" if kind == "props" else "grid baseline",
                     "top": "all" if t is None else t,
                     "boxes_per_image_mean": float(np.mean(nboxes[(kind, t)])),
                     **overlap_stats(b, areas)})
    rows.sort(key=lambda r: (0 if r["top"] == "all" else r["top"], r["boxes"] != "stage A proposals"))
    results["quality"] = {
        "dataset": "coco128_all", "images": len(records), "stage_a_wall_s": wall,
        "stage_a_images_per_s": len(records) / wall, "gt_boxes": gt_total, "crowd_boxes_ignored": crowd,
        **{f"proposal_{k}": v for k, v in count_stats(proposals, simdetr.proposal_params(cfg).max_proposals).items()},
        "rows": rows,
    }


def table(headers, rows):
    cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
             for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def report(results):
    env, a, b, q = results["env"], results["stage_a"], results["stage_b"], results["quality"]
    s = a["split"]
    print()
    print("=" * 78)
    print(f"SimDETR stages benchmark   config {os.path.relpath(env['config_file'], ROOT)}  "
          f"overrides {' '.join(env['opts']) or '-'}")
    print(f"  device {env['device']}, torch threads {env['torch_threads']}, {env['cpu_count']} CPUs, "
          f"OMP_WAIT_POLICY {env['omp_wait_policy'] or '(unset)'}, "
          f"input short side {env['min_size']} (max {env['max_size']}), extractor built in {env['model_build_s']:.1f} s")
    print(f"  1-min load average at start {env['load_average_start'][0]:.1f}, at end {env['load_average_end'][0]:.1f} "
          f"(above the CPU count means other processes shared the CPUs and the times are inflated)")
    print()
    print(f"Stage A: {a['images']} images, {a['num_workers']} workers "
          f"(1-min load average when it ended {a['load_average_1min_after']:.1f})")
    print(table(["measure", "value"], [
        ["wall clock (s)", f"{a['wall_s']:.1f}"],
        ["images/s", f"{a['images_per_s']:.2f}"],
        ["peak RSS, process (MiB)", f"{a['rss_peak_mib']:.0f}  (after model build {a['rss_peak_mib_before']:.0f})"],
        ["peak RSS, largest worker (MiB)", f"{a['rss_peak_mib_children']:.0f}"],
        ["proposals/image median | mean", f"{a['proposals_per_image_median']:.0f} | {a['proposals_per_image_mean']:.1f}"],
        ["images < 2 proposals | at cap", f"{a['images_with_fewer_than_2']} | {a['images_at_cap']}"],
        ["embedding dim", a["embedding_dim"]],
    ]))
    print()
    print(f"Stage A time split, {s['images']} sampled images, in-process, one at a time "
          f"(feature grid median {s['grid_cells_median']:.0f} cells, max {s['grid_cells_max']})")
    total = s["load_resize_ms_per_image"] + s["features_ms_per_image"] + s["clustering_ms_per_image"]
    print(table(["part", "ms/image", "share"], [
        ["load + resize", f"{s['load_resize_ms_per_image']:.0f}", f"{s['load_resize_ms_per_image'] / total:.0%}"],
        ["features (extractor)", f"{s['features_ms_per_image']:.0f}", f"{s['features_ms_per_image'] / total:.0%}"],
        ["clustering (Ward + boxes)", f"{s['clustering_ms_per_image']:.0f}", f"{s['clustering_ms_per_image'] / total:.0%}"],
        ["sum", f"{total:.0f}", f"(main run: {1000 * a['wall_s'] / a['images']:.0f} ms/image)"],
    ]))
    print()
    print(f"Stage B: {b['proposals']} proposals, K={b['num_clusters']}"
          + (f" (reduced from {b['num_clusters_config']}: proposals // 4)" if b["k_reduced"] else "")
          + f", niter {b['niter']}")
    print(table(["measure", "value"], [
        ["cluster_proposals wall (s)", f"{b['wall_s']:.2f}"],
        ["spherical_kmeans alone, same data (s)", f"{b['kmeans_only_s']:.2f}"],
        ["proposals/s", f"{b['proposals_per_s']:.0f}"],
        ["largest cluster", f"{b['cluster_size_max']} ({b['largest_cluster_fraction']:.1%})"],
        ["5 largest clusters", f"{b['largest_5_clusters_fraction']:.1%}"],
        ["cluster size median | min", f"{b['cluster_size_median']:.0f} | {b['cluster_size_min']}"],
        ["empty clusters | below 5", f"{b['empty_clusters']} | {b['clusters_below_5']}"],
        ["sanity warning", "yes" if b["warning"] else "none"],
    ]))
    print()
    print("spherical_kmeans scaling (synthetic unit vectors)")
    print(table(["vectors", "dim", "K", "niter", "seconds", "vectors/s"],
                [[f"{r['vectors']:,}", r["dim"], r["k"], r["niter"], f"{r['seconds']:.1f}", f"{r['vectors_per_s']:,.0f}"]
                 for r in b["scaling"]]))
    print()
    if "skipped" in q:
        print(f"Proposal quality: skipped ({q['skipped']})")
    else:
        print(f"Proposal quality on {q['dataset']}: {q['images']} images, {q['gt_boxes']} non-crowd GT boxes "
              f"({q['crowd_boxes_ignored']} crowd ignored); stage A {q['stage_a_images_per_s']:.2f} images/s, "
              f"proposals/image median {q['proposal_proposals_per_image_median']:.0f}")
        g = q["rows"][0]
        print(table(["boxes", "top", "boxes/img", "R@0.5", "R@0.7", "ABO",
                     f"R@0.5 S({g['gt_small']})", f"M({g['gt_medium']})", f"L({g['gt_large']})"],
                    [[r["boxes"], r["top"], f"{r['boxes_per_image_mean']:.1f}", f"{r['recall_0.5']:.3f}",
                      f"{r['recall_0.7']:.3f}", f"{r['abo']:.3f}", f"{r['recall_0.5_small']:.3f}",
                      f"{r['recall_0.5_medium']:.3f}", f"{r['recall_0.5_large']:.3f}"] for r in q["rows"]]))
    print("=" * 78)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", default=DEFAULT_IMAGES, help="image folder for stage A and B")
    parser.add_argument("--num-workers", type=int, default=2, help="data loading workers of stage A")
    parser.add_argument("--config-file", default=DEFAULT_CONFIG, help="stage A extractor yaml")
    parser.add_argument("--sample", type=int, default=20, help="images for the features / clustering split")
    parser.add_argument("--scale-1m", action="store_true",
                        help="also k-means 1M synthetic vectors (~2 GB at dim 256, ~10 GB at dim 1280)")
    parser.add_argument("--kmeans-dim", type=int, default=0,
                        help="dimension of the synthetic k-means vectors (default: the embeddings')")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch.set_num_threads for this process (default 0: as torch chooses)")
    parser.add_argument("--skip-coco128", action="store_true", help="skip the proposal quality part")
    parser.add_argument("--output", default=DEFAULT_OUTPUT)
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    args = parser.parse_args()
    if args.opts and args.opts[0] == "--":
        args.opts = args.opts[1:]
    if len(args.opts) % 2:
        sys.exit(f"error: config overrides must be KEY VALUE pairs, got {args.opts}")
    if not os.path.isdir(args.images):
        sys.exit(f"error: no image folder at {os.path.abspath(args.images)} (give one with --images)")
    if not os.path.isfile(args.config_file):
        sys.exit(f"error: no config file {args.config_file}")
    os.makedirs(args.output, exist_ok=True)
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    cfg = load_yaml_config(args.config_file, args.opts)
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        cfg.MODEL.DEVICE = "cpu"
    start = time.perf_counter()
    extractor = simdetr.FeatureExtractor.from_config(cfg)
    build = time.perf_counter() - start
    import faiss

    results = {"env": {
        "config_file": os.path.abspath(args.config_file), "opts": list(args.opts), "device": cfg.MODEL.DEVICE,
        "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(), "torch": torch.__version__,
        "faiss": faiss.__version__, "python": platform.python_version(), "min_size": cfg.INPUT.MIN_SIZE_TEST,
        "max_size": cfg.INPUT.MAX_SIZE_TEST, "feature": extractor.feature, "stride": extractor.stride,
        "model_build_s": build, "proposal_params": dataclasses.asdict(simdetr.proposal_params(cfg)),
        "load_average_start": os.getloadavg(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", ""),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS", ""),
    }}
    proposals_dir, proposals = stage_a(cfg, args, extractor, results)
    stage_b(cfg, args, proposals_dir, proposals, results)
    del proposals
    quality(cfg, args, extractor, results)
    results["rss_peak_mib_end"] = maxrss_mib(resource.RUSAGE_SELF)
    results["env"]["load_average_end"] = os.getloadavg()
    report(results)
    path = os.path.join(args.output, "results.json")
    with open(path, "w") as f:
        json.dump(results, f, indent=1, default=float)
    print(f"results: {path}")


if __name__ == "__main__":
    main()
