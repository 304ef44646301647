"""SimDETR stage B: pseudo-classes by clustering object proposals over the whole dataset.

SimDETR (Metaxas et al., arXiv 2307.15697) pretrains DETR on unsupervised proposals
whose class is a cluster id of the proposal's feature embedding, so the detector learns
an object-level, semantic classification pretext as well as localisation. Only the
paper's first page is public: the procedure and defaults here (spherical k-means over
L2-normalised embeddings, K=256 as in AlignDet's cluster-id-as-class pretraining, about
3x COCO's 80 classes, and the "no cluster above 20 %" sanity rule) are this project's
proposals, not the paper's.

Why faiss and not scikit-learn: faiss runs *spherical* k-means natively (centroids are
re-normalised every iteration, so the objective is cosine similarity, which is what
self-supervised embeddings are trained for), is seeded and reproducible, subsamples the
training set to ``max_points_per_centroid`` points per centroid, is multi-threaded, and
scales to millions of vectors. scikit-learn's ``KMeans`` is Euclidean with mean
centroids, i.e. not spherical.

The result is written as a COCO-format json (categories 1..K, ``category_id = cluster
+ 1``) so the ordinary Detectron2 / pycocotools loaders read it.
"""
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

__all__ = ["ClusteringParams", "cluster_size_warning", "coco_boxes_xyxy", "oversized_clusters",
           "pseudo_label_coco", "spherical_kmeans"]


# ClusteringParams.init -> faiss ClusteringInitMethod constant name.
_INIT_METHODS = {
    "random": "ClusteringInitMethod_RANDOM",
    "kmeans++": "ClusteringInitMethod_KMEANS_PLUS_PLUS",
    "afk-mc2": "ClusteringInitMethod_AFK_MC2",
}


@dataclass(frozen=True)
class ClusteringParams:
    """Spherical k-means settings. ``num_clusters`` (K) = 256 is a proposed default
    (AlignDet's value), not SimDETR's, which is not public."""

    num_clusters: int = 256
    niter: int = 20
    seed: int = 0
    nredo: int = 1  # k-means restarts; faiss keeps the best objective
    max_cluster_fraction: float = 0.2  # sanity rule: no cluster above ~20 % of proposals
    max_points_per_centroid: int = 256  # faiss trains on a subsample of K * this points
    # Seeding: k-means++ (faiss' default is random points, which on separated data often
    # puts two centroids in one group and one across two); "afk-mc2" is its fast
    # approximation, "random" the faiss default.
    init: str = "kmeans++"

    def __post_init__(self):
        for name, low in (("num_clusters", 1), ("niter", 1), ("nredo", 1), ("max_points_per_centroid", 1), ("seed", 0)):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < low:
                raise ValueError(f"ClusteringParams.{name} must be an integer >= {low}, got {value!r}")
        if not 0.0 < self.max_cluster_fraction <= 1.0:
            raise ValueError(
                f"ClusteringParams.max_cluster_fraction must be in (0, 1], got {self.max_cluster_fraction!r}"
            )
        if self.init not in _INIT_METHODS:
            raise ValueError(f"ClusteringParams.init must be one of {sorted(_INIT_METHODS)}, got {self.init!r}")


def _normalised(embeddings: np.ndarray) -> np.ndarray:
    x = np.asarray(embeddings)
    if x.ndim != 2 or x.shape[1] < 1:
        raise ValueError(f"embeddings must be a 2-D array [N, D], got shape {x.shape}")
    x = np.ascontiguousarray(x, dtype=np.float32)
    if not np.isfinite(x).all():
        raise ValueError("embeddings contain NaN or infinite values")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    # A zero vector has no direction; it stays zero (and lands in an arbitrary cluster)
    # rather than becoming NaN.
    return np.ascontiguousarray(x / np.maximum(norms, 1e-12), dtype=np.float32)


