"""Is UP-DETR's pretext learned? Its own success metrics on held-out images.

* Patch localisation: every (image, patch) pair is its own COCO "image" holding one
  ground-truth box, where the patch was cut; its detections are the queries of that
  patch's group, scored by their patch probability (the pair-as-image trick of
  ``one_shot_eval``), so a query of another group never counts for this patch. COCO AP
  (IoU 0.5:0.95) and AP50 over all pairs with pycocotools.
* Feature reconstruction: ``FeatureReconstruction`` (``2 - 2 cos`` between a matched
  query's predicted feature and its patch's pooled backbone feature), averaged over the
  pairs, with the queries matched to the patches by the model's own matcher.

:func:`held_out_patch_metrics` computes both for a model on inputs from a seeded
``QueryPatchDatasetMapper`` (so every evaluation sees the same patches); the parts are
plain functions so they can be checked on hand-made predictions.
"""
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torchvision.ops import box_convert

from .losses import FeatureReconstruction
from .pair_eval import box_annotation, pair_precision

__all__ = ["feature_reconstruction_loss", "held_out_patch_metrics", "patch_localisation_ap", "split_by_group"]

# (boxes xyxy [n, 4], scores [n]) of one pair.
Detections = Tuple[np.ndarray, np.ndarray]


def split_by_group(boxes, scores, groups, num_patches: int) -> List[Detections]:
    """One image's queries (``boxes`` [Q, 4], ``scores`` [Q], ``groups`` [Q], the patch
    index each query was given) as the detections of each of its ``num_patches`` pairs:
    pair k gets the queries of group k only."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    groups = np.asarray(groups).reshape(-1)
    if not len(boxes) == len(scores) == len(groups):
        raise ValueError(f"{len(boxes)} boxes, {len(scores)} scores and {len(groups)} group ids")
    return [(boxes[groups == k], scores[groups == k]) for k in range(num_patches)]


def patch_localisation_ap(detections_per_pair: Sequence[Detections], boxes_per_pair) -> Dict[str, float]:
    """COCO box AP and AP50 (%) of patch localisation.

    ``boxes_per_pair``: [P, 4] xyxy, the one ground-truth box of each pair;
    ``detections_per_pair``: P ``(boxes [n, 4] xyxy, scores [n])``, the detections of
    that pair only (:func:`split_by_group`). Every pair is a COCO image of its own with
    one category, all areas, no cap on the detections per pair. No pair: NaN.
    """
    gt_boxes = np.asarray(boxes_per_pair, dtype=np.float64).reshape(-1, 4)
    if len(detections_per_pair) != len(gt_boxes):
        raise ValueError(f"{len(gt_boxes)} pairs of ground truth but {len(detections_per_pair)} of detections")
    if not len(gt_boxes):
        return {"AP": float("nan"), "AP50": float("nan")}
    gt_anns = [box_annotation(p + 1, p + 1, 1, box) for p, box in enumerate(gt_boxes)]
    dt_anns = []
    for p, (boxes, scores) in enumerate(detections_per_pair):
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        for box, score in zip(boxes, np.asarray(scores, dtype=np.float64).reshape(-1)):
            dt_anns.append(box_annotation(len(dt_anns) + 1, p + 1, 1, box, score=float(score)))
    # Image sizes only matter to pycocotools for segmentation; the boxes bound them here.
    side = float(max(1.0, gt_boxes.max(), *(d["bbox"][0] + d["bbox"][2] for d in dt_anns)))
    images = [{"id": p + 1, "height": side, "width": side} for p in range(len(gt_boxes))]
    precision = pair_precision(images, gt_anns, dt_anns, [{"id": 1, "name": "patch"}])[:, :, 0]  # [T, R]
    # Recall levels never reached hold 0 (pycocotools' -1 only marks a category without
    # ground truth, which cannot happen here: every pair has its box).
    return {"AP": float(precision.mean() * 100), "AP50": float(precision[0].mean() * 100)}


def feature_reconstruction_loss(outputs: Dict, targets: Sequence[Dict], matcher) -> Tuple[float, int]:
    """(sum over the matched pairs of ``FeatureReconstruction``'s ``2 - 2 cos``, number of
    pairs). ``outputs``: ``pred_logits``, ``pred_boxes`` (what the matcher reads) and
    ``pred_features`` [B, Q, C]; ``targets``: ``labels``, ``boxes`` (normalised cxcywh)
    and ``features`` [M, C] per image."""
    indices = matcher({k: outputs[k] for k in ("pred_logits", "pred_boxes")}, targets)
    count = sum(len(src) for src, _ in indices)
    if count == 0:
        return 0.0, 0
    # num_boxes 1: the term's own sum over the pairs, averaged by the caller over all batches.
    loss = FeatureReconstruction()(outputs, targets, indices, 1.0)["loss_feature"]
    return float(loss), count


@torch.no_grad()
def held_out_patch_metrics(model, inputs: Sequence[Dict], batch_size: int = 4,
                           matcher: Optional[torch.nn.Module] = None) -> Dict[str, float]:
    """``{"patch_AP", "patch_AP50", "feature_loss"}`` of an ``UpDetr`` or ``DeformableUpDetr`` on held-out inputs
    (``QueryPatchDatasetMapper`` outputs: ``image``, ``patches``, ``instances`` whose box
    k is where patch k was cut, all in resized-image pixels).

    The model runs in eval mode (no query dropout), batched by ``batch_size``; boxes are
    compared in resized-image pixels. ``feature_loss`` is the mean over all (image,
    patch) pairs, the queries matched by ``matcher`` (default the model's criterion's);
    NaN when the model has no feature head (``MODEL.UPDETR.FEATURE_RECONSTRUCTION`` off).
    """
    matcher = matcher if matcher is not None else model.criterion.matcher
    align = getattr(model, "feature_align", None)
    was_training = model.training
    model.eval()
    detections, gt_boxes, loss_sum, pairs = [], [], 0.0, 0
    try:
        for start in range(0, len(inputs), batch_size):
            batch = list(inputs[start:start + batch_size])
            state = model.run_phases(batch)
            outputs = state.outputs
            groups = state.queries.meta["query_groups"].cpu().numpy()
            scores = model.patch_scores(outputs["pred_logits"]).cpu().numpy()
            for i, ((h, w), x) in enumerate(zip(state.images.image_sizes, batch)):
                scale = torch.tensor([w, h, w, h], dtype=torch.float32)
                boxes = box_convert(outputs["pred_boxes"][i].cpu(), "cxcywh", "xyxy") * scale
                truth = x["instances"].gt_boxes.tensor.numpy()
                detections += split_by_group(boxes.numpy(), scores[i], groups, len(truth))
                gt_boxes += list(truth)
            if align is not None:
                targets = state.targets
                for target, features in zip(targets, state.queries.meta["patch_features"]):
                    target["features"] = features
                # The predict phase adds pred_features in training only.
                with_features = dict(outputs, pred_features=align(state.decoded.hs)[-1])
                batch_sum, batch_pairs = feature_reconstruction_loss(with_features, targets, matcher)
                loss_sum, pairs = loss_sum + batch_sum, pairs + batch_pairs
    finally:
        model.train(was_training)
    ap = patch_localisation_ap(detections, np.asarray(gt_boxes).reshape(-1, 4))
    return {"patch_AP": ap["AP"], "patch_AP50": ap["AP50"],
            "feature_loss": loss_sum / pairs if pairs else float("nan")}
