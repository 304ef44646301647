#!/usr/bin/env python
"""Time multi-scale deformable attention (forward + backward) on the CPU.

    python benchmarks/deformable_attention.py                   # batch 2, 512x683 image
    python benchmarks/deformable_attention.py --threads 2 --repeats 5
    python benchmarks/deformable_attention.py --height 800 --width 1066

Times ``multi_scale_deformable_attention`` (sampling + weighted sum, without the
layer's linear projections) at a Deformable-DETR-like size: 4 levels at strides
8, 16, 32, 64 of a --height x --width image, 8 heads of 32 channels, 4 points per
(head, level); an encoder case (a query per pixel of every level) and a decoder
case (--decoder-queries queries). It compares, in the same run:

* dense multi-head attention (``F.scaled_dot_product_attention``, same heads and
  head size) of the same queries over the same keys (all pixels of all levels);
* the obviously-correct Python-loop reference (bilinear interpolation by hand),
  at a small size only (a 64x96 image, 16 queries), against the PyTorch
  implementation timed at that same small size;
* in the encoder case, the same function with ``recompute=True``
  (``MODEL.DEFORMABLE_DETR.RECOMPUTE_SAMPLING``): each level's samples are made
  again in backward instead of kept, trading time for memory. Its line gives its
  time relative to the default's and both peak RSS growths. This is one call; in
  a model the samples of every deformable layer are kept until backward by
  default, so there the saving adds up over the layers.

Times: the cases of each comparison (the three encoder cases together) are timed
in one process, their steps interleaved, so a busy machine slows them alike;
medians of --repeats steps.
Memory: each case also runs one step in a fresh process of its own, which reports
the growth of its peak RSS over what it held once its inputs existed, with glibc's
mmap threshold fixed at 128 KiB so that freed tensors leave the RSS (a
MALLOC_MMAP_THRESHOLD_ set in the environment is kept). A process may allocate at
most --memory-gib GiB beyond that; a case that needs more is reported as not
fitting (instead of swapping or waking the OOM killer).

On a machine busy with other work, threads that spin in OpenMP barriers can make
the many short parallel regions of ``grid_sample`` several times slower; run with
``OMP_WAIT_POLICY=PASSIVE`` (the workers inherit it) or ``--threads 1`` there.
"""
import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from updetr_d2.layers.ms_deform_attn import multi_scale_deformable_attention  # noqa: E402

STRIDES = (8, 16, 32, 64)


def level_shapes(height, width):
    """(H, W) per level as a ResNet-like backbone (each stride-2 step rounds up) gives them."""
    return [(math.ceil(height / s), math.ceil(width / s)) for s in STRIDES]


def naive_attention(value, spatial_shapes, locations, weights):
    """Loops over batch, query, head, level, point; bilinear interpolation by hand (autograd-able)."""
    B, S, M, D = value.shape
    _, Lq, _, L, P, _ = locations.shape
    rows = []
    start = 0
    starts = []
    for h, w in spatial_shapes.tolist():
        starts.append(start)
        start += h * w
    for b in range(B):
        for q in range(Lq):
            heads = []
            for m in range(M):
                acc = value.new_zeros(D)
                for lvl in range(L):
                    H, W = spatial_shapes[lvl].tolist()
                    for p in range(P):
                        x = locations[b, q, m, lvl, p, 0] * W - 0.5  # pixel centres at integers
                        y = locations[b, q, m, lvl, p, 1] * H - 0.5
                        x0, y0 = math.floor(x.item()), math.floor(y.item())
                        fx, fy = x - x0, y - y0
                        for j, wx in ((x0, 1 - fx), (x0 + 1, fx)):
                            for i, wy in ((y0, 1 - fy), (y0 + 1, fy)):
                                if 0 <= i < H and 0 <= j < W:  # zero outside the map
                                    pixel = value[b, starts[lvl] + i * W + j, m]
                                    acc = acc + weights[b, q, m, lvl, p] * wx * wy * pixel
                heads.append(acc)
            rows.append(torch.cat(heads))
    return torch.stack(rows).view(B, Lq, M * D)


