"""tools/train_net.py end to end on the demo data, through both config routes:
train, evaluate with COCOEvaluator, resume from the last checkpoint, evaluate only."""
import json
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN_NET = os.path.join(ROOT, "tools", "train_net.py")
YAML = os.path.join(ROOT, "configs", "demo", "faster_rcnn_R18_FPN.yaml")
LAZY = os.path.join(ROOT, "configs", "demo", "faster_rcnn_R18_FPN.py")
# Small inputs keep each run to seconds on a CPU.
YAML_FAST = ["INPUT.MIN_SIZE_TRAIN", "(128,)", "INPUT.MAX_SIZE_TRAIN", "192", "INPUT.MIN_SIZE_TEST", "128",
             "INPUT.MAX_SIZE_TEST", "192", "SOLVER.IMS_PER_BATCH", "2", "DATALOADER.NUM_WORKERS", "1"]
LAZY_FAST = ["dataloader.train.mapper.augmentations.0.short_edge_length=[128]",
             "dataloader.train.mapper.augmentations.0.max_size=192",
             "dataloader.test.mapper.augmentations.0.short_edge_length=128",
             "dataloader.test.mapper.augmentations.0.max_size=192",
             "dataloader.train.total_batch_size=2", "dataloader.train.num_workers=1",
             "dataloader.test.num_workers=1"]


def train_net(*args, check=True):
    proc = subprocess.run([sys.executable, TRAIN_NET, *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=900)
    output = proc.stdout + proc.stderr
    if check and proc.returncode != 0:
        pytest.fail(f"train_net.py {' '.join(args)} failed:\n{output[-4000:]}")
    return output


def coco_bbox_metrics(output):
    """The AP row Detectron2 prints in csv form after a COCO evaluation."""
    (row,) = re.findall(r"copypaste: Task: bbox\n.*copypaste: AP,AP50,AP75,APs,APm,APl\n.*copypaste: (\S+)",
                        output)
    return dict(zip(["AP", "AP50", "AP75", "APs", "APm", "APl"], map(float, row.split(","))))


def iterations_logged(output_dir):
    """Iterations whose training losses metrics.json recorded."""
    with open(os.path.join(output_dir, "metrics.json")) as f:
        records = [json.loads(line) for line in f]
    return [r["iteration"] for r in records if "total_loss" in r]


def test_yaml_train_evaluate_then_eval_only(tmp_path):
    out = str(tmp_path / "yaml")
    output = train_net("--config-file", YAML, *YAML_FAST, "SOLVER.MAX_ITER", "20",
                       "SOLVER.CHECKPOINT_PERIOD", "10", "OUTPUT_DIR", out)
    assert "Starting training from iteration 0" in output
    metrics = coco_bbox_metrics(output)
    assert all(0.0 <= v <= 100.0 or v != v for v in metrics.values())  # NaN: no objects of that size
    assert 0.0 <= metrics["AP"] <= 100.0
    assert max(iterations_logged(out)) == 19
    assert sorted(f for f in os.listdir(out) if f.endswith(".pth")) == [
        "model_0000009.pth", "model_0000019.pth", "model_final.pth"]
    assert os.path.isfile(os.path.join(out, "inference", "updetr_demo_val", "coco_instances_results.json"))

    # Evaluating the final weights again gives the same numbers.
    again = train_net("--config-file", YAML, *YAML_FAST, "--eval-only", "OUTPUT_DIR", str(tmp_path / "eval"),
                      "MODEL.WEIGHTS", os.path.join(out, "model_final.pth"))
    assert coco_bbox_metrics(again) == metrics


def test_lazy_train_resume(tmp_path):
    out = str(tmp_path / "lazy")
    common = ["--config-file", LAZY, *LAZY_FAST, f"train.output_dir={out}", "train.checkpointer.period=5"]
    # Stop after 10 of 20 iterations (a killed run leaves the same checkpoint behind).
    first = train_net(*common, "train.max_iter=10")
    assert "Starting training from iteration 0" in first
    resumed = train_net(*common, "train.max_iter=20", "--resume")
    assert "Starting training from iteration 10" in resumed
    assert "model_0000009.pth" in resumed  # loaded the last checkpoint of the first run
    assert max(iterations_logged(out)) == 19
    assert 0.0 <= coco_bbox_metrics(resumed)["AP"] <= 100.0
