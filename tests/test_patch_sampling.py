"""UP-DETR's patch box sampler (methods/updetr/patch_sampling.py): side ranges (by
default the original's U_int[8, side - 8]), positions, small images, aspect ranges."""
import math

import numpy as np
import pytest

import updetr_d2  # noqa: F401
from detectron2.config import get_cfg
from updetr_d2 import add_updetr_config
from updetr_d2.methods.updetr import QueryPatchDatasetMapper, sample_patch_boxes


def sides(boxes):
    return (boxes[:, 2] - boxes[:, 0]).astype(int), (boxes[:, 3] - boxes[:, 1]).astype(int)


def draw(h, w, n=20000, seed=0, **kwargs):
    return sample_patch_boxes(h, w, n, np.random.default_rng(seed), **kwargs)


# ----------------------------------------------------------------------------- the original's range
@pytest.mark.parametrize("h, w", [(17, 17), (30, 40), (61, 93), (480, 640)])
def test_default_sides_are_the_originals_range(h, w):
    """The original (datasets/selfdet.py, get_random_patch_from_img) draws each side from
    U_int[8, side - 8]: the defaults give exactly that range, both ends included, so a
    patch is never the whole image side."""
    boxes = draw(h, w)
    bw, bh = sides(boxes)
    assert bw.min() == 8 and bw.max() == w - 8 and bh.min() == 8 and bh.max() == h - 8
    if w - 8 - 8 < 40:  # small ranges: every size is drawn
        assert set(bw) == set(range(8, w - 8 + 1)) and set(bh) == set(range(8, h - 8 + 1))
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= w).all() and (boxes[:, 3] <= h).all()


def test_default_sides_are_uniform():
    bw, bh = sides(draw(30, 40, n=40000))
    for values, hi in ((bw, 32), (bh, 22)):
        counts = np.bincount(values, minlength=hi + 1)[8:]
        expected = len(values) / (hi - 8 + 1)
        assert len(counts) == hi - 8 + 1 and np.abs(counts - expected).max() < 5 * math.sqrt(expected)


def test_mapper_and_config_defaults_are_the_originals():
    cfg = get_cfg()
    add_updetr_config(cfg)
    assert (cfg.INPUT.QUERY_PATCH.MIN_SIDE, cfg.INPUT.QUERY_PATCH.MAX_FRACTION) == (8, 1.0)
    m = QueryPatchDatasetMapper(patch_augment=False)
    assert (m.min_side, m.max_fraction) == (8, 1.0)
    image = np.zeros((50, 70, 3), np.uint8)
    boxes = np.concatenate([m.make_patches(image, np.random.default_rng(i))[0] for i in range(300)])
    bw, bh = sides(boxes)
    assert bw.min() == 8 and bw.max() == 62 and bh.min() == 8 and bh.max() == 42


def test_max_fraction_only_lowers_the_upper_bound():
    bw, bh = sides(draw(100, 200, max_fraction=0.5))
    assert (bw.min(), bw.max(), bh.min(), bh.max()) == (8, 100, 8, 50)
    bw, bh = sides(draw(100, 200, max_fraction=0.95))
    assert (bw.max(), bh.max()) == (190, 92)  # 190 < 200 - 8: the fraction; 95 > 100 - 8: the margin
    bw, bh = sides(draw(100, 200, min_side=20))  # the margin follows min_side
    assert (bw.min(), bw.max(), bh.min(), bh.max()) == (20, 180, 20, 80)


@pytest.mark.parametrize("side", [8, 9, 12, 15, 16])
def test_sides_from_min_side_to_twice_it_give_min_side_patches(side):
    """The original skips such images (w <= 16 or h <= 16); here their patch side is 8."""
    bw, bh = sides(draw(side, 40, n=500))
    assert (bh == 8).all() and bw.min() == 8 and bw.max() == 32


# ----------------------------------------------------------------------------- ranges, borders
def test_sampler_ranges_and_border():
    """Sides cover [min_side, floor(max_fraction * side)] when that is below side -
    min_side; positions reach both borders (the original never touches the right/bottom
    one)."""
    rng = np.random.default_rng(0)
    boxes = np.concatenate([sample_patch_boxes(30, 40, 10, rng, min_side=8, max_fraction=0.5)
                            for _ in range(2000)])
    bw, bh = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    assert boxes.dtype == np.float64 and boxes.shape == (20000, 4)
    assert set(bw.astype(int)) == set(range(8, 21)) and set(bh.astype(int)) == set(range(8, 16))
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= 40).all() and (boxes[:, 3] <= 30).all()
    assert (boxes[:, 0] == 0).any() and (boxes[:, 2] == 40).any()
    assert (boxes[:, 1] == 0).any() and (boxes[:, 3] == 30).any()


@pytest.mark.parametrize("h, w", [(5, 7), (1, 1), (3, 40)])
def test_sides_below_min_side_span_the_image(h, w):
    rng = np.random.default_rng(1)
    boxes = np.concatenate([sample_patch_boxes(h, w, 10, rng, min_side=8) for _ in range(200)])
    bw, bh = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    assert (bw >= min(8, w)).all() and (bh >= min(8, h)).all()
    if w < 8:
        assert (bw == w).all()
    if h < 8:
        assert (bh == h).all()
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= w).all() and (boxes[:, 3] <= h).all()


# ----------------------------------------------------------------------------- aspect
def test_aspect_sampling_is_uniform_over_allowed_sizes():
    """Same distribution as rejection sampling: every allowed (w, h) about equally often."""
    rng = np.random.default_rng(0)
    boxes = np.concatenate([sample_patch_boxes(7, 7, 100, rng, min_side=1, aspect_range=(0.5, 2.0))
                            for _ in range(300)])
    sizes = [(int(w), int(h)) for w, h in zip(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])]
    allowed = {(w, h) for w in range(1, 7) for h in range(1, 7) if 0.5 <= w / h <= 2}  # sides 1..7-1
    assert set(sizes) == allowed
    counts = np.array([sizes.count(s) for s in sorted(allowed)])
    expected = len(sizes) / len(allowed)
    assert np.abs(counts - expected).max() < 5 * math.sqrt(expected)


def test_aspect_range_impossible_falls_back_to_closest():
    """A 2 px high image cannot hold a square patch of >= 2 px width... except 2x2; with
    min_side=8 widths are >= 8, so the closest allowed aspect is 8 / 2."""
    rng = np.random.default_rng(0)
    boxes = sample_patch_boxes(2, 100, 10, rng, min_side=8, aspect_range=(0.9, 1.1))
    assert ((boxes[:, 2] - boxes[:, 0]) == 8).all() and ((boxes[:, 3] - boxes[:, 1]) == 2).all()
    assert (boxes[:, 2] <= 100).all() and (boxes[:, 1] == 0).all()