def make_case(spec):
    """Inputs (requiring grad) and a forward+backward closure for one case."""
    g = torch.Generator().manual_seed(0)
    B, M, D, P = spec["batch"], spec["heads"], spec["head_dim"], spec["points"]
    shapes = [tuple(s) for s in spec["shapes"]]
    S = sum(h * w for h, w in shapes)
    Lq = S if spec["queries"] == "all" else spec["queries"]
    if spec["method"] == "dense":
        q = torch.randn(B, M, Lq, D, generator=g)
        k = torch.randn(B, M, S, D, generator=g)
        v = torch.randn(B, M, S, D, generator=g)
        inputs = [t.requires_grad_() for t in (q, k, v)]

        def forward():
            return F.scaled_dot_product_attention(*inputs)
    else:
        L = len(shapes)
        spatial_shapes = torch.tensor(shapes, dtype=torch.long)
        value = torch.randn(B, S, M, D, generator=g)
        locations = torch.rand(B, Lq, M, L, P, 2, generator=g) * 1.2 - 0.1
        weights = torch.rand(B, Lq, M, L * P, generator=g).softmax(-1).view(B, Lq, M, L, P)
        inputs = [t.requires_grad_() for t in (value, locations, weights)]
        fn = naive_attention if spec["method"] == "naive" else multi_scale_deformable_attention
        extra = (True,) if spec["method"] == "recompute" else ()

        def forward():
            return fn(inputs[0], spatial_shapes, inputs[1], inputs[2], *extra)

    def step():
        for t in inputs:
            t.grad = None
        forward().sum().backward()

    return step, Lq, S


def vm_size_bytes():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    return None


def maxrss_bytes():
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024  # KiB on Linux


def limit_memory(gib):
    """Make allocations beyond ``gib`` more than now raise instead of swapping / OOM-killing."""
    vm = vm_size_bytes()
    if vm is not None:
        limit = vm + int(gib * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (limit, resource.getrlimit(resource.RLIMIT_AS)[1]))


def memory_worker(spec):
    """One case, one step, in a fresh process: the growth of its peak RSS."""
    torch.set_num_threads(spec["threads"])
    step, Lq, S = make_case(spec)
    result = {"queries": Lq, "keys": S}
    limit_memory(spec["memory_gib"])
    before = maxrss_bytes()
    try:
        step()
        result["peak_mib"] = (maxrss_bytes() - before) / 2**20
    except (RuntimeError, MemoryError) as e:
        result["error"] = f"did not fit in {spec['memory_gib']:g} GiB ({str(e).splitlines()[0][:80]})"
    return result


def timing_worker(specs):
    """Cases timed in one process, interleaved step by step, so that they share whatever
    else the machine is doing (the ratios stay meaningful on a busy machine)."""
    torch.set_num_threads(specs[0]["threads"])
    steps = [make_case(spec)[0] for spec in specs]
    limit_memory(specs[0]["memory_gib"])
    for step in steps:  # warm-up
        step()
    times = [[] for _ in steps]
    for r in range(max(spec["repeats"] for spec in specs)):
        for spec, step, t in zip(specs, steps, times):
            if r < spec["repeats"]:
                start = time.perf_counter()
                step()
                t.append(time.perf_counter() - start)
    return [statistics.median(t) for t in times]


