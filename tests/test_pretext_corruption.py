"""Encoder pretexts: patch geometry, the MIM / jigsaw corruptions and PretextDatasetMapper
(output layout, fill colours, RNG isolation from the detection view, seeding, the task
argument)."""
import math
import random

import numpy as np
import pytest
import torch
from PIL import Image

import updetr_d2  # first: it makes Detectron2 v0.6 work here before detectron2 is used
from detectron2.structures import BoxMode
from updetr_d2.data.mappers import build_dataset_mapper
from updetr_d2.methods.pretext.corruption import corrupt
from updetr_d2.methods.pretext.geometry import patch_grid, patchify, unpatchify
from updetr_d2.methods.pretext.mapper import IMAGENET_CONSTANTS, PretextDatasetMapper, mim_fill_colour

FILL = (1.5, -2.0, 7.0)


def rand_image(c, h, w, seed=0):
    return torch.rand(c, h, w, generator=torch.Generator().manual_seed(seed)) * 255


def chosen(seed, n, ratio):
    """The subset S that ``corrupt`` draws from ``default_rng(seed)``."""
    return np.random.default_rng(seed).choice(n, size=math.floor(ratio * n), replace=False)


# ----------------------------------------------------------------------------- geometry
def test_patchify_roundtrip_and_token_layout():
    p, (h, w) = 4, (3, 5)
    image = rand_image(3, h * p, w * p)
    tokens = patchify(image, p)
    assert tokens.shape == (h * w, p * p * 3)
    assert torch.equal(unpatchify(tokens, p, (h, w), 3), image)
    for n in range(h * w):
        r, c = p * (n // w), p * (n % w)
        block = image[:, r:r + p, c:c + p].permute(1, 2, 0).reshape(-1)
        assert torch.equal(tokens[n], block)
    assert patch_grid(512, 512, 32) == (16, 16)


# ----------------------------------------------------------------------------- corruption
@pytest.mark.parametrize("ratio", [0.0, 0.3, 0.5, 1.0])
def test_mim_masks_exactly_the_chosen_patches(ratio):
    p, (h, w) = 4, (4, 6)
    image = rand_image(3, h * p, w * p)
    before = image.clone()
    view = corrupt(image, "mim", ratio, p, FILL, np.random.default_rng(5))
    assert torch.equal(image, before)  # the input is left alone
    assert view.image.dtype == torch.float32 and view.image.shape == image.shape
    assert torch.equal(view.source.flatten(), torch.arange(h * w))
    k = math.floor(ratio * h * w)
    masked = torch.zeros(h * w, dtype=torch.bool)
    masked[torch.as_tensor(chosen(5, h * w, ratio), dtype=torch.long)] = True
    assert view.transformed.shape == (h, w) and torch.equal(view.transformed.flatten(), masked)
    assert int(masked.sum()) == k
    t_in, t_out = patchify(image, p), patchify(view.image, p)
    assert torch.equal(t_out[~masked], t_in[~masked])  # byte-identical
    assert torch.equal(t_out[masked].reshape(k, p * p, 3), torch.tensor(FILL).expand(k, p * p, 3))
    if ratio == 0:
        assert torch.equal(view.image, image) and not view.transformed.any()


@pytest.mark.parametrize("ratio", [0.25, 0.5, 1.0])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_jigsaw_is_a_permutation_within_the_chosen_patches(ratio, seed):
    p, (h, w) = 2, (4, 6)
    n = h * w
    image = rand_image(3, h * p, w * p, seed)
    view = corrupt(image, "jigsaw", ratio, p, FILL, np.random.default_rng(seed))
    source = view.source.flatten()
    t_in, t_out = patchify(image, p), patchify(view.image, p)
    assert torch.equal(t_out, t_in[source])
    inverse = torch.empty_like(source)
    inverse[source] = torch.arange(n)
    assert torch.equal(t_out[inverse], t_in)  # un-shuffling restores the original
    assert sorted(map(tuple, t_out.tolist())) == sorted(map(tuple, t_in.tolist()))
    s = torch.as_tensor(chosen(seed, n, ratio), dtype=torch.long)
    assert torch.equal(source[s.sort().values], s)
    outside = torch.ones(n, dtype=torch.bool)
    outside[s] = False
    assert torch.equal(source[outside], torch.arange(n)[outside])
    assert torch.equal(t_out[outside], t_in[outside])
    fixed = int((source[s] == s).sum())
    assert int(view.transformed.sum()) == len(s) - fixed
    assert torch.equal(view.transformed.flatten(), source != torch.arange(n))


@pytest.mark.parametrize("kind", ["none", "mim", "jigsaw"])
def test_tiny_grid_and_full_ratio(kind):
    image = rand_image(3, 8, 8)
    view = corrupt(image, kind, 1.0, 8, FILL, np.random.default_rng(0))
    assert view.source.shape == (1, 1) and int(view.source) == 0 and view.transformed.shape == (1, 1)
    assert bool(view.transformed) == (kind == "mim")
    if kind != "mim":
        assert torch.equal(view.image, image) and view.image.data_ptr() != image.data_ptr()


def test_bad_arguments_raise():
    image, rng = rand_image(3, 8, 8), np.random.default_rng(0)
    with pytest.raises(ValueError, match="corruption"):
        corrupt(image, "rotate", 0.5, 4, FILL, rng)
    for ratio in (-0.1, 1.5, True):
        with pytest.raises(ValueError, match="ratio"):
            corrupt(image, "mim", ratio, 4, FILL, rng)
    with pytest.raises(ValueError, match="whole number"):
        corrupt(rand_image(3, 8, 10), "mim", 0.5, 4, FILL, rng)
    with pytest.raises(ValueError, match="fill"):
        corrupt(image, "mim", 0.5, 4, (0.0,), rng)


# ----------------------------------------------------------------------------- mapper
def pretext_cfg(task="jigsaw_continuous", base="DatasetMapper", **pretext):
    opts = ["MODEL.DETR.PLUGINS", '["EncoderPretext"]', "INPUT.DATASET_MAPPER", "PretextDatasetMapper",
            "MODEL.PRETEXT.TASK", task, "MODEL.PRETEXT.BASE_MAPPER", base, "MODEL.PRETEXT.PATCH_SIZE", 16,
            "INPUT.FORMAT", "RGB", "INPUT.MIN_SIZE_TEST", 0, "INPUT.MIN_SIZE_TRAIN", (96, 128),
            "INPUT.MAX_SIZE_TRAIN", 200, "INPUT.CROP.ENABLED", True, "INPUT.CROP.TYPE", "absolute_range",
            "INPUT.CROP.SIZE", (60, 90),
            "INPUT.DETR_CROP.PRE_RESIZE", (100,)]
    for key, value in pretext.items():
        opts += [f"MODEL.PRETEXT.{key}", value]
    return updetr_d2.config.load_yaml_config("", opts)


def write_record(tmp_path, h, w, name="img.png", seed=0):
    array = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    path = str(tmp_path / name)
    Image.fromarray(array).save(path)
    boxes = [(10, 20, 40, 50), (w // 2, h // 3, w // 4, h // 4)]
    return {"file_name": path, "image_id": seed, "height": h, "width": w,
            "annotations": [{"bbox": list(b), "bbox_mode": BoxMode.XYWH_ABS, "category_id": 1, "iscrowd": 0}
                            for b in boxes]}


def test_mapper_output_on_non_square_image(tmp_path):
    cfg = pretext_cfg()
    rec = write_record(tmp_path, 203, 331)
    mapper = build_dataset_mapper(cfg, is_train=False)
    assert isinstance(mapper, PretextDatasetMapper) and mapper.kind == "jigsaw"
    out = mapper(dict(rec))
    base = build_dataset_mapper(pretext_cfg(), is_train=False).base_mapper(dict(rec))
    assert torch.equal(out["image"], base["image"]) and out["image"].dtype == torch.uint8
    pre = out["pretext"]
    assert pre["image"].shape == (3, 192, 320) and pre["image"].dtype == torch.float32
    assert pre["source"].shape == (12, 20) and pre["transformed"].shape == (12, 20)
    restored = patchify(pre["image"], 16)[pre["source"].flatten().argsort()]
    assert torch.equal(unpatchify(restored, 16, (12, 20)), base["image"][:, :192, :320].float())


def test_mapper_leaves_the_global_rngs_alone(tmp_path):
    records = [write_record(tmp_path, 150 + 7 * i, 180 - 9 * i, f"{i}.png", i) for i in range(6)]

    def run(mapper):
        np.random.seed(0), torch.manual_seed(0), random.seed(0)
        outs = [mapper(dict(r)) for r in records]
        return outs, np.random.get_state(), torch.rand(1), random.random()

    cfg = pretext_cfg("mim_continuous", "DetrDatasetMapper")
    alone = run(build_dataset_mapper(cfg, is_train=True).base_mapper)
    mapper = build_dataset_mapper(cfg, is_train=True)
    both = run(mapper)
    (_, keys_a, *rest_a), (_, keys_b, *rest_b) = alone[1], both[1]
    assert np.array_equal(keys_a, keys_b) and rest_a == rest_b  # numpy's position too
    assert torch.equal(alone[2], both[2]) and alone[3] == both[3]
    for a, b in zip(alone[0], both[0]):
        assert torch.equal(a["image"], b["image"])
        assert a["instances"].image_size == b["instances"].image_size
        assert torch.equal(a["instances"].gt_boxes.tensor, b["instances"].gt_boxes.tensor)
        assert torch.equal(a["instances"].gt_classes, b["instances"].gt_classes)
        assert b["pretext"]["transformed"].any()
    assert len({tuple(o["image"].shape) for o in alone[0]}) > 1  # the augmentation did vary


@pytest.mark.parametrize("fmt", ["RGB", "BGR"])
def test_imagenet_constants_fill_normalises_to_the_originals(tmp_path, fmt):
    cfg = pretext_cfg("mim_continuous", MIM_FILL="imagenet_constants", RATIO=1.0)
    cfg.INPUT.FORMAT = fmt
    mean, std = [123.675, 116.28, 103.53], [58.395, 57.12, 57.375]  # R, G, B
    order = slice(None) if fmt == "RGB" else slice(None, None, -1)  # of the channels
    cfg.MODEL.PIXEL_MEAN, cfg.MODEL.PIXEL_STD = mean[order], std[order]
    out = build_dataset_mapper(cfg, is_train=False)(write_record(tmp_path, 40, 50))
    image = out["pretext"]["image"]
    assert image.shape == (3, 32, 48) and out["pretext"]["transformed"].all()
    normalised = (image - torch.tensor(cfg.MODEL.PIXEL_MEAN)[:, None, None]) / torch.tensor(
        cfg.MODEL.PIXEL_STD)[:, None, None]
    expected = torch.tensor(IMAGENET_CONSTANTS[order])[:, None, None].expand_as(image)
    assert torch.allclose(normalised, expected, atol=1e-5)
    # "mean" is exactly 0 after normalisation.
    cfg.MODEL.PRETEXT.MIM_FILL = "mean"
    assert PretextDatasetMapper(cfg, is_train=False).fill == tuple(cfg.MODEL.PIXEL_MEAN)


def test_image_smaller_than_a_patch_raises_naming_the_file(tmp_path):
    rec = write_record(tmp_path, 12, 40, "tiny.png")
    with pytest.raises(ValueError, match=r"tiny\.png.*12x40.*16-px"):
        build_dataset_mapper(pretext_cfg(), is_train=False)(rec)


def test_bad_config_raises():
    with pytest.raises(ValueError, match="MODEL.PRETEXT.BASE_MAPPER.*DetrDatasetMapper"):
        PretextDatasetMapper(pretext_cfg(base="NoSuchMapper"), is_train=False)
    with pytest.raises(ValueError, match="MODEL.PRETEXT.TASK"):
        PretextDatasetMapper(pretext_cfg(task="rotation"), is_train=False)


def test_seeded_mapper_repeats_a_records_corruption(tmp_path):
    base = build_dataset_mapper(pretext_cfg(), is_train=False).base_mapper
    recs = [write_record(tmp_path, 64, 96, f"{i}.png", i) for i in range(2)]

    def sources(mapper, rec):
        return mapper(dict(rec))["pretext"]["source"]

    seeded = PretextDatasetMapper(base, task="jigsaw_continuous", ratio=0.5, patch_size=16, fill=FILL, seed=3)
    assert torch.equal(sources(seeded, recs[0]), sources(seeded, recs[0]))
    assert not torch.equal(sources(seeded, recs[0]), sources(seeded, recs[1]))
    unseeded = PretextDatasetMapper(base, task="jigsaw_continuous", ratio=0.5, patch_size=16, fill=FILL)
    assert not torch.equal(sources(unseeded, recs[0]), sources(unseeded, recs[0]))


@pytest.mark.parametrize("task,kind", [("reconstruction", "none"), ("mim_continuous", "mim"), ("mim_discrete", "mim"),
                                       ("jigsaw_continuous", "jigsaw"), ("jigsaw_discrete", "jigsaw")])
def test_mapper_takes_the_task_and_derives_the_corruption(task, kind):
    mapper = PretextDatasetMapper(lambda r: r, task=task, ratio=0.5, patch_size=16, fill=FILL)
    assert mapper.task == task and mapper.kind == kind and task in repr(mapper)


def test_unknown_task_names_it_and_the_choices():
    with pytest.raises(ValueError, match=r"'mim'.*jigsaw_discrete.*mim_continuous.*reconstruction"):
        PretextDatasetMapper(lambda r: r, task="mim", ratio=0.5, patch_size=16, fill=FILL)


def test_fill_colour_helper_matches_the_yaml_route():
    cfg = pretext_cfg("mim_continuous", MIM_FILL="imagenet_constants")
    args = (cfg.MODEL.PIXEL_MEAN, cfg.MODEL.PIXEL_STD, cfg.INPUT.FORMAT)
    assert mim_fill_colour("imagenet_constants", *args) == PretextDatasetMapper(cfg, is_train=False).fill
    assert mim_fill_colour("mean", *args) == tuple(cfg.MODEL.PIXEL_MEAN)
    with pytest.raises(ValueError, match="'grey'.*MIM_FILL"):
        mim_fill_colour("grey", *args)
    with pytest.raises(ValueError, match="RGB or BGR"):
        mim_fill_colour("imagenet_constants", cfg.MODEL.PIXEL_MEAN, cfg.MODEL.PIXEL_STD, "YUV-BT.601")
