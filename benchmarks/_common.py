"""Plumbing shared by the benchmarks that run the project's tools: a tool run with its log,
a ``tools/train_net.py`` run that is skipped once finished and resumed when killed, a
training schedule, and the COCO AP of a run read back from its ``metrics.json`` (every
evaluation, with its iteration) or its log (the last one)."""
import os
import re
import subprocess
import sys
from typing import Dict, List, Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
AP_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def sh(cmd: Sequence[str], log_path: str) -> None:
    """Run ``cmd`` in the repository root, appending its output to ``log_path`` (a resumed
    run keeps the earlier attempts' output above its own)."""
    print("+", " ".join(cmd), flush=True)
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    with open(log_path, "a") as log:
        subprocess.run(list(cmd), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, check=True)


def train_net(config: str, opts: Sequence[str], out_dir: str) -> str:
    """A ``tools/train_net.py --resume`` run in ``out_dir`` (log: ``run.log``), skipped when
    its ``model_final.pth`` exists; returns ``out_dir``."""
    if not os.path.exists(os.path.join(out_dir, "model_final.pth")):
        os.makedirs(out_dir, exist_ok=True)
        sh([sys.executable, "tools/train_net.py", "--config-file", config, "--resume", *opts, "OUTPUT_DIR", out_dir],
           os.path.join(out_dir, "run.log"))
    return out_dir


def schedule(iters: int) -> List[str]:
    """``iters`` iterations, the learning rate dropped at 80 %, a checkpoint halfway (so a
    killed run loses at most half of it)."""
    return ["SOLVER.MAX_ITER", str(iters), "SOLVER.STEPS", f"({max(1, int(iters * 0.8))},)",
            "SOLVER.CHECKPOINT_PERIOD", str(max(1, iters // 2))]


def copypaste_ap(log_path: str) -> Dict[str, float]:
    """The last COCO box evaluation Detectron2 printed in a log, or {}."""
    if not os.path.exists(log_path):
        return {}
    with open(log_path) as f:
        rows = re.findall(r"copypaste: AP,AP50,AP75,APs,APm,APl\n.*copypaste: (\S+)", f.read())
    return dict(zip(AP_KEYS, map(float, rows[-1].split(",")))) if rows else {}


def ap_curve(metrics_path: str, max_iter: int) -> List[Dict[str, float]]:
    """Every box evaluation of a training run, in order: ``{"iteration": iterations done,
    "AP": ..., ...}``. Detectron2 logs a periodic evaluation with the index of the
    iteration it followed (``period - 1``, ...) and the final one with ``max_iter``; after
    a resume the replayed iterations log again, and the last record of an iteration wins."""
    # Imported here: updetr_d2 loads torch, which must wait until a benchmark's main() has
    # set OMP_NUM_THREADS.
    from updetr_d2.utils.plots import read_metrics

    try:
        records = read_metrics(metrics_path)
    except (FileNotFoundError, ValueError):  # no run yet, or nothing written before a kill
        return []
    found = {}
    for record in records:
        if "bbox/AP" in record:
            done = min(record["iteration"] + 1, max_iter)
            found[done] = {k: float(record[f"bbox/{k}"]) for k in AP_KEYS if f"bbox/{k}" in record}
    return [dict(iteration=i, **found[i]) for i in sorted(found)]
