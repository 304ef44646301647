"""SimDETR stage A: semantic region proposals from one feature map, on synthetic images
with an RGB average-pool stand-in for the backbone (CPU, small)."""
import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage

import updetr_d2  # noqa: F401  (compat fixes before detectron2 submodules)
from updetr_d2.methods.simdetr.proposals import (
    ProposalParams, RegionProposals, region_proposals, scale_boxes)

STRIDE = 32
H, W = 320, 448
BACKGROUND = (0.2, 0.2, 0.8)
# (colour, xyxy box): colours differ in RGB direction, since features are L2-normalised.
SQUARES = [
    ((1.0, 0.0, 0.0), (32, 32, 128, 128)),
    ((0.0, 1.0, 0.0), (160, 160, 288, 288)),
    ((0.9, 0.9, 0.1), (320, 64, 384, 128)),
]


def make_image(h=H, w=W, squares=SQUARES):
    img = torch.empty(3, h, w)
    img[:] = torch.tensor(BACKGROUND)[:, None, None]
    for colour, (x0, y0, x1, y1) in squares:
        img[:, y0:y1, x0:x1] = torch.tensor(colour)[:, None, None]
    return img


def features_of(img, stride=STRIDE):
    """Stand-in backbone: average-pool RGB."""
    return F.avg_pool2d(img[None], stride)[0]


