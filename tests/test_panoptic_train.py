"""Panoptic fine-tuning end to end through tools/train_net.py: a tiny DETR with the mask head,
trained jointly on two demo images, segments them (PQ from Detectron2's
COCOPanopticEvaluator well above chance) and the same model's segm AP comes out of
COCOEvaluator; the box stage alone is scored by box AP without a panoptic output."""
import os
import subprocess
import sys

import pytest


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN_NET = os.path.join(ROOT, "tools", "train_net.py")
CONFIG = os.path.join(ROOT, "configs", "demo", "detr_R18_demo.yaml")
NAME = "panoptic_two_images"
IMAGES = 2

# Registers the first IMAGES demo panoptic train images as NAME (with ground-truth json
# files of their own: the evaluators compare against every image of those), then runs
# tools/train_net.py with the remaining arguments.
RUNNER = """
import json, os, runpy, sys
import updetr_d2
from detectron2.data import DatasetCatalog, MetadataCatalog
folder, count = sys.argv[1], int(sys.argv[2])
records = DatasetCatalog.get("updetr_demo_panoptic_train")[:count]
meta = MetadataCatalog.get("updetr_demo_panoptic_train").as_dict()
ids = {r["image_id"] for r in records}
paths = {}
for key in ("panoptic_json", "json_file"):
    with open(meta[key]) as f:
        data = json.load(f)
    data["images"] = [im for im in data["images"] if im["id"] in ids]
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] in ids]
    paths[key] = os.path.join(folder, os.path.basename(meta[key]))
    with open(paths[key], "w") as f:
        json.dump(data, f)
meta.pop("name")
meta.update(paths)
DatasetCatalog.register("%s", lambda: [dict(r) for r in records])
MetadataCatalog.get("%s").set(**meta)
sys.argv = [sys.argv[0]] + sys.argv[3:]
runpy.run_path(%r, run_name="__main__")
""" % (NAME, NAME, TRAIN_NET)

FAST = [
    "MODEL.DEVICE", "cpu", "MODEL.RESNETS.OUT_FEATURES", '["res2", "res3", "res4", "res5"]',
    "MODEL.DETR.NUM_CLASSES", "6", "MODEL.DETR.HIDDEN_DIM", "64", "MODEL.DETR.DIM_FEEDFORWARD", "128",
    "MODEL.DETR.ENC_LAYERS", "1", "MODEL.DETR.NUM_OBJECT_QUERIES", "10",
    "DATASETS.TRAIN", f'("{NAME}",)', "DATASETS.TEST", f'("{NAME}",)',
    "INPUT.DATASET_MAPPER", "PanopticDetrDatasetMapper", "INPUT.MIN_SIZE_TRAIN", "(160,)",
    "INPUT.MAX_SIZE_TRAIN", "256", "INPUT.MIN_SIZE_TEST", "160", "INPUT.MAX_SIZE_TEST", "256",
    "INPUT.CROP.ENABLED", "False", "INPUT.RANDOM_FLIP", "none",
    "SOLVER.IMS_PER_BATCH", str(IMAGES), "SOLVER.BASE_LR", "1e-3", "SOLVER.STEPS", "()",
    "DATALOADER.NUM_WORKERS", "0", "SEED", "1",
]


def train_net(tmp_path, *args):
    runner = tmp_path / "run_train_net.py"
    runner.write_text(RUNNER)
    proc = subprocess.run([sys.executable, str(runner), str(tmp_path), str(IMAGES), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=900)
    output = proc.stdout + proc.stderr
    if proc.returncode != 0:
        pytest.fail(f"train_net.py {' '.join(args)} failed:\n{output[-4000:]}")
    return output


def copypaste(output, task):
    """The metrics Detectron2 prints for ``task`` ("copypaste: Task: ..." and two lines)."""
    lines = [line.split("copypaste: ", 1)[1] for line in output.splitlines() if "copypaste: " in line]
    for i, line in enumerate(lines):
        if line == f"Task: {task}":
            return dict(zip(lines[i + 1].split(","), map(float, lines[i + 2].split(","))))
    return None


def test_joint_panoptic_training_overfits_two_images(tmp_path):
    output = train_net(tmp_path, "--config-file", CONFIG, *FAST, "MODEL.DETR.PLUGINS", '["MaskHead"]',
                       "SOLVER.MAX_ITER", "200", "OUTPUT_DIR", str(tmp_path / "joint"))
    pq, segm, bbox = (copypaste(output, t) for t in ("panoptic_seg", "segm", "bbox"))
    # Measured: PQ 65.5 (things 46.3, stuff 94.3), segm AP 26.8, box AP 75.0; chance is ~0.
    assert pq["PQ"] > 30 and pq["PQ_th"] > 10 and pq["PQ_st"] > 30
    assert segm["AP"] > 10 and bbox["AP"] > 30


def test_box_stage_is_scored_by_box_ap_alone(tmp_path):
    output = train_net(tmp_path, "--config-file", CONFIG, *FAST, "SOLVER.MAX_ITER", "2",
                       "OUTPUT_DIR", str(tmp_path / "box"))
    assert copypaste(output, "bbox") is not None
    assert copypaste(output, "panoptic_seg") is None and copypaste(output, "segm") is None
    assert "no panoptic_seg, so no PQ" in output
