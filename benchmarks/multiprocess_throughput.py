#!/usr/bin/env python
"""Training throughput with 1 and 2 processes at equal total batch, through
``tools/train_net.py --num-gpus N`` (gloo on a CPU), and what it predicts for more cores
or GPUs.

    python benchmarks/multiprocess_throughput.py                       # demo Deformable DETR
    python benchmarks/multiprocess_throughput.py --config configs/demo/detr_R18_demo.yaml

Each arm is a real training run (data loading, DDP, the trainer's hooks) of ``--iters``
iterations on the demo data; images/s is the total batch over Detectron2's per-iteration
time (the median of the last ``--window`` iterations, from its metrics.json). The
gradient all-reduce is timed on its own (2 gloo processes, the model's parameter count
in float32): with per-process compute C and all-reduce A, N workers that each have the
cores of one run at about N * C / (C + A) times its speed (DDP overlaps part of A with
the backward pass, so this is a floor).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_CONFIG = "projects/DeformableDETR/configs/deformable_detr_effnet_lite0_demo.yaml"


def train(config: str, processes: int, batch: int, iters: int, out: str) -> dict:
    cmd = [sys.executable, "tools/train_net.py", "--num-gpus", str(processes), "--skip-input-checks",
           "--config-file", config, "SOLVER.IMS_PER_BATCH", str(batch), "SOLVER.MAX_ITER", str(iters),
           "SOLVER.CHECKPOINT_PERIOD", str(iters * 10), "TEST.EVAL_PERIOD", "0", "DATASETS.TEST", "()",
           "DATALOADER.NUM_WORKERS", "1", "SEED", "0", "OUTPUT_DIR", out]
    start = time.perf_counter()
    with open(os.path.join(out, "run.log"), "w") as log:
        subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, check=True)
    wall = time.perf_counter() - start
    with open(os.path.join(out, "metrics.json")) as f:
        records = [json.loads(line) for line in f if line.strip()]
    timed = [r for r in records if "time" in r]
    return {"time": timed[-1]["time"], "data_time": timed[-1].get("data_time", float("nan")), "wall": wall}


def _allreduce_worker(numel: int, repeats: int, out: str) -> None:
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    grads = torch.randn(numel)
    times = []
    for _ in range(repeats + 2):
        start = time.perf_counter()
        dist.all_reduce(grads)
        times.append(time.perf_counter() - start)
    if dist.get_rank() == 0:
        with open(out, "w") as f:
            json.dump(statistics.median(times[2:]), f)
    # Leave together: a process that exits while gloo's threads still serve the other aborts.
    dist.barrier()
    dist.destroy_process_group()


def allreduce_seconds(numel: int, repeats: int = 10) -> float:
    import updetr_d2  # noqa: F401  (the launcher's gloo worker)
    from detectron2.engine import launch

    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "allreduce.json")
        launch(_allreduce_worker, 2, dist_url="auto", args=(numel, repeats, out))
        with open(out) as f:
            return json.load(f)


def parameter_count(config: str) -> int:
    import updetr_d2  # noqa: F401
    from detectron2.modeling import build_model
    from updetr_d2.config import load_yaml_config

    cfg = load_yaml_config(os.path.join(ROOT, config), ["MODEL.DEVICE", "cpu"])
    return sum(p.numel() for p in build_model(cfg).parameters() if p.requires_grad)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=DEFAULT_CONFIG, help="a yaml config (repository-relative)")
    parser.add_argument("--batch", type=int, default=4, help="total batch, the same for every arm")
    parser.add_argument("--iters", type=int, default=40, help="iterations per arm (the last 20 are timed)")
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()

    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.processes:
            out = os.path.join(tmp, f"p{n}")
            os.makedirs(out)
            rows[n] = train(args.config, n, args.batch, args.iters, out)
            print(f"{n} process(es): {rows[n]['time']:.3f} s/it", flush=True)
    numel = parameter_count(args.config)
    reduce_s = allreduce_seconds(numel)

    cores = os.cpu_count()
    print(f"\n{args.config}, total batch {args.batch}, {cores} CPU core(s), {numel / 1e6:.1f} M trained parameters")
    print("| processes | threads each | s/iteration | data s/it | images/s | vs 1 process |")
    print("|---|---|---|---|---|---|")
    base = args.batch / rows[args.processes[0]]["time"]
    for n, r in rows.items():
        rate = args.batch / r["time"]
        print(f"| {n} | {max(1, cores // n)} | {r['time']:.3f} | {r['data_time']:.3f} | {rate:.2f} | {rate / base:.2f}x |")
    compute = rows[args.processes[0]]["time"]
    print(f"\ngradient all-reduce (gloo, 2 processes, {numel * 4 / 2**20:.0f} MiB float32): {reduce_s * 1000:.1f} ms")
    print("expected with N workers that each have this machine's cores (per-worker batch "
          f"{args.batch}, compute {compute:.2f} s/it):")
    for n in (2, 4, 8):
        print(f"  N={n}: {n * compute / (compute + reduce_s):.2f}x (floor; DDP overlaps the all-reduce with backward)")


if __name__ == "__main__":
    main()
