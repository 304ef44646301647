"""SetCriterion and its loss terms against hand-computed values."""
import math

import pytest
import torch
from torchvision.ops import generalized_box_iou as tv_pairwise_giou
from torchvision.ops import sigmoid_focal_loss

import updetr_d2  # noqa: F401  (compat fixes before detectron2 submodules)
from detectron2.utils import comm
from detectron2.utils.events import EventStorage
from updetr_d2.layers import box_cxcywh_to_xyxy, elementwise_generalized_box_iou
from updetr_d2.modeling.criterion import BoxL1GIoU, LabelCrossEntropy, LabelFocal, LossTerm, SetCriterion
from updetr_d2.modeling.matcher import HungarianMatcher

C = 3  # real classes; index C is no-object
DETR_WEIGHTS = {"loss_ce": 1.0, "loss_bbox": 5.0, "loss_giou": 2.0}


def detr_criterion(weight_dict=None, eos_coef=0.1, aux_loss=True, matcher=None):
    return SetCriterion(
        matcher or HungarianMatcher(),
        [LabelCrossEntropy(C, eos_coef=eos_coef), BoxL1GIoU()],
        weight_dict or DETR_WEIGHTS,
        aux_loss=aux_loss,
    )


def random_layer(gen, B, Q, num_logits=C + 1):
    return {
        "pred_logits": torch.randn(B, Q, num_logits, generator=gen).requires_grad_(),
        "pred_boxes": (torch.rand(B, Q, 4, generator=gen) * 0.5 + 0.2).requires_grad_(),
    }


def random_outputs(seed=0, B=2, Q=5, num_aux=2, num_logits=C + 1):
    gen = torch.Generator().manual_seed(seed)
    outputs = random_layer(gen, B, Q, num_logits)
    outputs["aux_outputs"] = [random_layer(gen, B, Q, num_logits) for _ in range(num_aux)]
    return outputs


def make_targets(boxes_per_image, labels_per_image):
    return [
        {"labels": torch.tensor(labels, dtype=torch.long), "boxes": torch.tensor(boxes, dtype=torch.float32).view(-1, 4)}
        for boxes, labels in zip(boxes_per_image, labels_per_image)
    ]


TARGETS = make_targets(
    [[[0.3, 0.3, 0.2, 0.2], [0.7, 0.4, 0.3, 0.1], [0.5, 0.7, 0.2, 0.3]], []],
    [[0, 2, 1], []],
)


def test_losses_finite_with_expected_keys():
    losses = detr_criterion()(random_outputs(), TARGETS)
    expected = {f"{k}{s}" for k in DETR_WEIGHTS for s in ("", "_0", "_1")}
    assert set(losses) == expected
    for key, value in losses.items():
        assert value.dim() == 0 and torch.isfinite(value), key


def test_perfect_prediction_has_zero_loss():
    targets = make_targets(
        [[[0.3, 0.3, 0.2, 0.2], [0.7, 0.4, 0.3, 0.1]], [[0.5, 0.5, 0.4, 0.4]]],
        [[2, 0], [1]],
    )
    B, Q = 2, 5
    logits = torch.full((B, Q, C + 1), -25.0)
    logits[..., C] = 25.0  # everyone predicts no-object...
    boxes = torch.full((B, Q, 4), 0.1)
    for b, slots in enumerate([[3, 1], [4]]):  # ...except the queries holding a target
        for j, q in enumerate(slots):
            logits[b, q] = -25.0
            logits[b, q, targets[b]["labels"][j]] = 25.0
            boxes[b, q] = targets[b]["boxes"][j]
    criterion = detr_criterion(weight_dict={"loss_ce": 1.0, "loss_bbox": 1.0, "loss_giou": 1.0})
    losses = criterion({"pred_logits": logits, "pred_boxes": boxes}, targets)
    assert losses["loss_ce"] < 1e-6
    assert losses["loss_bbox"] < 1e-6
    assert losses["loss_giou"] < 1e-5  # only the eps of the GIoU denominators
    assert criterion.last_metrics == {"class_error": 0.0}


