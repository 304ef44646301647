"""HungarianMatcher against brute force over all assignments, with costs written out
pair by pair here (not taken from the matcher)."""
import itertools
import math

import pytest
import torch

import updetr_d2  # noqa: F401  (compat fixes before detectron2 submodules)
from updetr_d2.modeling.matcher import HungarianMatcher

NUM_CLASSES = 4
WEIGHTS = dict(cost_class=1.0, cost_bbox=5.0, cost_giou=2.0)


# --- reference costs, one pair at a time --------------------------------------------
def ref_giou(a, b):
    """GIoU of two cxcywh boxes given as lists of floats."""
    ax1, ay1, ax2, ay2 = a[0] - a[2] / 2, a[1] - a[3] / 2, a[0] + a[2] / 2, a[1] + a[3] / 2
    bx1, by1, bx2, by2 = b[0] - b[2] / 2, b[1] - b[3] / 2, b[0] + b[2] / 2, b[1] + b[3] / 2
    inter = max(0.0, min(ax2, bx2) - max(ax1, bx1)) * max(0.0, min(ay2, by2) - max(ay1, by1))
    union = a[2] * a[3] + b[2] * b[3] - inter
    hull = (max(ax2, bx2) - min(ax1, bx1)) * (max(ay2, by2) - min(ay1, by1))
    return inter / union - (hull - union) / hull


def ref_class_cost(logits, label, kind, alpha=0.25, gamma=2.0):
    if kind == "ce":
        exps = [math.exp(x) for x in logits]
        return -exps[label] / sum(exps)
    p = 1 / (1 + math.exp(-logits[label]))
    pos = alpha * (1 - p) ** gamma * -math.log(p)
    neg = (1 - alpha) * p**gamma * -math.log(1 - p)
    return pos - neg


def ref_cost_matrix(logits, boxes, labels, tgt_boxes, kind, w=WEIGHTS):
    """[Q][n] list of floats for one image."""
    cost = []
    for q in range(len(logits)):
        row = []
        for j in range(len(labels)):
            l1 = sum(abs(p - t) for p, t in zip(boxes[q], tgt_boxes[j]))
            row.append(
                w["cost_class"] * ref_class_cost(logits[q], labels[j], kind)
                + w["cost_bbox"] * l1
                - w["cost_giou"] * ref_giou(boxes[q], tgt_boxes[j])
            )
        cost.append(row)
    return cost


def brute_force_min(cost, Q, n):
    if n == 0:
        return 0.0
    if n <= Q:  # each target gets a distinct prediction
        return min(sum(cost[p[j]][j] for j in range(n)) for p in itertools.permutations(range(Q), n))
    # each prediction gets a distinct target
    return min(sum(cost[i][p[i]] for i in range(Q)) for p in itertools.permutations(range(n), Q))


# --- problem generation ---------------------------------------------------------------
def random_boxes(gen, k):
    centre = torch.rand(k, 2, generator=gen) * 0.6 + 0.2
    size = torch.rand(k, 2, generator=gen) * 0.35 + 0.05
    return torch.cat([centre, size], dim=1)


def random_problem(seed, Q, sizes, kind):
    gen = torch.Generator().manual_seed(seed)
    C = NUM_CLASSES + (1 if kind == "ce" else 0)
    outputs = {
        "pred_logits": torch.randn(len(sizes), Q, C, generator=gen) * 2,
        "pred_boxes": torch.stack([random_boxes(gen, Q) for _ in sizes]),
    }
    targets = [
        {"labels": torch.randint(0, NUM_CLASSES, (n,), generator=gen), "boxes": random_boxes(gen, n)} for n in sizes
    ]
    return outputs, targets


CASES = [(3, 0), (3, 1), (3, 2), (3, 3), (4, 0), (4, 1), (4, 2), (4, 3), (4, 4), (5, 1)]
CASES += [(5, 2), (5, 3), (5, 5), (6, 2), (6, 4), (6, 6)]
CASES += [(3, 5), (4, 6), (2, 5), (5, 6)]  # more targets than predictions


