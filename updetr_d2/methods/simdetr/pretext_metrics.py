"""Is SimDETR's pretext learned? The detector's AP against its own kind of pseudo-labels
on held-out images.

The held-out images go through stage A with the pretraining's settings (``tools/simdetr.py
proposals``); each proposal gets the pseudo-class of the nearest stage-B centroid
(``centroids.npy`` of the targets folder) by cosine similarity, as the spherical k-means
assigned the training proposals (:func:`assign_to_centroids`), which gives a held-out
pseudo-label COCO dict (:func:`held_out_pseudo_labels`). :func:`pseudo_label_ap` is then
Detectron2's COCO evaluation of a detector against it: class-aware AP over the K
pseudo-classes, so it measures both finding the regions and naming their cluster.
"""
import json
import os
import tempfile
import uuid
from typing import Dict, Optional

import numpy as np

from .clustering import pseudo_label_coco
from .proposal_shards import ProposalSet, coco_images

__all__ = ["assign_to_centroids", "held_out_pseudo_labels", "pseudo_label_ap"]


def _unit_rows(x: np.ndarray, what: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"{what} must be a 2-D array [N, D], got shape {x.shape}")
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def assign_to_centroids(embeddings, centroids) -> np.ndarray:
    """The 0-based pseudo-class of each embedding ([N, D] -> int64 [N]): the centroid
    ([K, D]) of largest cosine similarity, the first one on a tie."""
    x, c = _unit_rows(embeddings, "embeddings"), _unit_rows(centroids, "centroids")
    if x.shape[1] != c.shape[1]:
        raise ValueError(f"embeddings have {x.shape[1]} dimensions, centroids {c.shape[1]}")
    if len(x) == 0:
        return np.zeros(0, dtype=np.int64)
    return np.argmax(x @ c.T, axis=1).astype(np.int64)


def held_out_pseudo_labels(proposals: ProposalSet, centroids, max_images: Optional[int] = None,
                           info: Optional[Dict] = None) -> Dict:
    """A COCO dict (categories 1..K, ``category_id`` = pseudo-class + 1, image ids 1..N
    in the dataset's order, absolute file names) of the first ``max_images`` images of a
    stage-A ``ProposalSet`` (all by default), each proposal labelled by
    :func:`assign_to_centroids`."""
    centroids = np.asarray(centroids)
    count = len(proposals.records) if max_images is None else min(int(max_images), len(proposals.records))
    offsets = proposals.offsets
    labels = assign_to_centroids(proposals.embeddings[: offsets[count]], centroids)
    per_image = [labels[offsets[i]:offsets[i + 1]] for i in range(count)]
    return pseudo_label_coco(coco_images(proposals.records[:count]), proposals.boxes[:count], per_image,
                             len(centroids), info=dict(info or {}, description="SimDETR held-out pseudo-labels"))


def pseudo_label_ap(model, coco: Dict, min_size: int, max_size: int, image_format: str = "RGB",
                    num_workers: int = 0) -> Dict[str, float]:
    """``{"AP", "AP50", "AP75"}`` (%) of ``model`` against the pseudo-labels ``coco``
    (:func:`held_out_pseudo_labels`), by Detectron2's ``COCOEvaluator``: every image
    resized with ``ResizeShortestEdge(min_size, max_size)``, the model in eval mode, its
    ``pred_classes`` read as 0-based pseudo-classes. NaN when no image has a pseudo-label.

    The dict is registered as a temporary dataset for the evaluation and unregistered after.
    """
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.data.datasets import register_coco_instances
    from detectron2.evaluation import COCOEvaluator, inference_on_dataset

    from .self_training import relabel_loader

    nan = {"AP": float("nan"), "AP50": float("nan"), "AP75": float("nan")}
    if not coco["annotations"]:
        return nan
    name = f"simdetr_held_out_{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "pseudo_labels.json")
        with open(path, "w") as f:
            json.dump(coco, f)
        register_coco_instances(name, {}, path, "")
        try:  # inference_on_dataset puts the model in eval mode and back
            _, loader = relabel_loader([name], min_size, max_size, image_format, num_workers)
            results = inference_on_dataset(model, loader, COCOEvaluator(name, output_dir=None))
        finally:
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
    bbox = results.get("bbox", {}) if results else {}
    return {k: float(bbox.get(k, nan[k])) for k in nan}