def test_box_loss_is_normalised_by_total_boxes():
    # Image 0: 3 boxes, each predicted 0.02 off per coordinate; image 1: 1 box, 0.1 off.
    targets = make_targets(
        [[[0.2, 0.2, 0.1, 0.1], [0.5, 0.5, 0.1, 0.1], [0.8, 0.8, 0.1, 0.1]], [[0.5, 0.3, 0.2, 0.2]]],
        [[0, 1, 2], [1]],
    )
    Q = 4
    boxes = torch.tensor([0.9, 0.1, 0.05, 0.05]).repeat(2, Q, 1)  # unmatched queries, far away
    boxes[0, :3] = targets[0]["boxes"] + 0.02
    boxes[1, 0] = targets[1]["boxes"][0] + 0.1
    outputs = {"pred_logits": torch.zeros(2, Q, C + 1), "pred_boxes": boxes}
    criterion = detr_criterion(weight_dict={"loss_ce": 1.0, "loss_bbox": 1.0, "loss_giou": 1.0})
    losses = criterion(outputs, targets)
    # sum of |errors| over 4 boxes x 4 coordinates / 4 boxes (a per-image mean would give 0.24)
    assert losses["loss_bbox"].item() == pytest.approx((3 * 4 * 0.02 + 1 * 4 * 0.1) / 4, rel=1e-5)


def test_no_object_class_is_down_weighted_by_eos_coef():
    logits = torch.tensor([[[0.5, -1.0, 0.2, 1.0], [2.0, 0.1, -0.3, 0.4], [-0.5, 1.2, 0.3, 0.0]]])
    outputs = {"pred_logits": logits, "pred_boxes": torch.full((1, 3, 4), 0.5)}
    targets = make_targets([[[0.5, 0.5, 0.2, 0.2]]], [[1]])
    indices = [(torch.tensor([2]), torch.tensor([0]))]  # query 2 holds the target (class 1)

    def nll(row, cls):
        return math.log(sum(math.exp(x) for x in row)) - row[cls]

    rows = logits[0].tolist()
    target_classes, weights = [C, C, 1], [0.1, 0.1, 1.0]
    expected = sum(w * nll(r, t) for r, t, w in zip(rows, target_classes, weights)) / sum(weights)

    term = LabelCrossEntropy(C, eos_coef=0.1)
    assert term(outputs, targets, indices, 1.0)["loss_ce"].item() == pytest.approx(expected, rel=1e-6)
    criterion = detr_criterion(weight_dict={"loss_ce": 1.0, "loss_bbox": 1.0, "loss_giou": 1.0})
    assert criterion(outputs, targets, indices=indices)["loss_ce"].item() == pytest.approx(expected, rel=1e-6)
    unweighted = sum(nll(r, t) for r, t in zip(rows, target_classes)) / 3
    assert LabelCrossEntropy(C, eos_coef=1.0)(outputs, targets, indices, 1.0)["loss_ce"].item() == pytest.approx(
        unweighted, rel=1e-6
    )
    assert "empty_weight" not in term.state_dict()  # config, not a checkpointed value


def test_aux_losses_use_suffixes_and_base_weights():
    outputs = random_outputs(seed=3)
    weights = {"loss_ce": 2.0, "loss_bbox": 5.0, "loss_giou": 0.0}  # giou disabled
    criterion = detr_criterion(weight_dict=weights)
    losses = criterion(outputs, TARGETS)
    assert set(losses) == {"loss_ce", "loss_bbox", "loss_ce_0", "loss_bbox_0", "loss_ce_1", "loss_bbox_1"}

    matcher, terms = HungarianMatcher(), [LabelCrossEntropy(C), BoxL1GIoU()]
    layers = {"": outputs, "_0": outputs["aux_outputs"][0], "_1": outputs["aux_outputs"][1]}
    num_boxes = 3.0
    for suffix, layer in layers.items():
        indices = matcher(layer, TARGETS)
        raw = {k: v for term in terms for k, v in term(layer, TARGETS, indices, num_boxes).items()}
        for key in ("loss_ce", "loss_bbox"):
            assert torch.allclose(losses[key + suffix], weights[key] * raw[key]), key + suffix

    assert set(detr_criterion(aux_loss=False)(outputs, TARGETS)) == set(DETR_WEIGHTS)


def test_metrics_are_logged_not_returned():
    criterion = detr_criterion()
    losses = criterion(random_outputs(seed=1), TARGETS)
    assert "class_error" not in losses
    assert set(criterion.last_metrics) == {"class_error"}
    assert 0.0 <= criterion.last_metrics["class_error"] <= 100.0
    with EventStorage() as storage:
        losses = criterion(random_outputs(seed=2), TARGETS)
        assert "class_error" not in losses
        assert storage.latest()["class_error"][0] == pytest.approx(criterion.last_metrics["class_error"])


