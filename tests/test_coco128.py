"""The real COCO-format subset in ../shared/data/coco128 (CI only; skipped elsewhere)."""
import contextlib
import json
import os

import pytest
from PIL import Image

import updetr_d2  # noqa: F401  (compat fixes before detectron2 imports)
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data import detection_utils

from updetr_d2.data.datasets.coco128 import (
    ENV_VAR,
    INSTANCES_SPLITS,
    PANOPTIC_SPLITS,
    coco128_available,
    coco128_root,
    register_coco128,
)

ALL_NAMES = [*INSTANCES_SPLITS, *PANOPTIC_SPLITS]


@pytest.fixture(scope="module")
def root():
    root = coco128_root()
    if not coco128_available(root):
        where = (
            f"${ENV_VAR}" if os.environ.get(ENV_VAR) else
            "<repo>/../shared/data/coco128, then ./../shared/data/coco128"
        )
        pytest.skip(
            f"coco128 data not found at '{root}' (looked at {where}); "
            f"set {ENV_VAR} to a coco128 folder to run these tests"
        )
    register_coco128(root)
    return root


def _json(root, rel):
    with open(os.path.join(root, rel)) as f:
        return json.load(f)


@contextlib.contextmanager
def _catalogs_set_aside(names):
    """Temporarily removes ``names`` from both catalogs, restoring them after."""
    saved = {}
    for n in names:
        saved[n] = (DatasetCatalog.pop(n, None), MetadataCatalog.pop(n, None))
    try:
        yield
    finally:
        for n, (func, meta) in saved.items():
            DatasetCatalog.pop(n, None)
            MetadataCatalog.pop(n, None)
            if func is not None:
                DatasetCatalog[n] = func
            if meta is not None:
                MetadataCatalog[n] = meta


def test_missing_root_is_reported_at_load_time(tmp_path):
    missing = str(tmp_path / "no_coco128_here")
    with _catalogs_set_aside(ALL_NAMES):
        registered = register_coco128(missing)  # must not fail: nothing is read
        assert registered == ALL_NAMES
        assert register_coco128(missing) == []  # idempotent
        assert not coco128_available(missing)
        for name in ALL_NAMES:
            with pytest.raises(FileNotFoundError) as err:
                DatasetCatalog.get(name)
            assert missing in str(err.value) and ENV_VAR in str(err.value)


def test_root_from_env(monkeypatch, tmp_path):
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "elsewhere"))
    assert coco128_root() == str(tmp_path / "elsewhere")
    monkeypatch.delenv(ENV_VAR)
    assert coco128_root().endswith(os.path.join("shared", "data", "coco128"))


@pytest.mark.parametrize(
    "name, rel_json, n_images, n_anns, n_crowd",
    [
        ("coco128_train", "annotations/instances_train.json", 96, 725, 8),
        ("coco128_val", "annotations/instances_val.json", 32, 214, 2),
        ("coco128_all", "annotations/instances.json", 128, 939, 10),
    ],
)
def test_instances(root, name, rel_json, n_images, n_anns, n_crowd):
    dicts = DatasetCatalog.get(name)
    assert len(dicts) == n_images
    anns = [a for d in dicts for a in d["annotations"]]
    # Detectron2 v0.6's load_coco_json keeps crowd annotations (iscrowd=1, RLE
    # segmentation); only build_detection_train_loader's filter_empty drops images
    # whose annotations are all crowd. Nothing is dropped here.
    assert len(anns) == n_anns == len(_json(root, rel_json)["annotations"])
    crowd = [a for a in anns if a["iscrowd"] == 1]
    assert len(crowd) == n_crowd
    assert all(isinstance(a["segmentation"], dict) for a in crowd)
    assert all(0 <= a["category_id"] < 80 for a in anns)
    assert sum(1 for d in dicts if not d["annotations"]) == (2 if name != "coco128_val" else 0)

    meta = MetadataCatalog.get(name)
    assert len(meta.thing_classes) == 80
    assert len(meta.thing_dataset_id_to_contiguous_id) == 80
    assert meta.evaluator_type == "coco"
    assert meta.json_file == os.path.join(root, rel_json)


def test_train_val_split(root):
    train = {d["image_id"] for d in DatasetCatalog.get("coco128_train")}
    val = {d["image_id"] for d in DatasetCatalog.get("coco128_val")}
    every = {d["image_id"] for d in DatasetCatalog.get("coco128_all")}
    assert not train & val and train | val == every
    ordered = sorted(every)
    assert val == {ordered[k] for k in range(len(ordered)) if k % 4 == 3}


def test_all_images_match_json_sizes(root):
    dicts = DatasetCatalog.get("coco128_all")
    assert len(dicts) == 128
    assert len(os.listdir(os.path.join(root, "images"))) == 128
    for d in dicts:
        with Image.open(d["file_name"]) as img:  # header only
            assert img.size == (d["width"], d["height"]), d["file_name"]


def test_grayscale_image_reads_as_3_channels(root):
    (d,) = [d for d in DatasetCatalog.get("coco128_all") if d["image_id"] == 86]
    assert os.path.basename(d["file_name"]) == "000000000086.jpg"
    with Image.open(d["file_name"]) as img:
        assert img.mode == "L"
    arr = detection_utils.read_image(d["file_name"], format="BGR")
    assert arr.shape == (d["height"], d["width"], 3)


@pytest.mark.parametrize(
    "name, rel_json, n_images",
    [
        ("coco128_panoptic_train", "annotations/panoptic_train.json", 75),
        ("coco128_panoptic_val", "annotations/panoptic_val.json", 25),
    ],
)
def test_panoptic(root, name, rel_json, n_images):
    dicts = DatasetCatalog.get(name)
    assert len(dicts) == n_images
    expected = {a["image_id"]: len(a["segments_info"]) for a in _json(root, rel_json)["annotations"]}
    assert {d["image_id"]: len(d["segments_info"]) for d in dicts} == expected
    instances = "coco128_train" if name.endswith("train") else "coco128_val"
    assert {d["image_id"] for d in dicts} <= {
        d["image_id"] for d in DatasetCatalog.get(instances)
    }
    for d in dicts:
        assert os.path.isfile(d["file_name"]) and os.path.isfile(d["pan_seg_file_name"])
        for s in d["segments_info"]:
            assert 0 <= s["category_id"] < 133 and isinstance(s["isthing"], bool)

    meta = MetadataCatalog.get(name)
    assert meta.evaluator_type == "coco_panoptic_seg"
    assert meta.panoptic_root == os.path.join(root, "annotations", "panoptic")
    assert len(meta.stuff_classes) == 133
