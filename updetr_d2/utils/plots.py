"""Training curves from Detectron2's ``metrics.json``: the losses, the learning rate and the
evaluation AP of one or more runs, overlaid in one PNG (``tools/plot_metrics.py``).

``metrics.json`` has one JSON object per line, written as training goes. A killed run can
leave a last line cut short, and a resumed run writes again the iterations after its last
checkpoint; :func:`read_metrics` skips the unreadable lines and keeps, for each iteration,
the record written last (the resumed run's, which the later iterations continue).
"""
import json
import os
import re
from typing import Dict, List, Sequence

__all__ = ["AP_KEYS", "DPI", "FIGSIZE", "loss_keys", "plot_metrics", "read_metrics"]

AP_KEYS = ("bbox/AP", "bbox/AP50", "bbox/AP75")
FIGSIZE = (15.0, 4.5)  # inches: three panels side by side
DPI = 100  # so a PNG is FIGSIZE * DPI pixels: 1500 x 450

# DETR-family criteria log one copy of each loss per auxiliary decoder layer
# (``loss_ce_0``, ``loss_bbox_1``, ...); the curves of the final layer are what matters.
_AUX_SUFFIX = re.compile(r"_\d+$")


def _metrics_file(path: str) -> str:
    path = os.fspath(path)
    return os.path.join(path, "metrics.json") if os.path.isdir(path) else path


def read_metrics(path) -> List[Dict]:
    """The records of ``path`` (a ``metrics.json`` or the output folder holding one), one per
    iteration, sorted by iteration. Blank lines, lines that are not a JSON object (a line cut
    short by a kill) and records without an integer ``iteration`` are skipped; when an
    iteration appears more than once (a resumed run), its last record wins.

    Raises FileNotFoundError (no such file) or ValueError (no usable record), naming the file.
    """
    file_name = _metrics_file(path)
    if not os.path.isfile(file_name):
        raise FileNotFoundError(f"{file_name}: no such metrics file")
    by_iteration: Dict[int, Dict] = {}
    with open(file_name, encoding="utf-8", errors="replace") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if not isinstance(record, dict):
                continue
            iteration = record.get("iteration")
            # bool is an int to Python, but never an iteration
            if not isinstance(iteration, int) or isinstance(iteration, bool):
                continue
            by_iteration[iteration] = record
    if not by_iteration:
        raise ValueError(f"{file_name}: no usable record (expected one JSON object per line, with 'iteration')")
    return [by_iteration[i] for i in sorted(by_iteration)]


def loss_keys(records: Sequence[Dict]) -> List[str]:
    """``total_loss`` first, then every ``loss_<name>`` except the auxiliary decoder-layer
    copies (``loss_<name>_<digit>``), in first-seen order."""
    keys: List[str] = []
    for record in records:
        for key in record:
            if key in keys:
                continue
            if key == "total_loss" or (key.startswith("loss_") and not _AUX_SUFFIX.search(key)):
                keys.append(key)
    keys.sort(key=lambda k: k != "total_loss")  # stable: the others keep their order
    return keys


def _series(records: Sequence[Dict], key: str):
    points = [(r["iteration"], r[key]) for r in records if isinstance(r.get(key), (int, float))]
    return [p[0] for p in points], [p[1] for p in points]


def _label(run: str, key: str, several_runs: bool) -> str:
    return f"{run}: {key}" if several_runs else key


def _empty(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, fontsize=12, color="0.4")
    ax.set_xticks([])
    ax.set_yticks([])


def _draw_panel(ax, runs: Dict[str, List[Dict]], keys_of, title: str, ylabel: str, empty_text: str,
                marker=None) -> bool:
    """Plots ``keys_of(records)`` of every run in ``ax``; False (and ``empty_text``) when
    no run has any of them."""
    several = len(runs) > 1
    drawn = False
    values = []
    for run, records in runs.items():
        for key in keys_of(records):
            x, y = _series(records, key)
            if not x:
                continue
            ax.plot(x, y, label=_label(run, key, several), marker=marker, markersize=4, linewidth=1.2)
            values.extend(y)
            drawn = True
    ax.set_title(title)
    if not drawn:
        _empty(ax, empty_text)
        return False
    ax.set_xlabel("iteration")
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    return True


def plot_metrics(runs: Dict[str, List[Dict]], path) -> str:
    """Writes one PNG (``FIGSIZE`` * ``DPI`` pixels) to ``path`` with three panels: the
    training losses (:func:`loss_keys`), the learning rate (``lr``) and the evaluation AP
    (``AP_KEYS``, "no evaluation logged" when none), each run's curves overlaid and labelled
    with its name (the key of ``runs``). Returns ``path``."""
    if not runs:
        raise ValueError("plot_metrics: no run to plot")
    # The figure and its Agg canvas directly, not pyplot: no global state, no display needed.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=FIGSIZE, dpi=DPI)
    FigureCanvasAgg(fig)
    ax_loss, ax_lr, ax_ap = fig.subplots(1, 3)

    if _draw_panel(ax_loss, runs, loss_keys, "training losses", "loss", "no training loss logged"):
        # Loss terms differ by orders of magnitude (total vs. one term): a log axis keeps
        # each readable, where every value allows it.
        if all(v > 0 for r in runs.values() for k in loss_keys(r) for v in _series(r, k)[1]):
            ax_loss.set_yscale("log")
    _draw_panel(ax_lr, runs, lambda records: ["lr"], "learning rate", "lr", "no learning rate logged")
    _draw_panel(ax_ap, runs, lambda records: list(AP_KEYS), "evaluation", "AP (%)", "no evaluation logged",
                marker="o")

    fig.tight_layout()
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fig.savefig(path, dpi=DPI, format="png")
    return path
