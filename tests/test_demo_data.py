"""The generated demo dataset (updetr_d2.data.datasets.demo): determinism, COCO
instances and panoptic consistency, and its Detectron2 registration."""
import hashlib
import json
import os

import numpy as np
import pytest

import updetr_d2  # noqa: F401  (compat fixes before any Detectron2 module)
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode
from PIL import Image
from pycocotools.coco import COCO

from updetr_d2.data.datasets import demo
from updetr_d2.data.datasets.demo import (
    DEMO_STUFF_CLASSES,
    DEMO_THING_CLASSES,
    ensure_demo_dataset,
    register_demo_datasets,
)

K = len(DEMO_THING_CLASSES)
COUNTS = {"train": 192, "val": 16, "unlabeled": 32}
LABELED = ("train", "val")


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return ensure_demo_dataset(str(tmp_path_factory.mktemp("demo") / "demo_v2"))


@pytest.fixture
def registered():
    """Registers under a test prefix and unregisters afterwards, so the names never
    clash with the real ``updetr_demo_*`` datasets."""
    names = []

    def register(root=None, prefix="test_demo"):
        out = register_demo_datasets(root, prefix=prefix)
        names.extend(n for n in out if n not in names)
        return out

    yield register
    for name in names:
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def _digests(folder):
    out = {}
    for dirpath, _, files in os.walk(folder):
        for fn in files:
            path = os.path.join(dirpath, fn)
            with open(path, "rb") as f:
                out[os.path.relpath(path, folder)] = hashlib.sha256(f.read()).hexdigest()
    return out


def _load_json(root, name):
    with open(os.path.join(root, "annotations", name)) as f:
        return json.load(f)


def _read_panoptic(path):
    rgb = np.asarray(Image.open(path).convert("RGB"), dtype=np.int64)
    return rgb[..., 0] + 256 * rgb[..., 1] + 256**2 * rgb[..., 2]


def _tight_box(mask):
    ys, xs = np.nonzero(mask)
    return [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]


def _iou(a, b):
    return np.logical_and(a, b).sum() / np.logical_or(a, b).sum()


def test_layout(root):
    files = _digests(root)
    for split, n in COUNTS.items():
        assert sum(p.startswith(os.path.join("images", split, "")) for p in files) == n
    for split in LABELED:
        assert f"annotations/instances_{split}.json" in files
        assert f"annotations/panoptic_{split}.json" in files
        assert sum(p.startswith(f"annotations/panoptic_{split}/") for p in files) == COUNTS[split]
    assert "annotations/image_info_unlabeled.json" in files
    assert demo.MARKER in files
    images = sum(COUNTS.values())
    panoptic_pngs = COUNTS["train"] + COUNTS["val"]
    assert len(files) == images + panoptic_pngs + 5 + 1  # + 5 jsons + the marker
    # the rename left nothing beside the dataset
    assert os.listdir(os.path.dirname(root)) == [os.path.basename(root)]


def test_ensure_is_a_no_op_when_complete(root):
    before = {p: os.stat(os.path.join(root, p)).st_mtime_ns for p in _digests(root)}
    assert ensure_demo_dataset(root) == root
    assert {p: os.stat(os.path.join(root, p)).st_mtime_ns for p in _digests(root)} == before


def test_refuses_a_foreign_non_empty_folder(tmp_path):
    target = tmp_path / "taken"
    target.mkdir()
    (target / "notes.txt").write_text("not a dataset")
    with pytest.raises(RuntimeError, match="no complete demo dataset"):
        ensure_demo_dataset(str(target))
    assert os.listdir(tmp_path) == ["taken"]  # its temp folder was removed


def test_root_resolution(tmp_path, monkeypatch):
    monkeypatch.delenv(demo.ENV_VAR, raising=False)
    assert demo.demo_root() == os.path.expanduser("~/.cache/updetr_d2/demo_v2")
    monkeypatch.setenv(demo.ENV_VAR, str(tmp_path / "env"))
    assert demo.demo_root() == str(tmp_path / "env")
    assert demo.demo_root(str(tmp_path / "arg")) == str(tmp_path / "arg")


