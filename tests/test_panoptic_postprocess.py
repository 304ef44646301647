"""DETR's panoptic post-processing (updetr_d2.methods.panoptic.postprocess): query
selection, padding-independent mask resizing, the pixel assignment rules (stuff merge,
small-segment removal) and the output's invariants. CPU, tiny sizes."""
import math

import pytest
import torch

import updetr_d2  # noqa: F401  (compat fixes before detectron2 submodules)
from updetr_d2.methods.panoptic.postprocess import (
    instance_masks,
    mask_logits_to_image,
    panoptic_segmentation,
    select_queries,
)

# contiguous classes 0, 1 are things, 2, 3 stuff
IS_THING = torch.tensor([True, True, False, False])


def log_probs(*rows):
    """Logits whose softmax is exactly the given probability rows."""
    return torch.tensor(rows, dtype=torch.float64).log().float()


def run(mask_logits, labels, stride=1, image_size=None, output_size=None, min_area=4):
    K = mask_logits.shape[0]
    image_size = image_size or tuple(mask_logits.shape[1:])
    return panoptic_segmentation(
        mask_logits, torch.linspace(0.9, 0.5, K), torch.tensor(labels, dtype=torch.long), IS_THING,
        image_size=image_size, stride=stride, output_size=output_size, min_area=min_area,
    )


