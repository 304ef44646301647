"""QueryPatchDatasetMapper: UP-DETR's random query patches (boxes, crops, augmentation,
seeding, odd images, config). The box sampler alone: test_patch_sampling.py; the patch
augmentation alone: test_patch_augmentation.py."""
import math

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

import updetr_d2  # noqa: F401
from detectron2.config import CfgNode as CN
from detectron2.config import get_cfg
from detectron2.data import build_detection_train_loader
from updetr_d2 import add_updetr_config
from updetr_d2.data.mappers import MAPPER_REGISTRY, build_dataset_mapper
from updetr_d2.methods.updetr import (
    UPDETR_MAX_SIZE,
    UPDETR_MIN_SIZES,
    QueryPatchDatasetMapper,
    crop_and_resize_patches,
)

# ----------------------------------------------------------------------------- helpers
QP_DEFAULTS = dict(NUM_PATCHES=10, SIZE=128, MIN_SIDE=8, MAX_FRACTION=1.0, ASPECT_RANGE=(), AUGMENT=True, SEED=-1)


def qp_cfg(**qp_overrides):
    """A config with the mapper's keys, added here when the defaults lack them."""
    cfg = get_cfg()
    add_updetr_config(cfg)
    if "QUERY_PATCH" not in cfg.INPUT:
        cfg.INPUT.QUERY_PATCH = CN()
    for key, value in QP_DEFAULTS.items():
        if key not in cfg.INPUT.QUERY_PATCH:
            setattr(cfg.INPUT.QUERY_PATCH, key, value)
    for key, value in qp_overrides.items():
        setattr(cfg.INPUT.QUERY_PATCH, key, value)
    cfg.INPUT.DATASET_MAPPER = "QueryPatchDatasetMapper"
    cfg.INPUT.FORMAT = "RGB"
    return cfg


def save(tmp_path, array, name="img.png", mode=None):
    path = tmp_path / name
    Image.fromarray(array, mode=mode).save(path)
    return str(path)


def record(path, array=None, image_id=1):
    rec = {"file_name": path, "image_id": image_id}
    if array is not None:
        rec["height"], rec["width"] = array.shape[:2]
    return rec


def colour_image(h, w, seed=0):
    """Noise in which every pixel is clearly coloured (channels 60 apart, none saturated)."""
    rng = np.random.default_rng(seed)
    base = rng.integers(40, 80, (h, w, 1))
    order = np.argsort(rng.random((h, w, 3)), axis=2)  # which channel gets which offset
    return (base + 60 * order).astype(np.uint8)


def smooth_image(h, w):
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    chans = [128 + 90 * np.sin(x / 11.0) * np.cos(y / 13.0),
             128 + 90 * np.cos((x + y) / 17.0),
             128 + 90 * np.sin((x - 2 * y) / 23.0)]
    return np.clip(np.rint(np.stack(chans, -1)), 0, 255).astype(np.uint8)


def mapper(**kwargs):
    kwargs.setdefault("patch_size", 32)
    kwargs.setdefault("min_sizes", (48, 80))
    kwargs.setdefault("max_size", 1000)
    return QueryPatchDatasetMapper(**kwargs)


def original_boxes(out):
    """The returned gt_boxes moved back to original-image pixels (the resize only scales)."""
    _, new_h, new_w = out["image"].shape
    scale = np.array([new_w / out["width"], new_h / out["height"]] * 2)
    boxes = out["instances"].gt_boxes.tensor.double().numpy() / scale
    np.testing.assert_allclose(boxes, np.rint(boxes), atol=1e-3)
    return np.rint(boxes).astype(np.int64)


