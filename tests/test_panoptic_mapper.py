"""PanopticDetrDatasetMapper: DETR's panoptic targets (every segment, things, stuff and
crowd, with tight boxes of the augmented masks) from panoptic records, segment ids that
survive resizes, flips and crops, and the yaml / LazyConfig routes. Small images, CPU."""
import numpy as np
import pytest
import torch
from PIL import Image

import updetr_d2  # noqa: F401  (compat fixes before detectron2 submodules)
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog
from detectron2.data import transforms as T
from updetr_d2 import add_updetr_config
from updetr_d2.data.mappers import RandomChoiceAugmentation, build_dataset_mapper, detr_train_augmentations
from updetr_d2.methods.panoptic.mapper import PanopticDetrDatasetMapper, read_panoptic_ids


def tight_boxes(masks: np.ndarray) -> np.ndarray:
    """Independent reference: [x0, y0, x1 + 1, y1 + 1] of each non-empty mask."""
    out = []
    for m in masks:
        rows, cols = np.flatnonzero(m.any(1)), np.flatnonzero(m.any(0))
        out.append([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1])
    return np.asarray(out, dtype=np.float32).reshape(-1, 4)


def check_targets(out, record):
    inst = out["instances"]
    masks = inst.gt_masks.tensor.numpy()
    assert inst.image_size == tuple(out["image"].shape[1:]) == masks.shape[1:]
    assert masks.dtype == bool and masks.reshape(len(masks), -1).any(1).all()
    np.testing.assert_array_equal(inst.gt_boxes.tensor.numpy(), tight_boxes(masks))
    assert inst.gt_classes.dtype == torch.int64
    return masks


@pytest.fixture(scope="module")
def demo_records():
    return DatasetCatalog.get("updetr_demo_panoptic_train")[:3]


def test_demo_training_targets_things_and_stuff(demo_records):
    augs = detr_train_augmentations((96, 128), 200, crop_pre_resize=(160,), crop_size=(64, 128))
    mapper = PanopticDetrDatasetMapper(is_train=True, augmentations=augs, image_format="RGB")
    np.random.seed(0)
    torch.manual_seed(0)
    seen = set()
    for record in demo_records * 2:
        out = mapper(record)
        masks = check_targets(out, record)
        classes = out["instances"].gt_classes.tolist()
        # kept segments, in segments_info order, with their contiguous category ids
        all_classes = [s["category_id"] for s in record["segments_info"]]
        it = iter(all_classes)
        assert all(c in it for c in classes)  # an ordered subsequence
        assert len(masks) >= 1
        assert out["height"] == record["height"] and out["width"] == record["width"]
        assert out["image_id"] == record["image_id"] and out["file_name"] == record["file_name"]
        seen.update(classes)
    assert seen & {0, 1, 2, 3} and {4, 5} <= seen  # things and stuff (sky, ground)


def test_without_augmentation_masks_reproduce_the_png(demo_records):
    mapper = PanopticDetrDatasetMapper(is_train=True, augmentations=[], image_format="BGR")
    for record in demo_records:
        out = mapper(record)
        masks = check_targets(out, record)
        ids = read_panoptic_ids(record["pan_seg_file_name"])
        segments = record["segments_info"]
        assert len(masks) == len(segments)
        for mask, segment in zip(masks, segments):
            np.testing.assert_array_equal(mask, ids == segment["id"])
        covered = masks.sum(0)
        assert (covered <= 1).all() and ((covered == 1) | (ids == 0)).all()
        assert out["instances"].gt_classes.tolist() == [s["category_id"] for s in segments]
        assert "pan_seg_file_name" in out and "segments_info" in out


