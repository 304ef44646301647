"""Users' own COCO data: ``register_coco_json``'s checks and error messages, and the
README's "Train on your data" commands run as written (paths moved into a temporary folder,
iterations and image sizes cut down) on a small COCO json of two relabelled categories."""
import json
import os
import re
import shlex
import shutil
import subprocess
import sys

import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog

from helpers import ROOT
from test_train_net import DETR_LAZY_FAST, DETR_YAML_FAST, YAML_FAST, checkpoints, coco_bbox_metrics, iterations_logged
from updetr_d2.data import register_coco_json
from updetr_d2.data.datasets import CocoDatasetError, ensure_demo_dataset

# Two of the demo's classes under other names and non-contiguous ids: the model can only
# have learned them from this json.
KEEP = {1: (7, "round"), 2: (3, "box")}  # demo category id -> (new id, new name)
TRAIN_IMAGES, VAL_IMAGES = range(1, 7), range(7, 11)  # demo train image ids


def write_user_data(root):
    """``root/my_data``: images/, train.json, val.json (COCO) and unlabeled/ (4 images)."""
    demo = ensure_demo_dataset()
    with open(os.path.join(demo, "annotations", "instances_train.json")) as f:
        coco = json.load(f)
    data = root / "my_data"
    (data / "images").mkdir(parents=True)
    (data / "unlabeled").mkdir()
    categories = [{"id": new_id, "name": name} for new_id, name in KEEP.values()]
    for split, ids in (("train", TRAIN_IMAGES), ("val", VAL_IMAGES)):
        images = [im for im in coco["images"] if im["id"] in ids]
        for im in images:
            shutil.copy(os.path.join(demo, "images", "train", im["file_name"]), data / "images")
        annotations = [dict(a, category_id=KEEP[a["category_id"]][0]) for a in coco["annotations"]
                       if a["image_id"] in ids and a["category_id"] in KEEP]
        assert annotations
        with open(data / f"{split}.json", "w") as f:
            json.dump({"images": images, "annotations": annotations, "categories": categories}, f)
    for name in sorted(os.listdir(os.path.join(demo, "images", "unlabeled")))[:4]:
        shutil.copy(os.path.join(demo, "images", "unlabeled", name), data / "unlabeled")
    return data


@pytest.fixture
def user_data(tmp_path):
    return write_user_data(tmp_path)


@pytest.fixture
def names():
    """Dataset names for one test, removed from Detectron2's catalogs afterwards."""
    used = []

    def name(suffix):
        used.append(f"test_user_coco_{suffix}")
        return used[-1]

    yield name
    for n in used:
        if n in DatasetCatalog.list():
            DatasetCatalog.remove(n)
        MetadataCatalog.remove(n)


# ----------------------------------------------------------------------------- registration
def test_register_coco_json_loads_the_users_classes(user_data, names):
    name = names("train")
    counts = register_coco_json(name, str(user_data / "train.json"), str(user_data / "images"))
    assert counts["images"] == len(TRAIN_IMAGES) and counts["categories"] == 2
    records = DatasetCatalog.get(name)
    assert len(records) == len(TRAIN_IMAGES)
    assert all(os.path.isfile(r["file_name"]) for r in records)
    meta = MetadataCatalog.get(name)
    assert meta.evaluator_type == "coco"
    assert meta.thing_classes == ["box", "round"]  # sorted by category id: 3, 7
    assert meta.thing_dataset_id_to_contiguous_id == {3: 0, 7: 1}
    # The same files again (each launched process registers): no error, nothing re-read.
    assert register_coco_json(name, str(user_data / "train.json"), str(user_data / "images")) is None


def test_errors_name_the_option_and_the_file(user_data, names, tmp_path):
    name, json_file, images = names("err"), str(user_data / "train.json"), str(user_data / "images")
    with pytest.raises(CocoDatasetError, match=r"^--coco-dataset .*the annotation file '.*/nope\.json' does not exist"):
        register_coco_json(name, str(tmp_path / "nope.json"), images, option="--coco-dataset")
    with pytest.raises(CocoDatasetError, match=r"^--coco-dataset .*the image folder '.*/no_images' does not exist"):
        register_coco_json(name, json_file, str(tmp_path / "no_images"), option="--coco-dataset")
    (tmp_path / "list.json").write_text(json.dumps({"images": [], "annotations": []}))
    with pytest.raises(CocoDatasetError, match=r"list\.json' is not a COCO instances json: it has no 'categories'"):
        register_coco_json(name, str(tmp_path / "list.json"), images, option="--coco-dataset")
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(CocoDatasetError, match=r"^COCO dataset '.*': '.*broken\.json' is not a json file"):
        register_coco_json(name, str(tmp_path / "broken.json"), images)
    assert name not in DatasetCatalog.list()  # nothing registered by a failed call

    register_coco_json(name, json_file, images)
    with pytest.raises(CocoDatasetError, match=r"already registered with json_file='.*/train\.json'"):
        register_coco_json(name, str(user_data / "val.json"), images, option="--coco-dataset")
    with pytest.raises(CocoDatasetError, match="already registered"):  # a built-in name
        register_coco_json("coco_2017_train", json_file, images)