# ----------------------------------------------------------------------------- boxes
def test_output_format_and_boxes_inside(tmp_path):
    array = colour_image(61, 93)
    path = save(tmp_path, array)
    m = mapper(num_patches=7, min_side=8)
    np.random.seed(0)
    shapes = set()
    labelled = dict(record(path, array), annotations=[{"bbox": [0, 0, 5, 5], "bbox_mode": 0, "category_id": 3}])
    for _ in range(60):
        out = m(labelled)  # labels are ignored
        assert set(out) == {"file_name", "image_id", "height", "width", "image", "instances", "patches"}
        assert (out["file_name"], out["image_id"], out["height"], out["width"]) == (path, 1, 61, 93)
        image, inst = out["image"], out["instances"]
        assert image.dtype == torch.uint8 and image.shape[0] == 3
        shapes.add(tuple(image.shape[1:]))
        assert inst.image_size == tuple(image.shape[1:])
        assert len(inst) == 7 and inst.gt_classes.dtype == torch.int64
        assert (inst.gt_classes == 0).all()
        assert out["patches"].shape == (7, 3, 32, 32) and out["patches"].dtype == torch.uint8
        b = inst.gt_boxes.tensor
        h, w = image.shape[1:]
        assert (b[:, 0] >= 0).all() and (b[:, 1] >= 0).all()
        assert (b[:, 2] <= w).all() and (b[:, 3] <= h).all()
        assert (b[:, 2] > b[:, 0]).all() and (b[:, 3] > b[:, 1]).all()
        ob = original_boxes(out)
        assert (ob[:, 2] - ob[:, 0] >= 8).all() and (ob[:, 3] - ob[:, 1] >= 8).all()
        # the default sides are the original's U_int[8, side - 8]
        assert (ob[:, 2] - ob[:, 0] <= 93 - 8).all() and (ob[:, 3] - ob[:, 1] <= 61 - 8).all()
        assert (ob[:, :2] >= 0).all() and (ob[:, 2] <= 93).all() and (ob[:, 3] <= 61).all()
    assert shapes == {(48, 73), (80, 122)}  # both scales of the multi-scale resize


# ----------------------------------------------------------------------------- crops
def test_patches_are_the_resized_crops(tmp_path):
    """Without augmentation each patch is cv2.resize of the original-image crop at its box
    (boxes recovered from the returned resized-image boxes)."""
    array = np.random.default_rng(3).integers(0, 256, (60, 90, 3), dtype=np.uint8)  # noise: content = position
    path = save(tmp_path, array)
    m = mapper(patch_augment=False, min_sizes=(45, 120))
    np.random.seed(1)
    for _ in range(20):
        out = m(record(path, array))
        patches = out["patches"].permute(0, 2, 3, 1).numpy()
        for (x0, y0, x1, y1), patch in zip(original_boxes(out), patches):
            expected = cv2.resize(array[y0:y1, x0:x1], (32, 32), interpolation=cv2.INTER_LINEAR)
            np.testing.assert_array_equal(patch, expected)


