"""SimDETR stage D: next-round targets from hand-made predictions, with the expected
choice worked out by hand in each test."""
import math

import pytest
import torch

import updetr_d2  # noqa: F401  (compat fixes before detectron2 submodules)
from updetr_d2.methods.simdetr.relabel import (
    SelfTrainingParams,
    per_query_scores,
    round_statistics,
    select_targets,
)

P = SelfTrainingParams()  # score_thresh 0.3, nms_iou 0.7, max_dets 50, fallback 5, min 2


def disjoint_boxes(n, size=10.0):
    """n non-overlapping boxes on a row, xyxy."""
    x0 = torch.arange(n, dtype=torch.float32) * (size + 5)
    return torch.stack([x0, torch.zeros(n), x0 + size, torch.full((n,), size)], dim=1)


def select(boxes, scores, params=P, classes=None):
    classes = torch.zeros(len(scores), dtype=torch.int64) if classes is None else classes
    return select_targets(boxes, torch.tensor(scores, dtype=torch.float32), classes, params).tolist()


def test_threshold_drops_low_scores_and_orders_by_score():
    assert select(disjoint_boxes(5), [0.9, 0.1, 0.5, 0.29, 0.3]) == [0, 2, 4]


def test_nms_is_class_agnostic_and_uses_iou():
    # [0,0,10,10] vs [0,0,10,8]: IoU 80/100 = 0.8 > 0.7, only the higher score stays,
    # even with different classes.
    boxes = torch.tensor([[0, 0, 10, 8], [0, 0, 10, 10], [50, 50, 60, 60]], dtype=torch.float32)
    assert select(boxes, [0.6, 0.9, 0.8], classes=torch.tensor([1, 2, 3])) == [1, 2]
    # [0,0,10,10] vs [0,0,10,5]: IoU 50/100 = 0.5 <= 0.7, both stay.
    boxes = torch.tensor([[0, 0, 10, 5], [0, 0, 10, 10]], dtype=torch.float32)
    assert select(boxes, [0.6, 0.9]) == [1, 0]


def test_cap_keeps_the_highest_scores():
    n = 60
    scores = [0.31 + 0.01 * ((i * 37) % n) for i in range(n)]  # distinct, all above 0.3
    kept = select(disjoint_boxes(n), scores)
    assert len(kept) == P.max_dets
    expected = sorted(range(n), key=lambda i: -scores[i])[: P.max_dets]
    assert kept == expected


def test_fallback_only_when_too_few_survive():
    scores = [0.05, 0.2, 0.1, 0.15, 0.25, 0.01, 0.12]  # all below 0.3
    kept, fell_back = select_targets(
        disjoint_boxes(7), torch.tensor(scores), torch.zeros(7, dtype=torch.int64), P, return_fallback=True
    )
    assert kept.tolist() == [4, 1, 3, 6, 2] and fell_back  # top fallback_topk = 5
    # One above the threshold is fewer than min_targets = 2: still the fallback.
    assert select(disjoint_boxes(7), [0.9] + scores[1:]) == [0, 4, 1, 3, 6]
    # Two above: enough, no fallback.
    kept, fell_back = select_targets(
        disjoint_boxes(7), torch.tensor([0.9, 0.8] + scores[2:]), torch.zeros(7, dtype=torch.int64), P,
        return_fallback=True,
    )
    assert kept.tolist() == [0, 1] and not fell_back
    # Fallback disabled.
    assert select(disjoint_boxes(7), scores, SelfTrainingParams(fallback_topk=0)) == []


def test_degenerate_boxes_never_kept():
    boxes = torch.tensor(
        [[0, 0, 0, 10], [0, 0, 10, 0], [20, 20, 10, 30], [50, 50, 60, 60], [float("nan"), 0, 5, 5]]
    )
    assert select(boxes, [1.0, 1.0, 1.0, 0.5, 1.0]) == [3]
    # Not even by the fallback.
    assert select(boxes, [1.0, 1.0, 1.0, 0.1, 1.0]) == [3]
    assert select(boxes[:3], [1.0, 1.0, 1.0]) == []


def test_empty_input():
    out = select_targets(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.int64), P)
    assert out.dtype == torch.int64 and out.shape == (0,)


def test_oracle_predictions_are_a_fixed_point():
    gen = torch.Generator().manual_seed(0)
    n = 17
    boxes = disjoint_boxes(n)[torch.randperm(n, generator=gen)]
    classes = torch.randint(0, 256, (n,), generator=gen)
    kept = select_targets(boxes, torch.ones(n), classes, P)
    assert sorted(kept.tolist()) == list(range(n))
    got = {(tuple(b), int(c)) for b, c in zip(boxes[kept].tolist(), classes[kept])}
    assert got == {(tuple(b), int(c)) for b, c in zip(boxes.tolist(), classes)}


def test_per_query_scores_sigmoid():
    logits = torch.tensor([[[0.0, 2.0, -1.0], [-3.0, -2.0, -4.0]]])  # [1, Q=2, C=3]
    scores, classes = per_query_scores(logits, sigmoid=True)
    sig = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
    assert classes.tolist() == [[1, 1]]
    assert scores[0].tolist() == pytest.approx([sig(2.0), sig(-2.0)], abs=1e-6)


def test_per_query_scores_softmax_excludes_no_object_from_argmax():
    # Query 0: real classes 1, 2, no-object 0 -> softmax over all three.
    # Query 1: no-object dominates (5.0); the score stays low but the class is real.
    logits = torch.tensor([[1.0, 2.0, 0.0], [0.5, 0.0, 5.0]])
    scores, classes = per_query_scores(logits, sigmoid=False)
    z0 = math.exp(1) + math.exp(2) + math.exp(0)
    z1 = math.exp(0.5) + math.exp(0) + math.exp(5)
    assert classes.tolist() == [1, 0]
    assert scores.tolist() == pytest.approx([math.exp(2) / z0, math.exp(0.5) / z1], abs=1e-6)


def test_round_statistics():
    stats = round_statistics([0, 10, 20, 50], fell_back=[True, False, False, False])
    assert stats["median"] == 15 and stats["mean"] == 20 and stats["min"] == 0 and stats["max"] == 50
    assert stats["images"] == 4 and stats["total"] == 80
    assert stats["empty_fraction"] == 0.25 and stats["fallback_fraction"] == 0.25
    assert "fallback_fraction" not in round_statistics([3])
    with pytest.raises(ValueError):
        round_statistics([])


@pytest.mark.parametrize(
    "field,value",
    [("rounds", -1), ("score_thresh", 1.5), ("nms_iou", 0.0), ("max_dets", 0), ("fallback_topk", 51),
     ("min_targets", -1)],
)
def test_params_validated(field, value):
    with pytest.raises(ValueError, match=field):
        SelfTrainingParams(**{field: value})
