"""Stage B over a whole dataset: stage A's region embeddings clustered into K
pseudo-classes, written as round 0 of a targets folder (see :mod:`.targets`)."""
import logging
import os
from typing import Dict

import numpy as np

from .clustering import ClusteringParams, cluster_size_warning, pseudo_label_coco, spherical_kmeans
from .proposal_shards import coco_images, load_proposals
from .targets import PseudoLabelRounds

logger = logging.getLogger(__name__)

__all__ = ["cluster_proposals"]


def cluster_proposals(proposals_dir: str, targets_dir: str, params: ClusteringParams = ClusteringParams()) -> Dict:
    """Cluster every proposal of ``proposals_dir`` (stage A), write
    ``round_000.json`` (categories 1..K) and the centroids to ``targets_dir``; returns a
    summary (counts, cluster sizes, the sanity-rule warning if any)."""
    proposals = load_proposals(proposals_dir)
    records = proposals.records
    num = len(proposals.embeddings)
    if num == 0:
        raise ValueError(f"stage A found no proposals in {proposals_dir}; loosen SIMDETR.PROPOSALS filters")
    labels, centroids = spherical_kmeans(proposals.embeddings.astype(np.float32), params)
    warning = cluster_size_warning(labels, params)
    if warning:
        logger.warning(warning)
    per_image = [labels[a:b] for a, b in zip(proposals.offsets[:-1], proposals.offsets[1:])]
    coco = pseudo_label_coco(
        coco_images(proposals.records), proposals.boxes, per_image, params.num_clusters,
        info={"description": "SimDETR pseudo-labels", "round": 0, "iteration": 0,
              "proposals": os.path.abspath(proposals_dir)},
    )
    os.makedirs(targets_dir, exist_ok=True)
    np.save(os.path.join(targets_dir, "centroids.npy"), centroids)
    path = PseudoLabelRounds(targets_dir).write(0, coco, iteration=0)
    sizes = np.bincount(labels, minlength=params.num_clusters)
    counts = np.array([len(b) for b in proposals.boxes])
    summary = {
        "images": len(records), "proposals": num, "num_clusters": params.num_clusters,
        "proposals_per_image_median": float(np.median(counts)) if len(counts) else 0.0,
        "images_with_fewer_than_2": int((counts < 2).sum()),
        "largest_cluster_fraction": float(sizes.max() / num), "empty_clusters": int((sizes == 0).sum()),
        "warning": warning, "path": path,
    }
    logger.info("Stage B: %d proposals of %d images in %d clusters (largest %.1f %%, %d empty) -> %s",
                num, len(records), params.num_clusters, 100 * summary["largest_cluster_fraction"],
                summary["empty_clusters"], path)
    return summary
