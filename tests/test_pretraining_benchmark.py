"""benchmarks/pretraining.py --setting small end to end on the demo data: every arm (no
pretraining, UP-DETR with two hand-offs, SimDETR, one encoder pretext) pretrains, reports its
pretext's held-out metric, fine-tunes with periodic evaluation and reports its diagnostics;
the table, results and AP curves are written; a rerun skips every run (resume). About a
minute on 2 CPU cores."""
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARMS = ["none", "UP-DETR", "UP-DETR/encoder", "SimDETR", "pretext:mim_continuous"]
DECODER = {"var_images", "var_queries", "image_share", "query_norm", "memory_norm", "memory_cosine",
           "memory_cross_cosine"}
DIAGNOSTICS = DECODER | {"loss_ce", "loss_bbox", "loss_giou"}
HELD_OUT_KEYS = {"UP-DETR": {"patch_AP", "patch_AP50", "feature_loss"}, "SimDETR": {"AP", "AP50", "AP75"},
                 "pretext:mim_continuous": {"loss"}}


def run_benchmark(out):
    # The environment passes through: UPDETR_DEMO_ROOT (conftest.py) names the demo data.
    cmd = [sys.executable, os.path.join(ROOT, "benchmarks", "pretraining.py"), "--setting", "small",
           "--arms", "none,UP-DETR,SimDETR,pretext", "--pretext-tasks", "mim_continuous",
           "--updetr-handoffs", "all,encoder",
           "--unlabeled", "updetr_demo_unlabeled", "--train", "updetr_demo_train", "--val", "updetr_demo_val",
           "--num-classes", "4", "--output", out]
    proc = subprocess.run(cmd, cwd=ROOT, env=dict(os.environ), capture_output=True, text=True, timeout=600)
    output = proc.stdout + proc.stderr
    if proc.returncode != 0:
        pytest.fail(f"benchmarks/pretraining.py failed:\n{output[-4000:]}")
    return output


def test_small_benchmark_reports_every_arm_and_resumes(tmp_path):
    out = str(tmp_path / "bench")
    first = run_benchmark(out)
    assert "tools/train_net.py" in first and "tools/simdetr.py proposals" in first

    with open(os.path.join(out, "table.md")) as f:
        table = f.read()
    assert "python benchmarks/pretraining.py --setting small" in table  # the command that made it
    final, curves = table.split("AP at equal fine-tuning iterations")
    rows = [line for line in final.splitlines() if line.startswith("| ") and "+-" in line]
    assert [row.split(" | ")[0][2:] for row in rows] == ARMS
    # With one seed there is no std to compare in: the per-evaluation table has the means only.
    assert "| pretraining | 2 it | 4 it |" in curves
    assert [r.split(" | ")[0][2:] for r in curves.splitlines() if r.startswith("| ") and "+-" in r][: len(ARMS)] == ARMS

    with open(os.path.join(out, "results.json")) as f:
        results = json.load(f)
    for arm in ARMS:
        run = results["results"][arm]["1"]
        assert [p["iteration"] for p in run["curve"]] == [2, 4]  # --eval-period 2 of 4 iterations
        assert run["final"] == {k: run["curve"][-1][k] for k in ("AP", "AP50", "AP75")}
        assert all(0 <= v <= 100 for v in run["final"].values())
        assert set(run["diagnostics"]) == DIAGNOSTICS and all(math.isfinite(v) for v in run["diagnostics"].values())
        assert f"| {arm} | " in table.split("Does the detector look at the image?")[1].split("Pretext")[0]
        handoff = results["handoff"][arm]
        assert set(handoff) == DECODER and all(math.isfinite(v) for v in handoff.values())
    # The encoder-only hand-off left the decoder, queries and heads fresh, and said so.
    with open(os.path.join(out, "finetune_UP-DETR_encoder_seed1", "run.log")) as f:
        log = f.read()
    assert "Not loaded from the initial weights (MODEL.WEIGHTS_SKIP)" in log and "transformer.decoder.*" in log
    assert set(results["held_out"]) == set(HELD_OUT_KEYS)
    for arm, keys in HELD_OUT_KEYS.items():
        for when in ("init", "pretrained"):
            metrics = results["held_out"][arm][when]
            assert set(metrics) == keys and all(math.isfinite(v) for v in metrics.values()), (arm, when, metrics)
            assert f"| {arm} | " in table.split("Pretext learned?")[1]

    image = np.asarray(Image.open(os.path.join(out, "ap_curves.png")).convert("RGB"))
    assert image.shape == (450, 1200, 3)
    assert len(np.unique(image.reshape(-1, 3), axis=0)) > 16  # axes, text and coloured lines

    # Every run is finished: the rerun runs no tool and recomputes no held-out metric.
    second = run_benchmark(out)
    assert "+ " not in second and "held-out metrics of" not in second, second[-3000:]
    with open(os.path.join(out, "results.json")) as f:
        assert json.load(f)["results"] == results["results"]


def test_ap_curve_reads_metrics_like_plot_metrics(tmp_path):
    """benchmarks/_common.py's ap_curve goes through updetr_d2.utils.plots.read_metrics: bad
    lines skipped, a resumed iteration's last record wins; importing _common loads no torch
    (a benchmark's main() sets OMP_NUM_THREADS first)."""
    code = ("import sys; sys.path.insert(0, 'benchmarks'); import _common; "
            "assert 'torch' not in sys.modules, 'torch loaded by _common'; "
            "import json; print(json.dumps([_common.ap_curve(p, 4) for p in sys.argv[1:]]))")
    metrics = tmp_path / "metrics.json"
    lines = [{"iteration": 0, "total_loss": 3.0}, {"iteration": 1, "bbox/AP": 1.0, "bbox/AP50": 2.0},
             {"iteration": 1, "bbox/AP": 5.0, "bbox/AP50": 6.0},  # the resumed run's evaluation
             {"iteration": 3, "bbox/AP": 7.0, "bbox/AP50": 8.0, "bbox/AP75": 9.0}]
    metrics.write_text("\n".join(json.dumps(r) for r in lines) + "\n\n" + json.dumps(lines[0])[:10])
    empty = tmp_path / "empty.json"
    empty.write_text("\n")
    proc = subprocess.run([sys.executable, "-c", code, str(metrics), str(tmp_path / "missing.json"), str(empty)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    curve, missing, nothing = json.loads(proc.stdout)
    assert curve == [{"iteration": 2, "AP": 5.0, "AP50": 6.0}, {"iteration": 4, "AP": 7.0, "AP50": 8.0, "AP75": 9.0}]
    assert missing == [] and nothing == []