def halves(h=4, w=6, value=5.0):
    """Two queries: the first wins the left half, the second the right half."""
    left = torch.full((h, w), -value)
    left[:, : w // 2] = value
    return torch.stack([left, -left])


# --- select_queries ----------------------------------------------------------------
def test_softmax_threshold_is_strict_on_the_max_probability():
    keep, scores, labels = select_queries(log_probs([0.84, 0.10, 0.06], [0.06, 0.86, 0.08]),
                                          sigmoid=False, threshold=0.85)
    assert keep.tolist() == [False, True]
    assert scores.tolist() == pytest.approx([0.84, 0.86], abs=1e-6)
    assert labels.tolist() == [0, 1] and labels.dtype == torch.long


def test_a_query_whose_argmax_is_no_object_is_dropped_however_confident():
    keep, scores, labels = select_queries(log_probs([0.01, 0.01, 0.98]), sigmoid=False, threshold=0.5)
    assert not keep[0] and labels[0] == 2 and scores[0] == pytest.approx(0.98)


def test_the_no_object_column_takes_part_in_the_softmax():
    # without the no-object column the class would be ~0.9998 sure and kept
    keep, scores, labels = select_queries(log_probs([0.6, 0.0001, 0.3999]), sigmoid=False, threshold=0.7)
    assert not keep[0] and labels[0] == 0 and scores[0] == pytest.approx(0.6, abs=1e-6)


def test_sigmoid_selection_has_no_no_object_column():
    keep, scores, labels = select_queries(torch.tensor([[2.0, -1.0], [-3.0, -0.5]]), sigmoid=True, threshold=0.5)
    assert keep.tolist() == [True, False]
    assert labels.tolist() == [0, 1]
    assert scores.tolist() == pytest.approx([1 / (1 + math.exp(-2)), 1 / (1 + math.exp(0.5))])


# --- mask_logits_to_image ----------------------------------------------------------
def padded_canvases(K=2, seed=0):
    """The same 3x4 valid cells (a 10x13 image at stride 4) on a 5x6 canvas padded with
    +1e4, one padded with -1e4, and with no padding at all."""
    valid = torch.randn(K, 3, 4, generator=torch.Generator().manual_seed(seed)) * 3
    canvases = []
    for garbage in (1e4, -1e4):
        canvas = torch.full((K, 5, 6), garbage)
        canvas[:, :3, :4] = valid
        canvases.append(canvas)
    return canvases + [valid]


def test_masks_do_not_depend_on_the_batch_padding():
    results = [mask_logits_to_image(c, (10, 13), 4) for c in padded_canvases()]
    assert results[0].shape == (2, 10, 13) and results[0].dtype == torch.float32
    assert torch.equal(results[0], results[1]) and torch.equal(results[0], results[2])
    assert results[0].abs().max() < 100  # no garbage leaked in
    resized = [mask_logits_to_image(c, (10, 13), 4, output_size=(7, 9)) for c in padded_canvases()]
    assert resized[0].shape == (2, 7, 9)
    assert torch.equal(resized[0], resized[1]) and torch.equal(resized[0], resized[2])


def test_stride_one_is_a_crop_and_constant_cells_stay_constant():
    x = torch.randn(3, 5, 6)
    assert torch.equal(mask_logits_to_image(x, (4, 5), 1), x[:, :4, :5])
    assert torch.equal(mask_logits_to_image(torch.full((1, 3, 3), 2.5), (9, 10), 4), torch.full((1, 9, 10), 2.5))


def test_no_masks_and_a_too_small_canvas():
    assert mask_logits_to_image(torch.zeros(0, 5, 6), (10, 13), 4).shape == (0, 10, 13)
    assert mask_logits_to_image(torch.zeros(0, 5, 6), (10, 13), 4, output_size=(3, 2)).shape == (0, 3, 2)
    with pytest.raises(ValueError, match="cells"):
        mask_logits_to_image(torch.zeros(1, 2, 6), (10, 13), 4)


# --- panoptic_segmentation ---------------------------------------------------------
def test_disjoint_masks_are_reproduced_exactly():
    img, info = run(halves(), [1, 2])
    expected = torch.ones(4, 6, dtype=torch.int32)
    expected[:, 3:] = 2
    assert img.dtype == torch.int32 and torch.equal(img, expected)
    assert [(s["id"], s["category_id"], s["isthing"], s["area"]) for s in info] == [(1, 1, True, 12), (2, 2, False, 12)]
    assert info[0]["score"] == pytest.approx(0.9)


def test_overlapping_masks_go_to_the_higher_logit():
    x = torch.arange(8.0).expand(3, 8)
    img, info = run(torch.stack([7 - x, x]), [0, 1])  # both positive in the middle
    assert img[0].tolist() == [1, 1, 1, 1, 2, 2, 2, 2]
    assert [s["area"] for s in info] == [12, 12]


def test_queries_of_the_same_stuff_class_become_one_segment():
    masks = torch.cat([halves(), torch.full((1, 4, 6), -10.0)])
    masks[2, :, 0] = masks[2, 0, 1] = 9.0  # a thing query takes 5 pixels of the first half
    img, info = run(masks, [2, 2, 0])
    assert [(s["category_id"], s["isthing"], s["area"]) for s in info] == [(2, False, 19), (0, True, 5)]
    assert (img == 1).sum() == 19 and img[:, 3:].eq(1).all() and img[:, 0].eq(2).all()


def test_queries_of_the_same_thing_class_stay_apart():
    img, info = run(halves(), [0, 0])
    assert [(s["id"], s["category_id"], s["area"]) for s in info] == [(1, 0, 12), (2, 0, 12)]
    assert img[:, :3].eq(1).all() and img[:, 3:].eq(2).all()


def test_a_small_segment_is_removed_and_its_pixels_go_to_the_next_best_query():
    masks = torch.cat([halves(), torch.full((1, 4, 6), -10.0)])
    small = [(0, 0), (0, 1), (1, 0)]  # in the first query's half, where the second is next best
    for r, c in small:
        masks[2, r, c] = 9.0
        masks[1, r, c] = 7.0
    before, _ = run(masks, [0, 1, 3], min_area=2)
    assert all(before[r, c] == 3 for r, c in small)
    img, info = run(masks, [0, 1, 3], min_area=4)
    assert [(s["id"], s["category_id"], s["area"]) for s in info] == [(1, 0, 9), (2, 1, 15)]
    assert all(img[r, c] == 2 for r, c in small)
    assert sum(s["area"] for s in info) == img.numel()


def test_nothing_kept_gives_a_void_image():
    img, info = run(torch.zeros(0, 3, 4), [], output_size=(5, 2))
    assert info == [] and img.shape == (5, 2) and img.dtype == torch.int32 and not img.any()
    img, info = run(torch.ones(1, 2, 2), [2], min_area=4)  # the only segment is too small
    assert info == [] and torch.equal(img, torch.zeros(2, 2, dtype=torch.int32))


def test_stride_four_with_a_different_output_size():
    # columns of cells: the first query leads on the left one, the second on the right one;
    # the 8x8 image splits at x = 4, and nearest resizing to width 12 at x = 6
    cells = torch.tensor([[5.0, -5.0], [5.0, -5.0]])
    img, info = run(torch.stack([cells, -cells]), [0, 3], stride=4, image_size=(8, 8), output_size=(16, 12))
    assert img.shape == (16, 12)
    assert img[:, :6].eq(1).all() and img[:, 6:].eq(2).all()
    assert [s["area"] for s in info] == [96, 96]


def test_the_output_is_consistent_on_a_random_example():
    g = torch.Generator().manual_seed(0)
    K = 6
    mask_logits = torch.randn(K, 6, 7, generator=g) * 4
    labels = torch.tensor([0, 2, 1, 2, 3, 0])
    img, info = panoptic_segmentation(mask_logits, torch.rand(K, generator=g), labels, IS_THING,
                                      image_size=(21, 25), stride=4, output_size=(30, 17), min_area=4)
    ids = [s["id"] for s in info]
    assert img.shape == (30, 17) and len(info) > 1
    assert ids == list(range(1, len(info) + 1))
    assert sorted(img.unique().tolist()) == ids  # no void, nothing missing, nothing extra
    for s in info:
        assert s["area"] == int((img == s["id"]).sum()) > 4
        assert s["isthing"] == bool(IS_THING[s["category_id"]])


def test_the_segmentation_does_not_depend_on_the_batch_padding():
    results = [panoptic_segmentation(c, torch.tensor([0.9, 0.8]), torch.tensor([0, 2]), IS_THING,
                                     image_size=(10, 13), stride=4, output_size=(15, 11))
               for c in padded_canvases(seed=3)]
    assert results[0][1]  # something survived
    for img, info in results[1:]:
        assert torch.equal(img, results[0][0]) and info == results[0][1]


# --- instance_masks ----------------------------------------------------------------
def test_instance_masks_threshold_the_logits_at_zero():
    masks = instance_masks(torch.tensor([[[-0.1, 0.1], [0.0, 2.0]]]), (2, 2), 1)
    assert masks.dtype == torch.bool and masks.tolist() == [[[False, True], [False, True]]]
    assert instance_masks(torch.ones(2, 3, 3), (10, 12), 4, output_size=(5, 6)).shape == (2, 5, 6)
