"""The pretexts' own held-out success metrics on hand-made predictions: UP-DETR's patch
localisation AP (pair-as-image, a patch scored on its own query group only) and feature
reconstruction loss; SimDETR's assignment of held-out proposals to the stage-B centroids
and the detector's AP against the resulting pseudo-labels."""
import os

import numpy as np
import pytest
import torch
from PIL import Image

import updetr_d2  # noqa: F401  (before Detectron2's data modules: its compat fixes)
from detectron2.data import DatasetCatalog
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances

from updetr_d2.config import load_yaml_config
from updetr_d2.methods.simdetr import (
    ClusteringParams,
    ProposalSet,
    assign_to_centroids,
    held_out_pseudo_labels,
    pseudo_label_ap,
    spherical_kmeans,
)
from updetr_d2.methods.updetr import (
    QueryPatchDatasetMapper,
    feature_reconstruction_loss,
    held_out_patch_metrics,
    patch_localisation_ap,
    split_by_group,
)
from updetr_d2.methods.updetr.one_shot_eval import _coco_ap50
from updetr_d2.modeling.matcher import HungarianMatcher

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BOX = [0.0, 0.0, 100.0, 100.0]
OFF = [300.0, 300.0, 350.0, 350.0]  # IoU 0 with BOX
IOU_062 = [0.0, 0.0, 100.0, 62.0]  # IoU 0.62 with BOX: a hit at IoU 0.5, 0.55, 0.6 only


def one(box, score):
    return np.array([box]), np.array([score])


# --- UP-DETR: patch localisation ------------------------------------------------------
def test_perfect_boxes_give_100_and_boxes_off_give_0():
    truth = [BOX, [10, 20, 60, 90], [5, 5, 40, 30]]
    perfect = patch_localisation_ap([one(b, 0.5) for b in truth], truth)
    assert perfect == pytest.approx({"AP": 100.0, "AP50": 100.0})
    off = patch_localisation_ap([one(OFF, 0.9) for _ in truth], truth)
    assert off == pytest.approx({"AP": 0.0, "AP50": 0.0})


def test_a_known_mix():
    """Four pairs, detections by score: a perfect box (0.9), one at IoU 0.62 (0.8), one off
    (0.7), none for the fourth pair. IoU 0.5-0.6 (3 of 10 thresholds): hit, hit, miss, so
    precision 1 up to recall 1/2: 51 of COCO's 101 recall points. IoU 0.65-0.95 (7): hit,
    miss, miss, precision 1 up to recall 1/4: 26 points."""
    detections = [one(BOX, 0.9), one(IOU_062, 0.8), one(OFF, 0.7), (np.zeros((0, 4)), np.zeros(0))]
    result = patch_localisation_ap(detections, [BOX] * 4)
    assert result["AP50"] == pytest.approx(100 * 51 / 101)
    assert result["AP"] == pytest.approx(100 * (3 * 51 + 7 * 26) / (10 * 101))


def test_ap50_agrees_with_the_one_shot_evaluation():
    rng = np.random.default_rng(0)
    truth = rng.uniform(0, 50, (6, 2)).repeat(2, axis=1)[:, [0, 2, 1, 3]] + [[0, 0, 40, 40]]
    detections = [(t + rng.normal(0, 8, (3, 4)), rng.random(3)) for t in truth]
    pairs = [{"id": p + 1, "class": 0, "height": 200, "width": 200, "boxes": [t], "iscrowd": [0]}
             for p, t in enumerate(truth)]
    flat = [{"image_id": p + 1, "class": 0, "box": b, "score": s}
            for p, (boxes, scores) in enumerate(detections) for b, s in zip(boxes, scores)]
    expected = _coco_ap50(pairs, flat, [0])[0]
    assert 0 < expected < 100
    assert patch_localisation_ap(detections, truth)["AP50"] == pytest.approx(expected)