def spherical_kmeans(embeddings: np.ndarray, params: ClusteringParams) -> Tuple[np.ndarray, np.ndarray]:
    """Cluster ``embeddings`` [N, D] by cosine similarity.

    Returns ``(labels, centroids)``: int64 [N] in ``0..K-1`` and float32 [K, D], unit
    norm. Training uses faiss' subsample, but every vector is assigned, to the centroid
    of maximum inner product. Deterministic for a fixed seed: two calls agree (tested),
    and 300k x 128-d vectors gave identical labels and centroids with 1 and 2 OpenMP
    threads, so the thread count is left to faiss.
    """
    x = _normalised(embeddings)
    n, d = x.shape
    k = int(params.num_clusters)
    if k > n:
        raise ValueError(
            f"num_clusters: K={k} is more than the {n} proposals to cluster; lower "
            "num_clusters or cluster more proposals (more images or looser proposal filters)"
        )
    import faiss  # here, not at module level: `import updetr_d2` should not load it

    kmeans = faiss.Kmeans(d, k, niter=int(params.niter), seed=int(params.seed), nredo=int(params.nredo),
                          spherical=True, max_points_per_centroid=int(params.max_points_per_centroid),
                          verbose=False)
    if params.init != "random":
        if not hasattr(kmeans.cp, "init_method"):  # older faiss: random seeding only
            raise ValueError(f"init={params.init!r} needs a newer faiss; use init='random'")
        kmeans.cp.init_method = getattr(faiss, _INIT_METHODS[params.init])
    kmeans.train(x)
    # faiss normalises spherical centroids already; again here so the contract
    # (unit-norm centroids, inner product = cosine) does not rest on that detail.
    centroids = _normalised(kmeans.centroids.reshape(k, d))
    index = faiss.IndexFlatIP(d)
    index.add(centroids)
    _, assign = index.search(x, 1)
    return assign[:, 0].astype(np.int64), centroids


def oversized_clusters(labels, num_clusters: int, max_fraction: float) -> List[Tuple[int, float]]:
    """``(cluster id, fraction)`` of the clusters holding more than ``max_fraction`` of
    all labels, largest first."""
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    if labels.size == 0:
        return []
    counts = np.bincount(labels, minlength=int(num_clusters))
    fractions = counts / labels.size
    big = np.flatnonzero(fractions > max_fraction)
    big = big[np.argsort(-fractions[big], kind="stable")]
    return [(int(c), float(fractions[c])) for c in big]


def cluster_size_warning(labels, params: ClusteringParams) -> Optional[str]:
    """A message naming the oversized clusters and what to change, or None."""
    big = oversized_clusters(labels, params.num_clusters, params.max_cluster_fraction)
    if not big:
        return None
    listed = ", ".join(f"cluster {c} holds {f:.1%}" for c, f in big)
    return (
        f"{len(big)} pseudo-class(es) hold more than {params.max_cluster_fraction:.0%} of the "
        f"{np.asarray(labels).size} proposals ({listed}). Such a class teaches the detector "
        "little: lower num_clusters (or raise it if the data is very diverse), change the "
        "seed / raise nredo, or check the proposals: one cluster of backgrounds or "
        "near-duplicate boxes usually means the proposal filters are too loose."
    )


