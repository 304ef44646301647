"""Plumbing of the speed benchmarks that compare the project with the original code.

A benchmark defines *arms* (ours in fp32, ours in bf16, the original in fp32, ...): each is
a function that builds its model and inputs and returns the step to time. Every arm runs in
a fresh process of its own (so its peak memory is its own and nothing one arm allocated
slows the next), one after the other in one invocation; the parent prints a table with the
median step time, the ratios the issue's targets ask for, the multiply-accumulates of a
step (``torch.utils.flop_counter``: convolutions, matmuls, attention; forward and backward)
and the model FLOP utilisation: achieved MAC/s over this machine's GEMM rate in the arm's
precision, measured in the same invocation (``gemm_rate``).
"""
import argparse
import contextlib
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from typing import Callable, Dict, List

import torch

__all__ = ["PRECISIONS", "add_arm_arguments", "arm_main", "autocast", "child_argv", "run_benchmark", "count_macs", "gemm_rate", "machine_rates", "median_time",
           "print_table", "ratio_line", "run_arms"]

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}
RESULT_TAG = "ARM-RESULT "


def autocast(precision: str):
    """bf16: CPU autocast, as ``SOLVER.AMP.ENABLED`` trains; fp32: nothing."""
    dtype = PRECISIONS[precision]
    return torch.autocast("cpu", dtype=dtype) if dtype else contextlib.nullcontext()


def median_time(fn: Callable, steps: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def gemm_rate(dtype: torch.dtype, n: int = 4096, repeats: int = 10) -> float:
    """Multiply-accumulates per second of an ``n x n`` by ``n x n`` matmul in ``dtype`` on this
    machine with this process's threads (the best of ``repeats``: the machine's attainable rate)."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return n ** 3 / best


def count_macs(fn: Callable) -> float:
    """Multiply-accumulates of one call of ``fn`` (forward and backward, as it runs)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return counter.get_total_flops() / 2


def arm_main(arms: Dict[str, Callable], args) -> None:
    """In an arm's process: build it, time it, count its MACs, report as one JSON line. An
    arm returns its step, or ``(step, {name: part})`` to also time parts of a step."""
    built = arms[args.arm](args)
    step, parts = built if isinstance(built, tuple) else (built, {})
    seconds = median_time(step, args.steps)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20  # KiB -> GiB, before counting
    result = {"seconds": seconds, "macs": count_macs(step), "peak_rss_gib": rss}
    result["parts"] = {name: median_time(part, args.steps) for name, part in parts.items()}
    print(RESULT_TAG + json.dumps(result), flush=True)


def child_argv(args, options: List[str]) -> List[str]:
    """The command line an arm's process gets: ``options`` (attribute names of ``args``,
    None ones left out) and the config overrides ``args.opts``."""
    argv = []
    for name in options:
        value = getattr(args, name)
        if value is not None:
            argv += [f"--{name.replace('_', '-')}", str(value)]
    return argv + list(getattr(args, "opts", []) or [])


def run_arms(script: str, names: List[str], argv: List[str]) -> Dict[str, Dict]:
    """Runs ``script --arm NAME *argv`` for each name, one after the other; their results."""
    results = {}
    for name in names:
        proc = subprocess.run([sys.executable, script, "--arm", name, *argv], capture_output=True, text=True,
                              env=dict(os.environ))
        lines = [line for line in proc.stdout.splitlines() if line.startswith(RESULT_TAG)]
        if proc.returncode != 0 or not lines:
            sys.exit(f"arm {name!r} failed:\n{(proc.stdout + proc.stderr)[-3000:]}")
        results[name] = json.loads(lines[-1][len(RESULT_TAG):])
        print(f"  {name}: {results[name]['seconds']:.3f} s", flush=True)
    return results


def print_table(results: Dict[str, Dict], rates: Dict[str, float], title: str) -> None:
    """One row per arm: time, peak RSS, GMAC per step, MFU against its precision's GEMM rate."""
    print(f"\n{title}")
    print(f"  GEMM rate on this machine ({torch.get_num_threads()} threads): "
          + ", ".join(f"{p} {r / 1e9:.0f} GMAC/s" for p, r in rates.items()))
    print(f"  {'arm':24s} {'median s':>9s} {'peak GiB':>9s} {'GMAC':>8s} {'GMAC/s':>8s} {'MFU':>6s}")
    for name, r in results.items():
        precision = "bf16" if name.endswith("bf16") else "fp32"
        achieved = r["macs"] / r["seconds"]
        print(f"  {name:24s} {r['seconds']:9.3f} {r['peak_rss_gib']:9.2f} {r['macs'] / 1e9:8.1f} "
              f"{achieved / 1e9:8.1f} {achieved / rates[precision]:6.1%}")


def ratio_line(results: Dict[str, Dict], ours: str, reference: str, target: float) -> str:
    if ours not in results or reference not in results:
        return ""
    ratio = results[ours]["seconds"] / results[reference]["seconds"]
    verdict = "met" if ratio <= target else "NOT met"
    return f"  {ours} / {reference}: {ratio:.3f} (target <= {target}: {verdict})"


def machine_rates() -> Dict[str, float]:
    """The GEMM rate of each precision this benchmark runs (fp32, bf16)."""
    return {p: gemm_rate(d or torch.float32) for p, d in PRECISIONS.items()}



def add_arm_arguments(parser: argparse.ArgumentParser, arms: Dict[str, Callable], steps: int) -> None:
    """The options every arms benchmark has: --steps, --arms, the internal --arm, and config
    overrides for our model after the options (``--`` ends --arms before them)."""
    parser.add_argument("--steps", type=int, default=steps)
    parser.add_argument("--arms", nargs="+", default=None, choices=list(arms), help="default: every arm available")
    parser.add_argument("--arm", default=None, help=argparse.SUPPRESS)  # internal: run one arm
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides for our model (KEY VALUE ...)")


def run_benchmark(script: str, arms: Dict[str, Callable], args, options: List[str], reference: str,
                  title: str, targets: Dict[str, float]):
    """In an arm's process: run it (``arm_main``). Else: every arm available (the original's
    only when ``args.<reference>`` names its checkout) in its own process, the table, and the
    ratio of each ``targets`` arm to the original's fp32 step with its target."""
    if args.arm:
        arm_main(arms, args)
        return None
    names = args.arms or [n for n in arms if getattr(args, reference) or not n.startswith("original")]
    rates = machine_rates()
    results = run_arms(script, names, child_argv(args, options + ["steps", reference]))
    print_table(results, rates, title)
    for name, r in results.items():
        for part, seconds in r.get("parts", {}).items():
            print(f"  {part} in {name}: {seconds * 1000:.1f} ms ({seconds / r['seconds']:.2%} of a step)")
    for ours, target in targets.items():
        line = ratio_line(results, ours, "original-fp32", target)
        if line:
            print(line)
    return results