@pytest.mark.parametrize("split", LABELED)
def test_instances_json_is_valid_coco(root, split):
    coco = COCO(os.path.join(root, "annotations", f"instances_{split}.json"))
    assert len(coco.imgs) == COUNTS[split]
    assert sorted(coco.cats) == list(range(1, K + 1))
    assert [coco.cats[i]["name"] for i in range(1, K + 1)] == DEMO_THING_CLASSES
    for img in coco.imgs.values():
        path = os.path.join(root, "images", split, img["file_name"])
        with Image.open(path) as im:
            assert im.size == (img["width"], img["height"])
            assert im.mode == "RGB"
        assert 240 <= min(im.size) and max(im.size) <= 320
    assert len(coco.anns) > COUNTS[split]  # several shapes per image on average
    for ann in coco.anns.values():
        img = coco.imgs[ann["image_id"]]
        x, y, w, h = ann["bbox"]
        assert w > 0 and h > 0
        assert x >= 0 and y >= 0 and x + w <= img["width"] and y + h <= img["height"]
        assert ann["iscrowd"] == 0 and ann["category_id"] in coco.cats
        assert ann["area"] >= 64
        assert ann["segmentation"] and all(
            len(p) >= 6 and len(p) % 2 == 0 for p in ann["segmentation"]
        )


@pytest.mark.parametrize("split", LABELED)
def test_masks_agree_with_boxes_and_areas(root, split):
    coco = COCO(os.path.join(root, "annotations", f"instances_{split}.json"))
    for ann in coco.anns.values():
        mask = coco.annToMask(ann).astype(bool)
        assert np.abs(np.array(_tight_box(mask)) - np.array(ann["bbox"])).max() <= 1, ann["id"]
        assert abs(int(mask.sum()) - ann["area"]) <= 0.03 * ann["area"], ann["id"]


@pytest.mark.parametrize("split", LABELED)
def test_panoptic_pngs_match_json_and_instances(root, split):
    pan = _load_json(root, f"panoptic_{split}.json")
    cats = {c["id"]: c for c in pan["categories"]}
    assert [cats[i]["name"] for i in sorted(cats)] == DEMO_THING_CLASSES + DEMO_STUFF_CLASSES
    assert [cats[i]["isthing"] for i in sorted(cats)] == [1] * K + [0] * len(DEMO_STUFF_CLASSES)
    coco = COCO(os.path.join(root, "annotations", f"instances_{split}.json"))
    assert [c["name"] for c in coco.loadCats(sorted(coco.cats))] == DEMO_THING_CLASSES
    assert len(pan["annotations"]) == COUNTS[split]
    for entry in pan["annotations"]:
        ids = _read_panoptic(os.path.join(root, "annotations", f"panoptic_{split}", entry["file_name"]))
        img = coco.imgs[entry["image_id"]]
        assert ids.shape == (img["height"], img["width"])
        segments = {s["id"]: s for s in entry["segments_info"]}
        assert set(np.unique(ids).tolist()) == set(segments)  # no void pixels either
        for s in segments.values():
            assert s["area"] == int((ids == s["id"]).sum())
            assert _tight_box(ids == s["id"]) == s["bbox"]
            assert s["category_id"] in cats
        # thing segments <-> instance annotations of the same image, one to one
        things = [s for s in segments.values() if cats[s["category_id"]]["isthing"]]
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[entry["image_id"]]))
        assert len(things) == len(anns)
        masks = [coco.annToMask(a).astype(bool) for a in anns]
        matched = set()
        for s in things:
            ious = [
                _iou(ids == s["id"], m) if a["category_id"] == s["category_id"] else 0.0
                for a, m in zip(anns, masks)
            ]
            best = int(np.argmax(ious))
            assert ious[best] > 0.95 and best not in matched
            matched.add(best)
        assert {cats[s["category_id"]]["name"] for s in segments.values()} >= {"sky", "ground"}


def test_train_has_an_empty_image_and_every_class(root):
    coco = COCO(os.path.join(root, "annotations", "instances_train.json"))
    assert any(not coco.getAnnIds(imgIds=[i]) for i in coco.imgs)
    assert {a["category_id"] for a in coco.anns.values()} == set(range(1, K + 1))


def test_partial_occlusion_occurs(root):
    """Shapes overlap, later ones hiding part of earlier ones: count overlapping box pairs."""
    coco = COCO(os.path.join(root, "annotations", "instances_train.json"))
    overlaps = 0
    for i in coco.imgs:
        boxes = [a["bbox"] for a in coco.loadAnns(coco.getAnnIds(imgIds=[i]))]
        for j, (x, y, w, h) in enumerate(boxes):
            for x2, y2, w2, h2 in boxes[j + 1 :]:
                overlaps += x < x2 + w2 and x2 < x + w and y < y2 + h2 and y2 < y + h
    assert overlaps >= 5