def iou_matrix(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / (area_a[:, None] + area_b[None, :] - inter)


@pytest.fixture(scope="module")
def props():
    return region_proposals(features_of(make_image()), STRIDE, (H, W))


def check_tight_and_connected(p, stride, image_size):
    h_img, w_img = image_size
    for box, mask in zip(p.boxes, p.masks):
        rows, cols = np.nonzero(mask)
        expect = np.array([cols.min() * stride, rows.min() * stride,
                           (cols.max() + 1) * stride, (rows.max() + 1) * stride], np.float64)
        expect = np.clip(expect, 0, [w_img, h_img, w_img, h_img])
        np.testing.assert_allclose(box, expect)
        _, n_components = ndimage.label(mask)  # default structure: 4-connectivity
        assert n_components == 1


def test_output_types_and_shapes(props):
    assert isinstance(props, RegionProposals)
    n = len(props.boxes)
    assert n >= 3
    assert props.boxes.dtype == np.float32 and props.boxes.shape == (n, 4)
    assert props.levels.dtype == np.int64 and props.levels.shape == (n,)
    assert props.embeddings.dtype == np.float32 and props.embeddings.shape == (n, 3)
    assert props.masks.dtype == bool and props.masks.shape == (n, H // STRIDE, W // STRIDE)
    assert props.areas.dtype == np.float32 and props.areas.shape == (n,)
    b = props.boxes
    np.testing.assert_allclose(props.areas, (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]))
    assert set(props.levels.tolist()) <= set(ProposalParams().cluster_levels)


def test_squares_recovered(props):
    gt = np.array([box for _, box in SQUARES], np.float32)
    best = iou_matrix(gt, props.boxes).max(1)
    assert (best >= 0.9).all(), best


def test_boxes_inside_and_sized(props):
    p = ProposalParams()
    b = props.boxes
    assert (b[:, 0] >= 0).all() and (b[:, 1] >= 0).all()
    assert (b[:, 2] <= W).all() and (b[:, 3] <= H).all()
    assert (b[:, 2] > b[:, 0]).all() and (b[:, 3] > b[:, 1]).all()
    assert (props.areas >= p.min_area_fraction * H * W).all()
    assert (props.areas <= p.max_image_fraction * H * W).all()
    assert (props.masks.sum((1, 2)) >= p.min_cells).all()


def test_boxes_tight_and_masks_connected(props):
    check_tight_and_connected(props, STRIDE, (H, W))


@pytest.mark.parametrize("max_proposals", [30, 3])
def test_cap_and_dedup(max_proposals):
    params = ProposalParams(max_proposals=max_proposals)
    p = region_proposals(features_of(make_image()), STRIDE, (H, W), params)
    assert 0 < len(p.boxes) <= max_proposals
    iou = iou_matrix(p.boxes, p.boxes)
    np.fill_diagonal(iou, 0)
    assert (iou <= params.dedup_iou).all()


def test_cap_keeps_prefix(props):
    small = region_proposals(features_of(make_image()), STRIDE, (H, W), ProposalParams(max_proposals=3))
    np.testing.assert_array_equal(small.boxes, props.boxes[:3])
    np.testing.assert_array_equal(small.levels, props.levels[:3])


def test_deterministic_and_numpy_input(props):
    feats = features_of(make_image())
    again = region_proposals(feats, STRIDE, (H, W))
    from_numpy = region_proposals(feats.numpy(), STRIDE, (H, W))
    for other in (again, from_numpy):
        for a, b in zip(props, other):
            np.testing.assert_array_equal(a, b)


def test_padding_cells_never_used(props):
    padded = F.pad(make_image(), (0, 64, 0, 64))  # zero padding right and bottom
    feats = features_of(padded)
    assert feats.shape[1:] == (H // STRIDE + 2, W // STRIDE + 2)
    p = region_proposals(feats, STRIDE, (H, W))
    for a, b in zip(props, p):
        np.testing.assert_array_equal(a, b)


def test_non_multiple_image_size_clipped():
    h = 300
    squares = SQUARES[:2] + [((0.9, 0.9, 0.1), (320, 224, 384, 300))]  # touches the bottom
    img = F.pad(make_image(h, W, squares), (0, 0, 0, 320 - h))  # backbone-style padding
    feats = features_of(img)
    p = region_proposals(feats, STRIDE, (h, W))
    assert len(p.boxes) > 0
    assert (p.boxes[:, 3] <= h).all()
    assert (p.boxes[:, 3] == h).any()
    check_tight_and_connected(p, STRIDE, (h, W))
    best = iou_matrix(np.array([squares[2][1]], np.float32), p.boxes).max()
    assert best >= 0.9


def test_upsample_halves_stride():
    p = region_proposals(features_of(make_image()), STRIDE, (H, W), ProposalParams(upsample=2))
    assert len(p.boxes) > 0
    assert p.masks.shape[1:] == (2 * H // STRIDE, 2 * W // STRIDE)
    assert (p.boxes % 16 == 0).all()
    assert (p.boxes % 32 != 0).any()  # the finer grid is actually used
    check_tight_and_connected(p, STRIDE / 2, (H, W))


def test_embeddings(props):
    np.testing.assert_allclose(np.linalg.norm(props.embeddings, axis=1), 1.0, atol=1e-5)
    for colour, box in SQUARES:
        exact = np.flatnonzero(np.all(props.boxes == np.array(box, np.float32), axis=1))
        assert len(exact) > 0, box
        expect = np.array(colour) / np.linalg.norm(colour)
        for i in exact:
            np.testing.assert_allclose(props.embeddings[i], expect, atol=1e-5)


def test_levels_non_decreasing(props):
    assert (np.diff(props.levels) >= 0).all()
    # within a level, larger boxes first
    for k in np.unique(props.levels):
        a = props.areas[props.levels == k]
        assert (np.diff(a) <= 0).all()


def test_tiny_grids_do_not_crash():
    one = region_proposals(torch.rand(8, 1, 1), STRIDE, (32, 32))
    assert one.boxes.shape == (0, 4) and one.embeddings.shape == (0, 8) and one.levels.shape == (0,)
    few = region_proposals(torch.rand(8, 2, 3), STRIDE, (64, 96), ProposalParams(min_cells=1))
    assert set(few.levels.tolist()) <= {2, 3, 4, 6}
    zeros = region_proposals(torch.zeros(4, 6, 6), STRIDE, (192, 192))
    assert np.isfinite(zeros.embeddings).all()


@pytest.mark.parametrize("field, value", [
    ("cluster_levels", (1, 2)),
    ("cluster_levels", (4, 2)),
    ("cluster_levels", (2, 2, 3)),
    ("cluster_levels", ()),
    ("cluster_levels", (2.5,)),
    ("upsample", 0),
    ("min_cells", 0),
    ("min_area_fraction", 0.0),
    ("max_image_fraction", 1.5),
    ("dedup_iou", 0.0),
    ("max_proposals", 0),
    ("min_proposals", 0),
])
def test_params_validation(field, value):
    with pytest.raises(ValueError, match=field):
        ProposalParams(**{field: value})


def test_params_frozen():
    p = ProposalParams()
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.max_proposals = 5


def test_scale_boxes_round_trip():
    orig = np.array([[10, 20, 110, 220], [0, 0, 639, 479]], np.float32)
    sx, sy = 0.5, 0.75
    resized = orig * np.array([sx, sy, sx, sy], np.float32)
    back = scale_boxes(resized, sx, sy, (480, 640))
    np.testing.assert_allclose(back, orig, rtol=1e-6, atol=1e-4)
    clipped = scale_boxes(np.array([[-5, -5, 1000, 1000]]), 0.5, 0.5, (480, 640))
    np.testing.assert_allclose(clipped, [[0, 0, 640, 480]])
    assert scale_boxes(np.zeros((0, 4)), 2, 2, (10, 10)).shape == (0, 4)


def test_tree_cut_matches_sklearn_agglomerative():
    """The union-find cut of the Ward tree gives sklearn's own partition at each k."""
    from sklearn.cluster import AgglomerativeClustering, ward_tree
    from sklearn.feature_extraction.image import grid_to_graph
    from sklearn.metrics import adjusted_rand_score
    from updetr_d2.methods.simdetr.proposals import _cut_tree

    X = np.random.default_rng(0).normal(size=(7 * 9, 5))
    graph = grid_to_graph(7, 9)
    children, _, n_leaves, _ = ward_tree(X, connectivity=graph)
    cuts = _cut_tree(children, n_leaves, [2, 3, 5, 17])
    for k, labels in cuts.items():
        ref = AgglomerativeClustering(n_clusters=k, connectivity=graph, linkage="ward").fit(X).labels_
        assert adjusted_rand_score(ref, labels) == 1.0
        assert labels.min() == 0 and labels.max() == k - 1
        first = [np.flatnonzero(labels == c)[0] for c in range(k)]
        assert first == sorted(first)  # clusters numbered by their smallest cell index