class _NoMatcher(torch.nn.Module):
    def forward(self, outputs, targets):
        raise AssertionError("the matcher must not run when indices are given")


def test_precomputed_indices_replace_matching():
    outputs = random_outputs(seed=4, B=1, Q=4)
    targets = [TARGETS[0]]
    indices = [(torch.tensor([0, 1, 3]), torch.tensor([2, 0, 1]))]
    criterion = detr_criterion(weight_dict={"loss_ce": 1.0, "loss_bbox": 1.0, "loss_giou": 1.0}, matcher=_NoMatcher())
    losses = criterion(outputs, targets, indices=indices)
    assert set(losses) == {f"{k}{s}" for k in DETR_WEIGHTS for s in ("", "_0", "_1")}
    for suffix, layer in [("", outputs), ("_0", outputs["aux_outputs"][0]), ("_1", outputs["aux_outputs"][1])]:
        pred = layer["pred_boxes"][0, indices[0][0]]
        expected = (pred - targets[0]["boxes"][indices[0][1]]).abs().sum() / 3
        assert torch.allclose(losses["loss_bbox" + suffix], expected)
    matched = detr_criterion(weight_dict={"loss_ce": 1.0, "loss_bbox": 1.0, "loss_giou": 1.0})(outputs, targets)
    assert not torch.allclose(matched["loss_bbox"], losses["loss_bbox"])


def test_gradients_reach_every_layer():
    outputs = random_outputs(seed=5)
    sum(detr_criterion()(outputs, TARGETS).values()).backward()
    for layer in [outputs, *outputs["aux_outputs"]]:
        for key in ("pred_logits", "pred_boxes"):
            grad = layer[key].grad
            assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0, key


def test_missing_weight_raises_key_error():
    criterion = detr_criterion(weight_dict={"loss_ce": 1.0, "loss_bbox": 5.0})
    with pytest.raises(KeyError, match="loss_giou"):
        criterion(random_outputs(), TARGETS)


def test_focal_term_matches_hand_formula():
    outputs = random_outputs(seed=6, B=2, Q=4, num_aux=1, num_logits=C)
    indices = [(torch.tensor([1, 2, 3]), torch.tensor([0, 2, 1])), (torch.tensor([], dtype=torch.long),) * 2]
    num_boxes = 3.0
    alpha, gamma = 0.25, 2.0

    expected = 0.0
    onehot = torch.zeros(2, 4, C)
    for q, j in zip(*indices[0]):
        onehot[0, q, TARGETS[0]["labels"][j]] = 1
    for x, t in zip(outputs["pred_logits"].flatten().tolist(), onehot.flatten().tolist()):
        p = 1 / (1 + math.exp(-x))
        if t:
            expected += alpha * (1 - p) ** gamma * -math.log(p)
        else:
            expected += (1 - alpha) * p**gamma * -math.log(1 - p)
    expected /= num_boxes  # == loss.mean(1).sum() / num_boxes * Q of Deformable DETR

    loss = LabelFocal(C, alpha, gamma)(outputs, TARGETS, indices, num_boxes)["loss_focal"]
    assert loss.item() == pytest.approx(expected, rel=1e-5)

    criterion = SetCriterion(
        HungarianMatcher(cost_class=2.0, class_cost_type="focal"),
        [LabelFocal(C), BoxL1GIoU()],
        {"loss_focal": 2.0, "loss_bbox": 5.0, "loss_giou": 2.0},
    )
    losses = criterion(outputs, TARGETS)
    assert set(losses) == {f"{k}{s}" for k in ("loss_focal", "loss_bbox", "loss_giou") for s in ("", "_0")}
    assert all(torch.isfinite(v) for v in losses.values())
    assert "class_error" in criterion.last_metrics


def test_wrong_number_of_logits_is_reported():
    with pytest.raises(ValueError, match="no-object"):
        detr_criterion()(random_outputs(num_logits=C), TARGETS)


def test_degenerate_boxes_stay_finite():
    boxes = torch.tensor([[0.3, 0.3, 0.0, 0.2], [0.5, 0.5, 0.0, 0.0]], requires_grad=True)
    targets = torch.tensor([[0.3, 0.3, 0.0, 0.2], [0.6, 0.6, 0.2, 0.2]])
    giou = elementwise_generalized_box_iou(box_cxcywh_to_xyxy(boxes), box_cxcywh_to_xyxy(targets))
    assert torch.isfinite(giou).all()
    giou.sum().backward()
    assert torch.isfinite(boxes.grad).all()

    outputs = {"pred_logits": torch.zeros(1, 2, C + 1), "pred_boxes": boxes.detach()[None]}
    losses = BoxL1GIoU()(outputs, make_targets([targets.tolist()], [[0, 1]]), [(torch.arange(2),) * 2], 2.0)
    assert torch.isfinite(losses["loss_giou"])