def test_unlabeled_split(root):
    info = _load_json(root, "image_info_unlabeled.json")
    assert len(info["images"]) == COUNTS["unlabeled"]
    for img in info["images"]:
        with Image.open(os.path.join(root, "images", "unlabeled", img["file_name"])) as im:
            assert im.size == (img["width"], img["height"])


def test_registration_creates_no_files(tmp_path, monkeypatch, registered):
    fresh = tmp_path / "fresh"
    monkeypatch.setenv(demo.ENV_VAR, str(fresh))
    names = registered(prefix="test_demo_env")
    assert names == [
        "test_demo_env_train",
        "test_demo_env_panoptic_train",
        "test_demo_env_val",
        "test_demo_env_panoptic_val",
        "test_demo_env_unlabeled",
    ]
    assert registered(prefix="test_demo_env") == names  # idempotent
    assert all(n in DatasetCatalog.list() for n in names)
    assert MetadataCatalog.get("test_demo_env_train").image_root == str(fresh / "images" / "train")
    assert os.listdir(tmp_path) == []


def test_lazy_generation_is_deterministic(root, tmp_path, registered):
    """Generating again, this time through a registered loader, gives the same bytes."""
    other = tmp_path / "again"
    registered(str(other), prefix="test_demo_lazy")
    assert not other.exists()
    assert len(DatasetCatalog.get("test_demo_lazy_unlabeled")) == COUNTS["unlabeled"]
    a, b = _digests(root), _digests(str(other))
    assert a.keys() == b.keys()
    assert [p for p in a if a[p] != b[p]] == []


def test_registered_datasets_load(root, registered):
    registered(root)
    for split in LABELED:
        dicts = DatasetCatalog.get(f"test_demo_{split}")
        assert len(dicts) == COUNTS[split]
        anns = [a for d in dicts for a in d["annotations"]]
        assert all(a["bbox_mode"] == BoxMode.XYWH_ABS for a in anns)
        assert {a["category_id"] for a in anns} <= set(range(K))
        assert all(os.path.isfile(d["file_name"]) for d in dicts)
        meta = MetadataCatalog.get(f"test_demo_{split}")
        assert meta.thing_classes == DEMO_THING_CLASSES and meta.evaluator_type == "coco"
        assert meta.thing_dataset_id_to_contiguous_id == {i + 1: i for i in range(K)}
        assert os.path.isfile(meta.json_file) and len(meta.thing_colors) == K
    train = DatasetCatalog.get("test_demo_train")
    assert {a["category_id"] for d in train for a in d["annotations"]} == set(range(K))
    assert any(not d["annotations"] for d in train)

    for split in LABELED:
        name = f"test_demo_panoptic_{split}"
        meta = MetadataCatalog.get(name)
        assert meta.evaluator_type == "coco_panoptic_seg"
        assert meta.ignore_label == 255 and meta.label_divisor == 1000
        assert meta.stuff_classes == DEMO_THING_CLASSES + DEMO_STUFF_CLASSES
        assert meta.stuff_dataset_id_to_contiguous_id == {K + 1: K, K + 2: K + 1}
        assert os.path.isfile(meta.panoptic_json) and os.path.isdir(meta.panoptic_root)
        dicts = DatasetCatalog.get(name)
        assert len(dicts) == COUNTS[split]
        for d in dicts:
            assert os.path.isfile(d["file_name"]) and os.path.isfile(d["pan_seg_file_name"])
            ids = _read_panoptic(d["pan_seg_file_name"])
            assert ids.shape == (d["height"], d["width"])
            for s in d["segments_info"]:
                assert s["isthing"] == (s["category_id"] < K)
                assert 0 <= s["category_id"] < K + len(DEMO_STUFF_CLASSES)
                assert s["area"] == int((ids == s["id"]).sum())

    unlabeled = DatasetCatalog.get("test_demo_unlabeled")
    assert len(unlabeled) == COUNTS["unlabeled"]
    assert all("annotations" not in d and os.path.isfile(d["file_name"]) for d in unlabeled)
    assert {tuple(sorted(d)) for d in unlabeled} == {("file_name", "height", "image_id", "width")}


def test_cli(root, capsys):
    demo.main(["--root", root])
    out = capsys.readouterr().out
    assert root in out and "train: 192 images" in out and "unlabeled: 32 images" in out