def test_the_queries_of_another_group_never_count_for_a_patch():
    """Each group's query lands exactly on the OTHER patch: no pair has a hit."""
    truth = np.array([BOX, [200.0, 200.0, 260.0, 240.0]])
    boxes = np.array([OFF, truth[1], truth[0], OFF])
    scores = np.array([0.2, 0.9, 0.9, 0.2])
    pairs = split_by_group(boxes, scores, groups=[0, 0, 1, 1], num_patches=2)
    assert [len(b) for b, _ in pairs] == [2, 2]
    assert patch_localisation_ap(pairs, truth) == pytest.approx({"AP": 0.0, "AP50": 0.0})
    swapped = split_by_group(boxes, scores, groups=[1, 1, 0, 0], num_patches=2)
    assert patch_localisation_ap(swapped, truth) == pytest.approx({"AP": 100.0, "AP50": 100.0})


# --- UP-DETR: feature reconstruction ----------------------------------------------------
def feature_case(pred_features):
    """One image, 4 queries, 2 patches: queries 1 and 3 sit exactly on patches 0 and 1."""
    targets = [{"labels": torch.zeros(2, dtype=torch.int64),
                "boxes": torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.7, 0.6, 0.3, 0.4]]),
                "features": torch.tensor([[1.0, 2.0, 0.0], [0.0, -1.0, 3.0]])}]
    outputs = {"pred_logits": torch.tensor([[[0.0, 2.0], [4.0, 0.0], [0.0, 2.0], [4.0, 0.0]]]),
               "pred_boxes": torch.tensor([[[0.1, 0.9, 0.1, 0.1], [0.3, 0.3, 0.2, 0.2],
                                            [0.9, 0.1, 0.1, 0.1], [0.7, 0.6, 0.3, 0.4]]]),
               "pred_features": pred_features}
    return outputs, targets


def test_the_feature_loss_is_zero_when_predicted_features_equal_the_targets():
    matcher = HungarianMatcher(cost_class=1.0, cost_bbox=5.0, cost_giou=2.0)
    noise = torch.randn(1, 4, 3, generator=torch.Generator().manual_seed(0))
    same = noise.clone()
    same[0, 1] = torch.tensor([1.0, 2.0, 0.0]) * 3  # the loss compares directions only
    same[0, 3] = torch.tensor([0.0, -1.0, 3.0])
    assert feature_reconstruction_loss(*feature_case(same), matcher) == pytest.approx((0.0, 2), abs=1e-6)
    # Swapped features: each matched query predicts the other patch's feature.
    swapped = same.clone()
    swapped[0, 1], swapped[0, 3] = same[0, 3], same[0, 1]
    cos = float(torch.nn.functional.cosine_similarity(same[0, 1], same[0, 3], dim=0))
    total, pairs = feature_reconstruction_loss(*feature_case(swapped), matcher)
    assert pairs == 2 and total == pytest.approx(2 * (2 - 2 * cos), rel=1e-5)


def test_held_out_patch_metrics_of_a_small_updetr():
    cfg = load_yaml_config(os.path.join(ROOT, "projects", "UPDETR", "configs", "updetr_R18_demo_pretrain.yaml"),
                           ["INPUT.MIN_SIZE_TEST", "128", "INPUT.MAX_SIZE_TEST", "160", "INPUT.QUERY_PATCH.SIZE", "32"])
    cfg.MODEL.DEVICE = "cpu"
    torch.manual_seed(0)
    model = build_model(cfg)
    model.train()
    mapper = QueryPatchDatasetMapper(cfg, False, seed=0)
    inputs = [mapper(r) for r in DatasetCatalog.get("updetr_demo_val")[:3]]
    first = held_out_patch_metrics(model, inputs, batch_size=2)
    assert model.training  # given back in the mode it came in
    assert set(first) == {"patch_AP", "patch_AP50", "feature_loss"}
    assert 0 <= first["patch_AP"] <= first["patch_AP50"] <= 100
    assert 0 < first["feature_loss"] <= 4  # 2 - 2 cos
    # The same patches every time, so the same numbers (at the same batch size: padding to
    # the batch's largest image changes a GroupNorm backbone's features).
    again = held_out_patch_metrics(model, [mapper(r) for r in DatasetCatalog.get("updetr_demo_val")[:3]], batch_size=2)
    assert again == pytest.approx(first, rel=1e-6)