def test_elementwise_giou_agrees_with_pairwise_diagonal():
    gen = torch.Generator().manual_seed(0)
    a = box_cxcywh_to_xyxy(torch.rand(6, 4, generator=gen) * 0.4 + 0.1)
    b = box_cxcywh_to_xyxy(torch.rand(6, 4, generator=gen) * 0.4 + 0.1)
    assert torch.allclose(elementwise_generalized_box_iou(a, b), tv_pairwise_giou(a, b).diagonal(), atol=1e-5)
    assert torch.allclose(elementwise_generalized_box_iou(a, a), torch.ones(6), atol=1e-5)


def test_num_boxes_is_clamped_and_averaged_over_workers(monkeypatch):
    assert SetCriterion.get_num_boxes([TARGETS[1]], torch.device("cpu")) == 1.0
    assert SetCriterion.get_num_boxes(TARGETS, torch.device("cpu")) == 3.0

    def fake_all_reduce(tensor):  # the other worker holds 5 boxes
        tensor += 5

    monkeypatch.setattr(comm, "get_world_size", lambda: 2)
    monkeypatch.setattr(torch.distributed, "all_reduce", fake_all_reduce)
    assert SetCriterion.get_num_boxes(TARGETS, torch.device("cpu")) == 4.0


class _CountQueries(LossTerm):
    """A made-up term on the final output only, to exercise the plug-in interface."""

    name = "count"
    apply_to_aux = False

    def forward(self, outputs, targets, indices, num_boxes):
        return {"loss_count": outputs["pred_logits"].new_tensor(float(outputs["pred_logits"].shape[1]))}


def test_custom_term_plugs_in():
    criterion = SetCriterion(
        HungarianMatcher(), [LabelCrossEntropy(C), _CountQueries()], {"loss_ce": 1.0, "loss_count": 0.5}
    )
    losses = criterion(random_outputs(Q=6), TARGETS)
    assert set(losses) == {"loss_ce", "loss_ce_0", "loss_ce_1", "loss_count"}
    assert losses["loss_count"].item() == 3.0
    with pytest.raises(ValueError, match="unique"):
        SetCriterion(HungarianMatcher(), [BoxL1GIoU(), BoxL1GIoU()], DETR_WEIGHTS)


# --- tags and query validity (DN-DETR's denoising queries) -----------------------


def test_tag_goes_between_key_and_layer_suffix():
    outputs = random_outputs(seed=7)
    indices = [(torch.tensor([0, 2, 4]), torch.tensor([0, 1, 2])), (torch.tensor([], dtype=torch.long),) * 2]
    weights = {"loss_ce": 2.0, "loss_bbox": 5.0, "loss_giou": 0.0}
    criterion = detr_criterion(weight_dict=weights)
    plain = criterion(outputs, TARGETS, indices=indices, num_boxes=3.0)
    tagged = criterion(outputs, TARGETS, indices=indices, num_boxes=3.0, tag="_dn")
    assert set(tagged) == {f"{k}_dn{s}" for k in ("loss_ce", "loss_bbox") for s in ("", "_0", "_1")}
    for key, value in plain.items():  # same values, weighted by the base key
        tagged_key = key.replace("loss_ce", "loss_ce_dn").replace("loss_bbox", "loss_bbox_dn")
        assert torch.equal(tagged[tagged_key], value), key


def test_tagged_call_leaves_metrics_alone():
    criterion = detr_criterion()
    criterion(random_outputs(seed=8), TARGETS)
    before = dict(criterion.last_metrics)
    with EventStorage() as storage:
        criterion(random_outputs(seed=9), TARGETS, tag="_dn")
        assert "class_error" not in storage.latest()
    assert criterion.last_metrics == before


def _with_valid(layer, valid):
    return {**layer, "query_valid": valid}


