"""tools/demo.py (`make demo`) end to end with a tiny schedule: UP-DETR pretraining of the
demo Deformable DETR -> fine-tuning from its encoder -> COCO evaluation -> results table,
results.json, curves and drawn detections; a second call reuses the finished stages."""
import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(ROOT, "tools", "demo.py")
TINY = ["SOLVER.MAX_ITER", "2", "SOLVER.IMS_PER_BATCH", "2", "DATALOADER.NUM_WORKERS", "0",
        "INPUT.MIN_SIZE_TRAIN", "(128,)", "INPUT.MAX_SIZE_TRAIN", "160", "INPUT.MIN_SIZE_TEST", "128",
        "INPUT.MAX_SIZE_TEST", "160", "INPUT.CROP.SIZE", "(64, 128)", "INPUT.DETR_CROP.PRE_RESIZE", "(128,)"]


def run_demo(*args):
    proc = subprocess.run([sys.executable, DEMO, *args], cwd=ROOT, capture_output=True, text=True, timeout=900)
    output = proc.stdout + proc.stderr
    if proc.returncode != 0:
        pytest.fail(f"demo.py {' '.join(args)} failed:\n{output[-4000:]}")
    return proc.stdout


def test_demo_runs_every_stage_and_writes_table_and_pictures(tmp_path):
    out = tmp_path / "demo"
    stdout = run_demo("--output", str(out), *TINY)
    # The pretraining ran as DeformableUpDetr and the fine-tuning took its encoder.
    assert (out / "pretrain" / "model_final.pth").is_file()
    log = (out / "finetune" / "log.txt").read_text()
    assert "Not loaded from the initial weights (MODEL.WEIGHTS_SKIP)" in log
    assert "transformer.decoder.*" in log

    results = json.loads((out / "results.json").read_text())
    finetune = results["metrics"]["finetune"]
    assert {"AP", "AP50", "AP75"} <= set(finetune)
    assert set(results["seconds"]) == {"pretrain", "finetune"}
    row = next(line for line in stdout.splitlines() if line.strip().startswith("finetune"))
    assert f"{finetune['AP']:.2f}" in row

    pictures = [line.strip() for line in stdout.split("Pictures:")[1].splitlines() if line.strip()]
    assert len(pictures) == 2 + 4  # two curve panels, four val images with detections
    for rel in pictures:
        image = cv2.imread(os.path.join(ROOT, rel) if not os.path.isabs(rel) else rel)
        assert image is not None and image.size > 0, rel
        assert np.ptp(image) > 0, f"{rel} is blank"
    curves = cv2.imread(str(out / "curves_finetuning.png"))
    assert curves.shape[1] > curves.shape[0]  # three panels side by side

    # Finished stages are not trained again: nothing changes on disk.
    before = (out / "finetune" / "model_final.pth").stat().st_mtime_ns
    again = run_demo("--output", str(out))
    assert again.count("finished before") == 2
    assert (out / "finetune" / "model_final.pth").stat().st_mtime_ns == before