def test_train_net_reports_a_bad_flag_value(user_data, tmp_path):
    missing = str(tmp_path / "missing.json")
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "tools", "train_net.py"), "--config-file",
         os.path.join(ROOT, "configs", "demo", "detr_R18_demo.yaml"),
         "--coco-dataset", "my_train", missing, str(user_data / "images"),
         "DATASETS.TRAIN", "('my_train',)"],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert f"error: --coco-dataset my_train {missing}" in proc.stderr
    assert f"the annotation file '{missing}' does not exist" in proc.stderr


# ----------------------------------------------------------------------------- README commands
def readme_commands():
    """The train_net.py command lines of the README's "Train on your data" section."""
    with open(os.path.join(ROOT, "README.md")) as f:
        text = f.read()
    section = text.split("\n## Train on your data\n", 1)[1].split("\n## ", 1)[0]
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", section, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            if line.strip() and not line.lstrip().startswith("#"):
                commands.append(shlex.split(line))
    return commands


def run_readme_command(config, tmp_path, fast):
    """Runs the README command for ``config`` with its ``my_data/`` and ``output/`` moved
    under ``tmp_path`` and ``fast`` appended; returns its output."""
    (command,) = [c for c in readme_commands() if c[c.index("--config-file") + 1] == config]
    assert command[:2] == [".venv/bin/python", "tools/train_net.py"]
    args = [a.replace("my_data/", f"{tmp_path}/my_data/").replace("output/", f"{tmp_path}/output/")
            for a in command[2:]]
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "train_net.py"), *args, *fast],
                          cwd=ROOT, capture_output=True, text=True, timeout=900)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{' '.join(args)} failed:\n{output[-4000:]}"
    return output


def test_readme_commands_are_the_ones_tested():
    configs = [c[c.index("--config-file") + 1] for c in readme_commands()]
    assert configs == ["configs/demo/detr_R18_demo.yaml", "configs/demo/detr_R18_demo.py",
                       "projects/UPDETR/configs/updetr_R18_demo_pretrain.yaml",
                       "projects/UPDETR/configs/updetr_R18_demo_pretrain.py",
                       "projects/UPDETR/configs/detr_R18_demo_finetune.yaml"]


def assert_trained_and_evaluated_on_user_data(output, out_dir, iters):
    assert "Registered dataset 'my_train' (--coco-dataset): 6 images" in output
    assert "2 categories (the model's class count must be 2)" in output
    assert re.search(r"\|\s*box\s*\|\s*\d+\s*\|\s*round\s*\|", output)  # the class histogram
    assert re.search(r"\|\s*box\s*\|\s*\d+\.\d+\s*\|\s*round\s*\|", output)  # per-category AP
    assert max(iterations_logged(out_dir)) == iters - 1
    assert "Evaluation results for bbox" in output
    coco_bbox_metrics(output)


def test_readme_detection_yaml(user_data, tmp_path):
    output = run_readme_command("configs/demo/detr_R18_demo.yaml", tmp_path,
                                DETR_YAML_FAST + ["SOLVER.MAX_ITER", "3", "SOLVER.CHECKPOINT_PERIOD", "100"])
    out = str(tmp_path / "output" / "my_detr")
    assert_trained_and_evaluated_on_user_data(output, out, 3)
    with open(os.path.join(out, "inference", "my_val", "coco_instances_results.json")) as f:
        assert {d["category_id"] for d in json.load(f)} <= {3, 7}  # back in the json's ids


def test_readme_detection_lazy(user_data, tmp_path):
    output = run_readme_command("configs/demo/detr_R18_demo.py", tmp_path,
                                DETR_LAZY_FAST + ["train.max_iter=3", "train.checkpointer.period=100"])
    assert_trained_and_evaluated_on_user_data(output, str(tmp_path / "output" / "my_detr_lazy"), 3)


def test_readme_pretrain_on_a_folder_then_finetune(user_data, tmp_path):
    pretrain_fast = ["SOLVER.MAX_ITER", "2", *YAML_FAST]
    output = run_readme_command("projects/UPDETR/configs/updetr_R18_demo_pretrain.yaml", tmp_path, pretrain_fast)
    assert "loss_feature" in output
    assert "model_final.pth" in checkpoints(str(tmp_path / "output" / "my_pretrain"))

    output = run_readme_command(
        "projects/UPDETR/configs/updetr_R18_demo_pretrain.py", tmp_path,
        ["train.max_iter=2", "dataloader.train.mapper.min_sizes=[128]", "dataloader.train.mapper.max_size=192",
         "dataloader.train.total_batch_size=2", "dataloader.train.num_workers=1"])
    assert "loss_feature" in output
    assert max(iterations_logged(str(tmp_path / "output" / "my_pretrain_lazy"))) == 1

    output = run_readme_command("projects/UPDETR/configs/detr_R18_demo_finetune.yaml", tmp_path,
                                DETR_YAML_FAST + ["SOLVER.MAX_ITER", "3"])
    assert "Initialising Detr from an UP-DETR pretraining checkpoint" in output
    assert_trained_and_evaluated_on_user_data(output, str(tmp_path / "output" / "my_detr_from_pretrain"), 3)