@pytest.mark.parametrize("kind", ["ce", "focal"])
@pytest.mark.parametrize("case", range(len(CASES)))
def test_assignment_is_optimal(case, kind):
    Q, n = CASES[case]
    outputs, targets = random_problem(100 + case, Q, [n], kind)
    matcher = HungarianMatcher(**WEIGHTS, class_cost_type=kind)
    ((pred_idx, tgt_idx),) = matcher(outputs, targets)

    assert pred_idx.dtype == tgt_idx.dtype == torch.int64
    assert len(pred_idx) == len(tgt_idx) == min(Q, n)
    assert len(set(pred_idx.tolist())) == len(pred_idx) and len(set(tgt_idx.tolist())) == len(tgt_idx)
    assert pred_idx.tolist() == sorted(pred_idx.tolist())
    if n > Q:
        assert pred_idx.tolist() == list(range(Q))  # every prediction is matched

    ref = ref_cost_matrix(
        outputs["pred_logits"][0].tolist(),
        outputs["pred_boxes"][0].tolist(),
        targets[0]["labels"].tolist(),
        targets[0]["boxes"].tolist(),
        kind,
    )
    if n:
        assert torch.allclose(matcher.cost_matrix(outputs, targets)[0], torch.tensor(ref), atol=1e-5)
    chosen = sum(ref[i][j] for i, j in zip(pred_idx.tolist(), tgt_idx.tolist()))
    assert chosen == pytest.approx(brute_force_min(ref, Q, n), abs=1e-5)


@pytest.mark.parametrize("kind", ["ce", "focal"])
def test_batched_equals_per_image(kind):
    sizes = [2, 0, 5, 3, 4]  # an empty image and one with more targets than queries
    outputs, targets = random_problem(7, 4, sizes, kind)
    matcher = HungarianMatcher(class_cost_type=kind)
    batched = matcher(outputs, targets)
    assert len(batched) == len(sizes)
    for i, (pred_idx, tgt_idx) in enumerate(batched):
        single = {k: v[i : i + 1] for k, v in outputs.items()}
        ((pred_ref, tgt_ref),) = matcher(single, [targets[i]])
        assert torch.equal(pred_idx, pred_ref) and torch.equal(tgt_idx, tgt_ref)
        assert len(pred_idx) == min(4, sizes[i])


def test_empty_targets_give_empty_indices():
    outputs, targets = random_problem(3, 5, [0, 0], "ce")
    indices = HungarianMatcher()(outputs, targets)
    assert len(indices) == 2
    for pred_idx, tgt_idx in indices:
        assert pred_idx.shape == tgt_idx.shape == (0,)
        assert pred_idx.dtype == tgt_idx.dtype == torch.int64


@pytest.mark.parametrize("key", ["pred_boxes", "pred_logits"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_predictions_raise(key, bad):
    outputs, targets = random_problem(5, 4, [2, 3], "ce")
    outputs[key][1, 2, 0] = bad
    with pytest.raises(ValueError, match="NaN/inf.*images \\[1\\]"):
        HungarianMatcher()(outputs, targets)


def test_non_finite_target_raises():
    outputs, targets = random_problem(5, 4, [2, 3], "ce")
    targets[0]["boxes"][1, 3] = float("nan")
    with pytest.raises(ValueError, match="NaN/inf"):
        HungarianMatcher()(outputs, targets)


def test_focal_cost_matches_hand_formula():
    logits = torch.tensor([[[2.0, -1.0, 0.5], [-0.3, 1.5, -2.0]]])
    outputs = {"pred_logits": logits, "pred_boxes": torch.full((1, 2, 4), 0.3)}
    targets = [{"labels": torch.tensor([1, 0]), "boxes": torch.full((2, 4), 0.3)}]
    matcher = HungarianMatcher(cost_class=1.0, cost_bbox=0.0, cost_giou=0.0, class_cost_type="focal")

    def hand(x, alpha=0.25, gamma=2.0):
        p = 1 / (1 + math.exp(-x))
        return alpha * (1 - p) ** gamma * -math.log(p) - (1 - alpha) * p**gamma * -math.log(1 - p)

    expected = torch.tensor([[hand(-1.0), hand(2.0)], [hand(1.5), hand(-0.3)]])
    assert torch.allclose(matcher.cost_matrix(outputs, targets)[0], expected, atol=1e-6)
    # Pred 0 is confident about class 0, pred 1 about class 1.
    ((pred_idx, tgt_idx),) = matcher(outputs, targets)
    assert pred_idx.tolist() == [0, 1] and tgt_idx.tolist() == [1, 0]


def test_invalid_configuration():
    with pytest.raises(ValueError, match="class_cost_type"):
        HungarianMatcher(class_cost_type="bce")
    with pytest.raises(ValueError, match="all cost weights are 0"):
        HungarianMatcher(cost_class=0, cost_bbox=0, cost_giou=0)


def test_labels_outside_the_model_classes_are_named():
    matcher = HungarianMatcher(class_cost_type="focal")
    outputs = {"pred_logits": torch.zeros(1, 3, 4), "pred_boxes": torch.full((1, 3, 4), 0.5)}
    targets = [{"labels": torch.tensor([47]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2]])}]
    with pytest.raises(ValueError, match=r"labels must be in \[0, 4\).*47.*NUM_CLASSES"):
        matcher(outputs, targets)