# --- SimDETR -----------------------------------------------------------------------------
def test_assign_to_centroids_is_cosine():
    centroids = np.array([[10.0, 0.0], [0.0, 1.0]])
    embeddings = np.array([[3.0, 1.0], [0.1, 2.0], [-1.0, 0.2], [2.0, 1.0]])
    # [2, 1] is nearer [0, 1] in Euclidean distance, but at a smaller angle to [10, 0].
    assert assign_to_centroids(embeddings, centroids).tolist() == [0, 1, 1, 0]
    assert assign_to_centroids(np.zeros((0, 2)), centroids).shape == (0,)
    with pytest.raises(ValueError, match="dimensions"):
        assign_to_centroids(np.ones((2, 3)), centroids)


def test_assign_to_centroids_reproduces_the_spherical_kmeans_labels():
    rng = np.random.default_rng(0)
    directions = np.eye(4, 16)
    embeddings = np.concatenate([d * rng.uniform(0.5, 3, (30, 1)) + rng.normal(0, 0.05, (30, 16))
                                 for d in directions]).astype(np.float32)
    labels, centroids = spherical_kmeans(embeddings, ClusteringParams(num_clusters=4, seed=0))
    assert np.array_equal(assign_to_centroids(embeddings, centroids), labels)


def proposal_set(folder, sizes=((64, 80), (72, 72), (80, 64))):
    """Images on disk with 2 proposals each; embeddings along the x or y axis."""
    records, boxes, embeddings = [], [], []
    for i, (h, w) in enumerate(sizes):
        path = os.path.join(folder, f"{i}.png")
        Image.fromarray(np.full((h, w, 3), 40 * i, np.uint8)).save(path)
        records.append({"file_name": path, "height": h, "width": w})
        boxes.append(np.array([[2.0, 4.0, 30.0, 40.0], [10.0, 12.0, 60.0, 50.0]]))
        embeddings += [[1.0, 0.1 * i], [0.2, 1.0 + i]]
    offsets = np.arange(0, 2 * len(sizes) + 1, 2)
    return ProposalSet(records, boxes, [np.zeros(2, np.int16)] * len(sizes), np.array(embeddings, np.float16),
                       offsets)


def test_held_out_pseudo_labels(tmp_path):
    proposals = proposal_set(str(tmp_path))
    coco = held_out_pseudo_labels(proposals, np.eye(2, 2), max_images=2)
    assert [im["id"] for im in coco["images"]] == [1, 2]
    assert [a["category_id"] for a in coco["annotations"]] == [1, 2, 1, 2]
    assert coco["annotations"][1]["bbox"] == [10.0, 12.0, 50.0, 38.0]
    assert len(coco["categories"]) == 2
    assert len(held_out_pseudo_labels(proposals, np.eye(2, 2))["images"]) == 3


class PseudoLabelOracle(torch.nn.Module):
    """Detects each image's pseudo-labels (original pixels), with its classes moved by
    ``shift``."""

    def __init__(self, coco, shift=0):
        super().__init__()
        self.coco, self.shift = coco, shift

    def forward(self, batch):
        results = []
        for x in batch:
            anns = [a for a in self.coco["annotations"] if a["image_id"] == x["image_id"]]
            inst = Instances((x["height"], x["width"]))
            inst.pred_boxes = Boxes(torch.tensor([[b[0], b[1], b[0] + b[2], b[1] + b[3]] for b in
                                                  (a["bbox"] for a in anns)], dtype=torch.float32).reshape(-1, 4))
            inst.scores = torch.full((len(anns),), 0.9)
            inst.pred_classes = torch.tensor([(a["category_id"] - 1 + self.shift) % 2 for a in anns])
            results.append({"instances": inst})
        return results


def test_pseudo_label_ap_of_an_oracle_and_of_wrong_classes(tmp_path):
    coco = held_out_pseudo_labels(proposal_set(str(tmp_path)), np.eye(2, 2))
    names = set(DatasetCatalog.list())
    right = pseudo_label_ap(PseudoLabelOracle(coco), coco, 64, 96)
    assert right == pytest.approx({"AP": 100.0, "AP50": 100.0, "AP75": 100.0})
    wrong = pseudo_label_ap(PseudoLabelOracle(coco, shift=1), coco, 64, 96)
    assert wrong == pytest.approx({"AP": 0.0, "AP50": 0.0, "AP75": 0.0})
    assert set(DatasetCatalog.list()) == names  # the temporary dataset is gone