def write_record(tmp_path, ids, segments, name="a"):
    """Image + panoptic PNG for the (H, W) id map ``ids``; returns a panoptic record."""
    h, w = ids.shape
    image = tmp_path / f"{name}.png"
    Image.fromarray(np.random.RandomState(0).randint(0, 255, (h, w, 3), dtype=np.uint8)).save(image)
    rgb = np.stack([ids % 256, ids // 256 % 256, ids // 65536], -1).astype(np.uint8)
    png = tmp_path / f"{name}_pan.png"
    Image.fromarray(rgb).save(png)
    segments = [dict(dict(isthing=True, iscrowd=0, bbox=[0, 0, 1, 1], area=1), **s) for s in segments]
    return {"file_name": str(image), "image_id": 7, "height": h, "width": w,
            "pan_seg_file_name": str(png), "segments_info": segments}


class FixedCrop(T.Augmentation):
    def __init__(self, x0, y0, w, h):
        super().__init__()
        self.box = (x0, y0, w, h)

    def get_transform(self, image):
        return T.CropTransform(*self.box)


def test_crop_drops_segments_it_empties(tmp_path):
    ids = np.zeros((40, 40), np.int64)
    ids[:, :20] = 11
    ids[:, 20:] = 22
    ids[34:, 34:] = 33  # only in the bottom-right corner
    ids[0, 0] = 0  # a void pixel
    record = write_record(tmp_path, ids, [{"id": 11, "category_id": 1}, {"id": 22, "category_id": 5, "isthing": False},
                                          {"id": 33, "category_id": 2}])
    mapper = PanopticDetrDatasetMapper(is_train=True, augmentations=[FixedCrop(10, 0, 20, 30)])
    out = mapper(record)
    masks = check_targets(out, record)
    assert out["instances"].gt_classes.tolist() == [1, 5]
    np.testing.assert_array_equal(out["instances"].gt_boxes.tensor.numpy(), [[0, 0, 10, 30], [10, 0, 20, 30]])
    np.testing.assert_array_equal(masks[0], ids[:30, 10:30] == 11)


@pytest.mark.parametrize("n_segments", [3, 300])  # uint8 index map, and the float32 one past 255
def test_large_ids_survive_resize_and_flip(tmp_path, n_segments):
    rng = np.random.RandomState(1)
    seg_ids = [2_000_000, 16_777_215, 70_000] + list(range(1000, 1000 + n_segments - 3))
    ids = np.asarray(seg_ids, np.int64)[rng.randint(0, n_segments, (20, 30))]
    ids[0, :] = 0  # void row
    segments = [{"id": sid, "category_id": k % 7} for k, sid in enumerate(seg_ids)]
    record = write_record(tmp_path, ids, segments)
    augs = [T.RandomFlip(prob=1.0, horizontal=True), T.ResizeShortestEdge(40, 1000)]  # exactly x2
    out = PanopticDetrDatasetMapper(is_train=True, augmentations=augs)(record)
    masks = check_targets(out, record)
    expected_ids = np.kron(ids[:, ::-1], np.ones((2, 2), np.int64))
    present = [s for s in segments if (ids == s["id"]).any()]
    assert len(masks) == len(present)
    for mask, segment in zip(masks, present):
        np.testing.assert_array_equal(mask, expected_ids == segment["id"])
    assert out["instances"].gt_classes.tolist() == [s["category_id"] for s in present]
    assert ((masks.sum(0) == 1) | (expected_ids == 0)).all() and (masks.sum(0) <= 1).all()


def test_crowd_segments_are_kept(tmp_path):
    ids = np.full((16, 16), 5, np.int64)
    ids[4:12, 4:12] = 6
    record = write_record(tmp_path, ids, [{"id": 5, "category_id": 4, "isthing": False},
                                          {"id": 6, "category_id": 0, "iscrowd": 1}])
    out = PanopticDetrDatasetMapper(is_train=True, augmentations=[])(record)
    assert out["instances"].gt_classes.tolist() == [4, 0]
    np.testing.assert_array_equal(out["instances"].gt_boxes.tensor.numpy()[1], [4, 4, 12, 12])


def test_errors_and_test_mode(tmp_path):
    ids = np.full((16, 24), 5, np.int64)
    record = write_record(tmp_path, ids, [{"id": 5, "category_id": 4}])
    train = PanopticDetrDatasetMapper(is_train=True, augmentations=[])
    no_png = {k: v for k, v in record.items() if k != "pan_seg_file_name"}
    with pytest.raises(ValueError, match="a.png.*panoptic"):
        train(no_png)
    with pytest.raises(FileNotFoundError, match="missing.png"):
        train(dict(record, pan_seg_file_name=str(tmp_path / "missing.png")))

    test = PanopticDetrDatasetMapper(is_train=False, augmentations=[T.ResizeShortestEdge(32, 1000)])
    out = test(dict(record, pan_seg_file_name=str(tmp_path / "missing.png")))  # the PNG is not read
    assert "instances" not in out and tuple(out["image"].shape) == (3, 32, 48)
    assert (out["height"], out["width"], out["image_id"]) == (16, 24, 7)


def test_yaml_route():
    cfg = get_cfg()
    add_updetr_config(cfg)
    cfg.INPUT.DATASET_MAPPER = "PanopticDetrDatasetMapper"
    cfg.INPUT.CROP.ENABLED = True
    cfg.INPUT.CROP.TYPE = "absolute_range"
    cfg.INPUT.CROP.SIZE = (384, 600)
    cfg.INPUT.MIN_SIZE_TEST = 123
    train = build_dataset_mapper(cfg, True)
    assert isinstance(train, PanopticDetrDatasetMapper) and train.is_train
    assert any(isinstance(a, RandomChoiceAugmentation) for a in train.augmentations.augs)
    test = build_dataset_mapper(cfg, False)
    (resize,) = test.augmentations.augs
    assert isinstance(resize, T.ResizeShortestEdge) and resize.short_edge_length == (123, 123)
    assert not test.is_train and test.image_format == cfg.INPUT.FORMAT
