#!/usr/bin/env python
"""Plot the training curves of one or more runs from Detectron2's metrics.json.

    python tools/plot_metrics.py output/demo/detr --output curves.png
    python tools/plot_metrics.py output/run_a output/run_b/metrics.json --output compare.png

Each run is an output folder (its ``metrics.json`` is read) or a ``metrics.json`` file.
One PNG, three panels: training losses (``total_loss`` and every ``loss_<name>``, not the
auxiliary decoder-layer copies ``loss_<name>_<k>``), learning rate (``lr``), and evaluation
AP (``bbox/AP``, ``bbox/AP50``, ``bbox/AP75``) over iterations. Several runs overlay in the
same panels, labelled with their folder's name. Lines cut short by a killed run are
skipped; after a resume, the last record of a repeated iteration wins.
"""
import argparse
import os
from typing import Dict, List

import updetr_d2  # noqa: F401  (compat fixes and registration, as every tool)
from updetr_d2.utils.plots import plot_metrics, read_metrics


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", metavar="RUN", help="output folders and/or metrics.json files")
    parser.add_argument("--output", required=True, metavar="PNG", help="the PNG to write")
    return parser.parse_args(argv)


def run_name(path: str) -> str:
    """The run's folder name: the folder given, or the one holding the metrics.json given."""
    path = os.path.abspath(path)
    folder = path if os.path.isdir(path) else os.path.dirname(path)
    return os.path.basename(folder) or folder


def main(argv=None) -> Dict[str, List[dict]]:
    """Writes the PNG; returns the records plotted, by run name."""
    args = parse_args(argv)
    runs: Dict[str, List[dict]] = {}
    for path in args.runs:
        try:
            records = read_metrics(path)
        except (FileNotFoundError, ValueError) as e:
            raise SystemExit(f"error: {e}")
        name, n = run_name(path), 2
        while name in runs:  # two runs in folders of the same name
            name, n = f"{run_name(path)} ({n})", n + 1
        runs[name] = records
    plot_metrics(runs, args.output)
    print(f"{args.output}: {len(runs)} run(s), " + ", ".join(f"{k} ({len(v)} iterations)" for k, v in runs.items()))
    return runs


if __name__ == "__main__":
    main()