def run_worker(mode, payload):
    env = dict(os.environ)
    if mode == "memory":
        # glibc's malloc raises its mmap threshold as large blocks are freed, so later
        # blocks of up to 32 MiB stay in the heap after use and peak RSS depends on the
        # order of allocations (+-50% between identical runs of a small case). A fixed
        # threshold gives every tensor-sized block its own mapping, returned when freed:
        # peak RSS then follows the live tensors. Other allocators ignore the variable.
        env.setdefault("MALLOC_MMAP_THRESHOLD_", str(128 * 1024))
    proc = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--worker", json.dumps({"mode": mode, "payload": payload})],
        capture_output=True,
        text=True,
        env=env,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith(("{", "["))]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"worker failed (exit {proc.returncode}): {tail}"}
    return json.loads(lines[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--height", type=int, default=512)
    parser.add_argument("--width", type=int, default=683)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--head-dim", type=int, default=32)
    parser.add_argument("--points", type=int, default=4)
    parser.add_argument("--decoder-queries", type=int, default=300)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--repeats", type=int, default=3, help="timed steps per case (median), after 1 warm-up")
    parser.add_argument("--memory-gib", type=float, default=8.0, help="allocation budget of each case")
    parser.add_argument("--skip-dense-encoder", action="store_true", help="the slowest case")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        job = json.loads(args.worker)
        work = memory_worker if job["mode"] == "memory" else timing_worker
        print(json.dumps(work(job["payload"])))
        return

    common = dict(batch=args.batch, heads=args.heads, head_dim=args.head_dim, points=args.points,
                  threads=args.threads, repeats=args.repeats, memory_gib=args.memory_gib)
    shapes = level_shapes(args.height, args.width)
    small = dict(common, batch=1, shapes=level_shapes(64, 96), queries=16)
    cases = {
        "deform_enc": ("deformable, encoder", dict(common, method="deform", shapes=shapes, queries="all")),
        "recompute_enc": ("deformable recompute, encoder", dict(common, method="recompute", shapes=shapes,
                                                                queries="all")),
        "dense_enc": ("dense SDPA, encoder", dict(common, method="dense", shapes=shapes, queries="all")),
        "deform_dec": ("deformable, decoder", dict(common, method="deform", shapes=shapes,
                                                   queries=args.decoder_queries)),
        "dense_dec": ("dense SDPA, decoder", dict(common, method="dense", shapes=shapes,
                                                  queries=args.decoder_queries)),
        "deform_small": ("deformable, small", dict(small, method="deform")),
        "naive_small": ("naive loops, small", dict(small, method="naive", repeats=1)),
    }
    if args.skip_dense_encoder:
        del cases["dense_enc"]
    # Cases timed together, interleaved; the ratios below compare cases of one group.
    groups = [("dense_enc", "deform_enc", "recompute_enc"), ("dense_dec", "deform_dec"),
              ("naive_small", "deform_small")]
    ratios = [("dense_enc", "deform_enc", "dense SDPA / deformable, encoder"),
              ("dense_dec", "deform_dec", "dense SDPA / deformable, decoder"),
              ("naive_small", "deform_small", "naive loops / deformable, small size")]

    print(f"Multi-scale deformable attention, forward + backward, {args.threads} threads, "
          f"median of {args.repeats} steps (naive: 1) after 1 warm-up")
    print(f"batch {args.batch}, {args.height}x{args.width} image -> levels {shapes}, "
          f"{args.heads} heads x {args.head_dim}, {args.points} points; small: batch 1, "
          f"64x96 image -> {small['shapes']}, 16 queries")
    memory = {name: run_worker("memory", spec) for name, (_, spec) in cases.items()}
    seconds = {}
    for group in groups:
        names = [n for n in group if n in cases and "error" not in memory[n]]
        result = run_worker("time", [cases[n][1] for n in names]) if names else []
        if isinstance(result, dict):  # the worker failed
            for n in names:
                memory[n].setdefault("error", result["error"])
            continue
        seconds.update(zip(names, result))

    print(f"{'case':29s} {'queries':>8s} {'keys':>6s} {'time':>11s} {'peak RSS growth':>16s}")
    for name, (label, _) in cases.items():
        m = memory[name]
        head = f"{label:29s} {m.get('queries', 0):8d} {m.get('keys', 0):6d}"
        if name in seconds:
            print(f"{head} {seconds[name] * 1000:8.1f} ms {m['peak_mib']:12.0f} MiB")
        else:
            print(f"{head}  {m['error']}")
    print("ratios, time of the first / time of the second (timed together in this run):")
    for slow, fast, text in ratios:
        if slow in seconds and fast in seconds:
            print(f"  {text:40s} {seconds[slow] / seconds[fast]:8.2f}x")
        elif slow in cases and fast in cases:
            print(f"  {text:40s}      n/a (a case did not run; see above)")
    # Recompute (encoder) against the default, both timed in one process.
    if "recompute_enc" in seconds and "deform_enc" in seconds:
        print(f"recompute: time {seconds['recompute_enc']:.3f} s "
              f"({seconds['recompute_enc'] / seconds['deform_enc']:.2f}x default), "
              f"memory +{memory['recompute_enc']['peak_mib']:.0f} MiB "
              f"(vs +{memory['deform_enc']['peak_mib']:.0f} MiB)")
    else:
        print("recompute: n/a (a case did not run; see above)")


if __name__ == "__main__":
    main()
