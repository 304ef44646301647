"""DetrDatasetMapper: DETR's augmentation on Detectron2's mapper, its output format, and
crops that remove every box."""
import numpy as np
import pytest
import torch
from PIL import Image

import updetr_d2  # noqa: F401
from detectron2.config import get_cfg
from detectron2.data import transforms as T
from detectron2.structures import BoxMode
from updetr_d2 import add_updetr_config
from updetr_d2.data.mappers import (
    DetrDatasetMapper,
    RandomChoiceAugmentation,
    build_dataset_mapper,
    detr_train_augmentations,
)


@pytest.fixture
def image_file(tmp_path):
    """A 120x160 RGB image with a bright square whose box we know."""
    array = np.zeros((120, 160, 3), dtype=np.uint8)
    array[20:60, 100:150] = 255
    path = tmp_path / "img.png"
    Image.fromarray(array).save(path)
    return str(path)


def record(path, boxes=((100, 20, 150, 60),)):
    return {
        "file_name": path, "image_id": 1, "height": 120, "width": 160,
        "annotations": [{"bbox": list(b), "bbox_mode": BoxMode.XYXY_ABS, "category_id": 2, "iscrowd": 0}
                        for b in boxes],
    }


def detr_cfg(**input_overrides):
    cfg = get_cfg()
    add_updetr_config(cfg)
    cfg.INPUT.DATASET_MAPPER = "DetrDatasetMapper"
    cfg.INPUT.FORMAT = "RGB"
    cfg.INPUT.MIN_SIZE_TRAIN = (60,)
    cfg.INPUT.MAX_SIZE_TRAIN = 1000
    cfg.INPUT.MIN_SIZE_TEST = 60
    cfg.INPUT.CROP.ENABLED = True
    cfg.INPUT.CROP.TYPE = "absolute_range"
    cfg.INPUT.CROP.SIZE = (30, 50)
    cfg.INPUT.DETR_CROP.PRE_RESIZE = (90,)
    for key, value in input_overrides.items():
        setattr(cfg.INPUT, key, value)
    return cfg


def test_train_output_format(image_file):
    mapper = build_dataset_mapper(detr_cfg(RANDOM_FLIP="none"), is_train=True)
    assert isinstance(mapper, DetrDatasetMapper)
    np.random.seed(0)
    for _ in range(10):
        out = mapper(record(image_file))
        image, inst = out["image"], out["instances"]
        assert image.dtype == torch.uint8 and image.shape[0] == 3
        assert min(image.shape[1:]) == 60 or max(image.shape[1:]) <= 50  # resized, or cropped then resized
        assert inst.image_size == tuple(image.shape[1:])
        assert "annotations" not in out and out["height"] == 120 and out["width"] == 160
        boxes = inst.gt_boxes.tensor
        assert len(inst) <= 1 and (inst.gt_classes == 2).all()
        if len(inst):  # the box follows the bright square
            x0, y0, x1, y1 = boxes[0].round().long().tolist()
            patch = image[:, y0:y1, x0:x1].float()
            assert patch.mean() > 200


def test_uncropped_box_is_scaled_exactly(image_file):
    mapper = build_dataset_mapper(detr_cfg(RANDOM_FLIP="none", CROP=get_cfg().INPUT.CROP), is_train=True)
    out = mapper(record(image_file))
    assert tuple(out["image"].shape[1:]) == (60, 80)
    assert torch.allclose(out["instances"].gt_boxes.tensor, torch.tensor([[50.0, 10.0, 75.0, 30.0]]))


def test_image_without_boxes(image_file):
    mapper = build_dataset_mapper(detr_cfg(), is_train=True)
    out = mapper(record(image_file, boxes=()))
    assert len(out["instances"]) == 0 and out["instances"].gt_boxes.tensor.shape == (0, 4)


def test_crop_that_removes_every_box(image_file):
    """A crop of the black left part of the image leaves no box and no error."""
    mapper = DetrDatasetMapper(
        is_train=True,
        augmentations=[_FixedCrop(0, 0, 60, 60)],
        image_format="RGB",
    )
    out = mapper(record(image_file))
    assert tuple(out["image"].shape[1:]) == (60, 60)
    assert len(out["instances"]) == 0


def test_test_mode_drops_annotations(image_file):
    out = build_dataset_mapper(detr_cfg(), is_train=False)(record(image_file))
    assert "instances" not in out and tuple(out["image"].shape[1:]) == (60, 80)


def test_random_choice_takes_both_branches_with_their_probability():
    augs = detr_train_augmentations((100,), 1000, crop_size=(20, 30), crop_pre_resize=(50,), crop_prob=0.3)
    assert isinstance(augs[0], T.RandomFlip) and isinstance(augs[1], RandomChoiceAugmentation)
    np.random.seed(0)
    image = np.zeros((80, 120, 3), dtype=np.uint8)
    crops = 0
    for _ in range(400):
        aug_input = T.AugInput(image.copy())
        augs[1](aug_input)
        crops += aug_input.image.shape[:2] != (100, 150)  # a crop changes the aspect ratio
    assert 0.22 < crops / 400 < 0.38


def test_random_choice_validates_probabilities():
    with pytest.raises(ValueError, match="probability"):
        RandomChoiceAugmentation([[T.NoOpTransform()], []], probs=[0.5, 0.6])


def test_relative_crop_with_pixel_sizes_is_a_clear_error():
    cfg = detr_cfg()
    cfg.INPUT.CROP.TYPE = "relative_range"
    with pytest.raises(ValueError, match="INPUT.CROP.SIZE"):
        build_dataset_mapper(cfg, is_train=True)


def test_unknown_mapper_name_is_a_clear_error():
    cfg = detr_cfg()
    cfg.INPUT.DATASET_MAPPER = "NoSuchMapper"
    with pytest.raises(KeyError, match="NoSuchMapper.*DetrDatasetMapper"):
        build_dataset_mapper(cfg, is_train=True)


class _FixedCrop(T.Augmentation):
    def __init__(self, x0, y0, w, h):
        super().__init__()
        self._init(locals())

    def get_transform(self, image):
        return T.CropTransform(self.x0, self.y0, self.w, self.h)