def test_focal_ignores_invalid_query_slots():
    outputs = random_outputs(seed=10, B=2, Q=4, num_aux=0, num_logits=C)
    indices = [(torch.tensor([1, 3]), torch.tensor([0, 2])), (torch.tensor([], dtype=torch.long),) * 2]
    valid = torch.tensor([[True, True, False, True], [True, False, False, False]])
    term = LabelFocal(C)
    loss = term(_with_valid(outputs, valid), TARGETS, indices, 2.0)["loss_focal"]

    per_elem_onehot = torch.zeros(2, 4, C)
    per_elem_onehot[0, 1, TARGETS[0]["labels"][0]] = 1
    per_elem_onehot[0, 3, TARGETS[0]["labels"][2]] = 1
    full = sigmoid_focal_loss(outputs["pred_logits"], per_elem_onehot, reduction="none")
    assert torch.allclose(loss, full[valid].sum() / 2.0)
    # garbage (even inf) in invalid slots changes nothing
    logits = outputs["pred_logits"].detach().clone()
    logits[~valid] = float("inf")
    again = term({**outputs, "pred_logits": logits, "query_valid": valid}, TARGETS, indices, 2.0)
    assert torch.allclose(again["loss_focal"], loss)
    # all valid == no mask (backwards compatible)
    all_valid = torch.ones(2, 4, dtype=torch.bool)
    assert torch.equal(
        term(_with_valid(outputs, all_valid), TARGETS, indices, 2.0)["loss_focal"],
        term(outputs, TARGETS, indices, 2.0)["loss_focal"],
    )


def test_cross_entropy_averages_over_valid_slots_only():
    outputs = random_outputs(seed=11, B=2, Q=4, num_aux=0)
    indices = [(torch.tensor([0, 2]), torch.tensor([1, 0])), (torch.tensor([], dtype=torch.long),) * 2]
    term = LabelCrossEntropy(C, eos_coef=0.1)
    all_valid = torch.ones(2, 4, dtype=torch.bool)
    plain = term(outputs, TARGETS, indices, 1.0)["loss_ce"]
    assert torch.allclose(term(_with_valid(outputs, all_valid), TARGETS, indices, 1.0)["loss_ce"], plain)

    valid = torch.tensor([[True, False, True, True], [False, True, False, False]])
    logits = outputs["pred_logits"].detach()
    target_classes = torch.full((2, 4), C)
    target_classes[0, 0], target_classes[0, 2] = TARGETS[0]["labels"][1], TARGETS[0]["labels"][0]
    nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), target_classes, reduction="none")
    w = torch.where(target_classes == C, 0.1, 1.0) * valid
    expected = (w * nll).sum() / w.sum()
    masked = _with_valid(outputs, valid)
    assert torch.allclose(term(masked, TARGETS, indices, 1.0)["loss_ce"], expected)
    logits = logits.clone()
    logits[~valid] = float("nan")
    assert torch.allclose(term({**masked, "pred_logits": logits}, TARGETS, indices, 1.0)["loss_ce"], expected)
    none_valid = _with_valid(outputs, torch.zeros(2, 4, dtype=torch.bool))
    empty = [(torch.tensor([], dtype=torch.long),) * 2] * 2
    assert term(none_valid, TARGETS, empty, 1.0)["loss_ce"].item() == 0.0


def test_query_valid_reaches_aux_layers_and_is_checked():
    outputs = random_outputs(seed=12, B=2, Q=4, num_aux=1, num_logits=C)
    indices = [(torch.tensor([0]), torch.tensor([0])), (torch.tensor([], dtype=torch.long),) * 2]
    weights = {"loss_focal": 1.0, "loss_bbox": 1.0, "loss_giou": 1.0}
    criterion = SetCriterion(_NoMatcher(), [LabelFocal(C), BoxL1GIoU()], weights)
    valid = torch.tensor([[True, False, False, False], [False, False, False, False]])
    masked = _with_valid(outputs, valid)
    masked["aux_outputs"] = [_with_valid(outputs["aux_outputs"][0], valid)]
    losses = criterion(masked, TARGETS, indices=indices, num_boxes=1.0)
    unmasked = criterion(outputs, TARGETS, indices=indices, num_boxes=1.0)
    for key in ("loss_focal", "loss_focal_0"):
        assert losses[key] < unmasked[key], key
    for key in ("loss_bbox", "loss_giou", "loss_bbox_0"):
        assert torch.equal(losses[key], unmasked[key]), key
    with pytest.raises(ValueError, match="query_valid"):
        LabelFocal(C)(_with_valid(outputs, torch.ones(2, 3, dtype=torch.bool)), TARGETS, indices, 1.0)
    with pytest.raises(ValueError, match="query_valid"):
        LabelFocal(C)(_with_valid(outputs, torch.ones(2, 4)), TARGETS, indices, 1.0)