def pseudo_label_coco(
    images: Sequence[dict],
    boxes_per_image: Sequence[np.ndarray],
    labels_per_image: Sequence[np.ndarray],
    num_clusters: int,
    scores_per_image: Optional[Sequence[np.ndarray]] = None,
    info: Optional[dict] = None,
) -> dict:
    """A COCO instances dict of the pseudo-labelled proposals.

    ``images``: dicts with ``id`` (int), ``file_name``, ``height``, ``width`` (kept as
    given). Boxes are xyxy [n, 4] in pixels, labels 0-based cluster ids [n]. Annotations
    get ids from 1, ``category_id = label + 1``, xywh ``bbox``, ``area = w * h``,
    ``iscrowd = 0`` and, when scores are given, ``score``; no ``segmentation`` key (these
    are boxes only). Images without boxes are still listed.
    """
    k = int(num_clusters)
    if k < 1:
        raise ValueError(f"num_clusters must be >= 1, got {num_clusters!r}")
    if len(boxes_per_image) != len(images) or len(labels_per_image) != len(images):
        raise ValueError(
            f"{len(images)} images but {len(boxes_per_image)} box arrays and "
            f"{len(labels_per_image)} label arrays"
        )
    if scores_per_image is not None and len(scores_per_image) != len(images):
        raise ValueError(f"{len(images)} images but {len(scores_per_image)} score arrays")

    out_images, annotations, seen = [], [], set()
    for i, img in enumerate(images):
        for key in ("id", "file_name", "height", "width"):
            if key not in img:
                raise ValueError(f"image {i} has no {key!r}")
        image_id = int(img["id"])
        if image_id in seen:
            raise ValueError(f"image id {image_id} appears twice")
        seen.add(image_id)
        out_images.append({**img, "id": image_id, "height": int(img["height"]), "width": int(img["width"])})

        boxes = np.asarray(boxes_per_image[i], dtype=np.float64).reshape(-1, 4)
        labels = np.asarray(labels_per_image[i]).reshape(-1).astype(np.int64)
        if len(labels) != len(boxes):
            raise ValueError(f"image {image_id}: {len(boxes)} boxes but {len(labels)} labels")
        if len(labels) and (labels.min() < 0 or labels.max() >= k):
            raise ValueError(f"image {image_id}: labels must be in 0..{k - 1}")
        if not np.isfinite(boxes).all() or (boxes[:, 2:] < boxes[:, :2]).any():
            raise ValueError(f"image {image_id}: boxes must be finite xyxy with x2 >= x1, y2 >= y1")
        scores = None
        if scores_per_image is not None:
            scores = np.asarray(scores_per_image[i], dtype=np.float64).reshape(-1)
            if len(scores) != len(boxes):
                raise ValueError(f"image {image_id}: {len(boxes)} boxes but {len(scores)} scores")

        for j, (box, label) in enumerate(zip(boxes, labels)):
            w, h = float(box[2] - box[0]), float(box[3] - box[1])
            ann = {
                "id": len(annotations) + 1,
                "image_id": image_id,
                "category_id": int(label) + 1,  # COCO categories start at 1
                "bbox": [float(box[0]), float(box[1]), w, h],
                "area": w * h,
                "iscrowd": 0,
            }
            if scores is not None:
                ann["score"] = float(scores[j])
            annotations.append(ann)

    meta = dict(info or {})
    meta.setdefault("description", "SimDETR pseudo-labels: proposals classed by cluster id")
    meta.setdefault("num_clusters", k)
    meta.setdefault("num_images", len(out_images))
    meta.setdefault("num_annotations", len(annotations))
    return {
        "info": meta,
        "images": out_images,
        "annotations": annotations,
        "categories": [{"id": c, "name": f"cluster_{c}"} for c in range(1, k + 1)],
    }


def coco_boxes_xyxy(coco: dict) -> Dict[int, Tuple[np.ndarray, np.ndarray]]:
    """image id -> (xyxy boxes float32 [n, 4], 0-based labels int64 [n]) from a dict made
    by :func:`pseudo_label_coco` (or any COCO dict with categories 1..K). Every listed
    image has an entry, empty arrays when it has no annotations."""
    per_image: Dict[int, Tuple[list, list]] = {int(img["id"]): ([], []) for img in coco["images"]}
    for ann in coco["annotations"]:
        x, y, w, h = ann["bbox"]
        boxes, labels = per_image.setdefault(int(ann["image_id"]), ([], []))
        boxes.append([x, y, x + w, y + h])
        labels.append(int(ann["category_id"]) - 1)
    return {
        image_id: (
            np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
            np.asarray(labels, dtype=np.int64).reshape(-1),
        )
        for image_id, (boxes, labels) in per_image.items()
    }