def test_resized_image_at_box_matches_patch(tmp_path):
    """The resized image cropped at the returned box looks like the patch; the same crop
    shifted a little does not."""
    array = smooth_image(150, 200)
    path = save(tmp_path, array)
    m = mapper(patch_augment=False, min_sizes=(100, 225), min_side=40, max_fraction=0.6, num_patches=5)
    np.random.seed(2)
    good, shifted = [], []
    for _ in range(10):
        out = m(record(path, array))
        image = out["image"].permute(1, 2, 0).numpy()
        patches = out["patches"].permute(0, 2, 3, 1).numpy().astype(np.float64)
        for box, patch in zip(out["instances"].gt_boxes.tensor.numpy(), patches):
            x0, y0, x1, y1 = np.rint(box).astype(int)
            crop = cv2.resize(image[y0:y1, x0:x1], (32, 32), interpolation=cv2.INTER_LINEAR)
            good.append(np.abs(crop - patch).mean())
            dx = max(3, (x1 - x0) // 4)
            sx0 = x0 + dx if x1 + dx <= image.shape[1] else x0 - dx
            moved = cv2.resize(image[y0:y1, sx0:sx0 + x1 - x0], (32, 32), interpolation=cv2.INTER_LINEAR)
            shifted.append(np.abs(moved - patch).mean())
    assert max(good) < 4.0, max(good)
    assert np.median(shifted) > 4 * np.median(good) + 5


# ----------------------------------------------------------------------------- odd images
@pytest.mark.parametrize("h, w", [(5, 7), (1, 1)])
def test_tiny_images(tmp_path, h, w):
    array = colour_image(h, w)
    path = save(tmp_path, array)
    out = mapper(min_sizes=(20,))(record(path, array))
    assert out["patches"].shape == (10, 3, 32, 32)
    assert out["image"].shape[0] == 3 and min(out["image"].shape[1:]) == 20
    assert (original_boxes(out) == [0, 0, w, h]).all()  # sides < min_side span the image
    out = mapper(min_sizes=(20,), patch_augment=False)(record(path, array))
    patches = out["patches"].permute(0, 2, 3, 1).numpy()
    np.testing.assert_array_equal(patches, np.broadcast_to(cv2.resize(array, (32, 32)), patches.shape))


def test_grayscale_png(tmp_path):
    """Mode "L" files give 3-channel image and patches; colour jitter keeps gray patches
    gray (all patches come out with equal channels)."""
    array = smooth_image(40, 50)[..., 0]
    path = save(tmp_path, array, mode="L")
    assert Image.open(path).mode == "L"
    np.random.seed(0)
    for fmt in ("RGB", "BGR"):
        out = mapper(image_format=fmt)(record(path, array))
        assert out["image"].shape[0] == 3 and out["patches"].shape[1] == 3
        p = out["patches"]
        assert (p[:, 0] == p[:, 1]).all() and (p[:, 1] == p[:, 2]).all()


def test_unreadable_files_named(tmp_path):
    garbage = tmp_path / "garbage.jpg"
    garbage.write_bytes(np.random.default_rng(0).integers(0, 256, 500, dtype=np.uint8).tobytes())
    full = tmp_path / "truncated.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(full)
    full.write_bytes(full.read_bytes()[:2000])
    m = mapper()
    for path in (garbage, full, tmp_path / "missing.png"):
        with pytest.raises(ValueError, match=str(path).replace(".", r"\.")):
            m({"file_name": str(path), "image_id": 0})


# ----------------------------------------------------------------------------- seeds
def test_fixed_seed_is_deterministic(tmp_path):
    arrays = [colour_image(50 + 7 * i, 70, seed=i) for i in range(3)]
    recs = [record(save(tmp_path, a, f"{i}.png"), a, i) for i, a in enumerate(arrays)]

    def run(m, order):
        return {i: m(recs[i]) for i in order}

    state = np.random.get_state()
    a = run(mapper(seed=7), [0, 1, 2])
    b = run(mapper(seed=7), [2, 0, 1, 1])  # another instance, another order, a repeat
    after = np.random.get_state()
    assert all(np.array_equal(x, y) for x, y in zip(state[1:3], after[1:3]))  # global RNG untouched
    for i in range(3):
        assert torch.equal(a[i]["patches"], b[i]["patches"])
        assert torch.equal(a[i]["image"], b[i]["image"])
        assert torch.equal(a[i]["instances"].gt_boxes.tensor, b[i]["instances"].gt_boxes.tensor)
    assert not torch.equal(a[0]["instances"].gt_boxes.tensor, a[1]["instances"].gt_boxes.tensor[:, :])
    other = mapper(seed=8)(recs[0])
    assert not torch.equal(other["instances"].gt_boxes.tensor, a[0]["instances"].gt_boxes.tensor)
    # Boxes and the resize do not depend on whether the patches are augmented.
    plain = mapper(seed=7, patch_augment=False)(recs[0])
    assert torch.equal(plain["instances"].gt_boxes.tensor, a[0]["instances"].gt_boxes.tensor)
    assert torch.equal(plain["image"], a[0]["image"])


def test_no_seed_draws_anew(tmp_path):
    array = colour_image(50, 70)
    rec = record(save(tmp_path, array), array)
    m = mapper()
    outs = [m(rec) for _ in range(3)]
    for x, y in [(0, 1), (1, 2), (0, 2)]:
        assert not torch.equal(outs[x]["patches"], outs[y]["patches"])
        assert not torch.equal(outs[x]["instances"].gt_boxes.tensor, outs[y]["instances"].gt_boxes.tensor)
    # ... from numpy's global RNG, which Detectron2 seeds per worker.
    np.random.seed(5)
    first = m(rec)
    np.random.seed(5)
    again = m(rec)
    assert torch.equal(first["patches"], again["patches"])
    assert torch.equal(first["instances"].gt_boxes.tensor, again["instances"].gt_boxes.tensor)


# ----------------------------------------------------------------------------- aspect
@pytest.mark.parametrize("aspect", [(0.5, 2.0), (1.0, 1.0), (1.5, 3.0)])
def test_aspect_range_respected(tmp_path, aspect):
    array = colour_image(80, 100)
    path = save(tmp_path, array)
    m = mapper(aspect_range=aspect, num_patches=10, patch_augment=False)
    np.random.seed(0)
    ratios = []
    for _ in range(30):
        ob = original_boxes(m(record(path, array)))
        bw, bh = ob[:, 2] - ob[:, 0], ob[:, 3] - ob[:, 1]
        assert (bw >= 8).all() and (bh >= 8).all()
        ratios.append(bw / bh)
    ratios = np.concatenate(ratios)
    assert (ratios >= aspect[0] - 1e-9).all() and (ratios <= aspect[1] + 1e-9).all()
    if aspect[0] < aspect[1]:
        assert ratios.max() - ratios.min() > 0.5 * (aspect[1] - aspect[0])  # the range is used


# ----------------------------------------------------------------------------- options
@pytest.mark.parametrize("option, value", [
    ("num_patches", 0), ("num_patches", 2.5), ("patch_size", 0), ("min_side", 0),
    ("max_fraction", 0.0), ("max_fraction", 1.5), ("max_fraction", -0.1),
    ("aspect_range", (2.0, 1.0)), ("aspect_range", (0.0, 1.0)), ("aspect_range", (1.0,)),
    ("aspect_range", (1.0, float("inf"))), ("aspect_range", "wide"),
    ("image_format", "L"), ("seed", -2),
])
def test_invalid_options(option, value):
    with pytest.raises(ValueError, match=option):
        QueryPatchDatasetMapper(**{option: value})


def test_from_config_and_registry(tmp_path):
    assert MAPPER_REGISTRY.get("QueryPatchDatasetMapper") is QueryPatchDatasetMapper
    cfg = qp_cfg()
    cfg.INPUT.MIN_SIZE_TRAIN = UPDETR_MIN_SIZES
    cfg.INPUT.MAX_SIZE_TRAIN = UPDETR_MAX_SIZE
    m = build_dataset_mapper(cfg, is_train=True)
    assert isinstance(m, QueryPatchDatasetMapper)
    assert (m.num_patches, m.patch_size, m.min_side, m.max_fraction) == (10, 128, 8, 1.0)
    assert m.aspect_range is None and m.seed is None and m.patch_augment and m.image_format == "RGB"
    resize = m.augmentations.augs[0]
    assert tuple(resize.short_edge_length) == UPDETR_MIN_SIZES and resize.max_size == UPDETR_MAX_SIZE

    cfg = qp_cfg(SIZE=16, MIN_SIDE=4, MAX_FRACTION=0.5, ASPECT_RANGE=[0.5, 2], AUGMENT=False, SEED=3)
    cfg.INPUT.QUERY_PATCH.NUM_PATCHES = 4
    cfg.INPUT.MIN_SIZE_TEST = 50
    cfg.INPUT.MAX_SIZE_TEST = 70
    m = build_dataset_mapper(cfg, is_train=False)
    assert (m.num_patches, m.patch_size, m.min_side, m.max_fraction) == (4, 16, 4, 0.5)
    assert m.aspect_range == (0.5, 2.0) and m.seed == 3 and not m.patch_augment
    array = colour_image(40, 100)
    out = m(record(save(tmp_path, array), array))
    assert tuple(out["image"].shape[1:]) == (28, 70)  # short side 50, capped by max size 70
    assert out["patches"].shape == (4, 3, 16, 16)
    with pytest.raises(ValueError, match="max_fraction"):
        build_dataset_mapper(qp_cfg(MAX_FRACTION=2.0), is_train=True)


def test_works_in_a_detectron2_loader(tmp_path):
    """A batch through Detectron2's train loader (no timing: see benchmarks/)."""
    arrays = [colour_image(40 + 10 * i, 60 + 5 * i, seed=i) for i in range(6)]
    arrays.append(smooth_image(30, 30)[..., 1])  # a grayscale file too
    recs = [record(save(tmp_path, a, f"{i}.png", mode="L" if a.ndim == 2 else None), a, i)
            for i, a in enumerate(arrays)]
    cfg = qp_cfg(SIZE=24)
    cfg.INPUT.MIN_SIZE_TRAIN = (32, 48)
    cfg.INPUT.MAX_SIZE_TRAIN = 100
    m = build_dataset_mapper(cfg, is_train=True)
    loader = build_detection_train_loader(dataset=recs, mapper=m, total_batch_size=4, num_workers=0)
    batch = next(iter(loader))
    assert len(batch) == 4
    for item in batch:
        assert item["patches"].shape == (10, 3, 24, 24)
        assert len(item["instances"]) == 10
        assert min(item["image"].shape[1:]) in (32, 48)


# ----------------------------------------------------------------------------- augmentation
def _grayish(patches):
    return (patches[:, 0] == patches[:, 1]).all(dim=(1, 2)) & (patches[:, 1] == patches[:, 2]).all(dim=(1, 2))


def test_augmentation_statistics(tmp_path):
    """On a colour image, a patch comes out gray only through RandomGrayscale: the jitter
    scales the channel spread by at least 0.6^3 and never to 0 (saturation >= 0.6; hue
    keeps saturation), blur keeps colour. So the expected gray fraction is 0.2 exactly.
    A patch comes out untouched only with no jitter, no grayscale and a blur that is
    absent or (sigma near 0.1) has no effect: 0.2 * 0.8 * (0.5 + 0.5 * small) ~ 0.08-0.09."""
    array = colour_image(64, 80)
    path = save(tmp_path, array)
    aug, plain = mapper(patch_size=24), mapper(patch_size=24, patch_augment=False)
    gray, untouched, total = 0, 0, 0
    for i in range(40):  # 400 patches
        rec = dict(record(path, array), file_name=path)
        np.random.seed(i)
        a = aug(rec)
        np.random.seed(i)
        p = plain(rec)
        # the same boxes either way, and unaugmented patches are the plain crops
        assert torch.equal(a["instances"].gt_boxes.tensor, p["instances"].gt_boxes.tensor)
        ob = original_boxes(p)
        crops = crop_and_resize_patches(array, ob, 24)
        assert torch.equal(p["patches"], torch.from_numpy(crops).permute(0, 3, 1, 2))
        assert not _grayish(p["patches"]).any()
        gray += int(_grayish(a["patches"]).sum())
        untouched += int((a["patches"] == p["patches"]).flatten(1).all(1).sum())
        total += len(a["patches"])
    sd = math.sqrt(0.2 * 0.8 / total)
    assert abs(gray / total - 0.2) < 4 * sd, gray / total
    assert 0.08 - 4 * 0.014 < untouched / total < 0.09 + 4 * 0.014, untouched / total
