"""SimDETR stage A: semantic region proposals from one high-level feature map.

SimDETR (arXiv 2307.15697) pre-trains a DETR on unlabelled images with object-like
regions obtained by clustering the high-level feature maps of a self-supervised backbone.
The paper gives no details of that procedure past its first page, so what follows is the
project's specification, not the paper's: Ward agglomerative clustering of the
L2-normalised cell features with 4-neighbour grid connectivity, the dendrogram cut at
several granularities, each region's tight box, size filters, greedy IoU de-duplication
across levels (coarse kept first) and a per-image cap.

Pure computation on one image; no data loading, no file I/O.
"""
import math
from dataclasses import dataclass
from typing import NamedTuple, Tuple

import numpy as np
import torch
from torchvision.ops import box_iou

__all__ = ["ProposalParams", "RegionProposals", "region_proposals", "scale_boxes"]


@dataclass(frozen=True)
class ProposalParams:
    """Hyperparameters of the stage-A proposals. The defaults are the project's proposed
    defaults, NOT values from the SimDETR paper (which does not give any).

    cluster_levels: cluster counts k at which the Ward dendrogram is cut, coarse first.
    upsample: bilinear upsampling factor of the feature map before clustering.
    min_cells: regions with fewer grid cells (on the clustered grid) are dropped.
    min_area_fraction / max_image_fraction: box-area bounds as fractions of H * W.
    dedup_iou: a box is dropped if its IoU with an already kept box exceeds this.
    max_proposals: cap per image. min_proposals: images with fewer proposals are
    skipped for training (stored here, applied by the caller).
    """

    cluster_levels: Tuple[int, ...] = (2, 3, 4, 6, 8, 12, 16)
    upsample: int = 1
    min_cells: int = 2
    min_area_fraction: float = 0.005
    max_image_fraction: float = 0.9
    dedup_iou: float = 0.9
    max_proposals: int = 30
    min_proposals: int = 2

    def __post_init__(self):
        levels = tuple(self.cluster_levels)
        if not levels:
            raise ValueError("cluster_levels must not be empty")
        for k in levels:
            if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 2:
                raise ValueError(f"cluster_levels must hold ints >= 2, got {levels!r}")
        if any(b <= a for a, b in zip(levels, levels[1:])):
            raise ValueError(f"cluster_levels must be sorted ascending without duplicates, got {levels!r}")
        # Frozen dataclass: normalise a list to a tuple so the params stay hashable.
        object.__setattr__(self, "cluster_levels", tuple(int(k) for k in levels))
        for name in ("upsample", "min_cells", "max_proposals", "min_proposals"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"{name} must be an int >= 1, got {v!r}")
        for name in ("min_area_fraction", "max_image_fraction", "dedup_iou"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not 0.0 < float(v) <= 1.0:
                raise ValueError(f"{name} must be in (0, 1], got {v!r}")


class RegionProposals(NamedTuple):
    """boxes float32 [N,4] xyxy pixels; levels int64 [N] (cluster count k); embeddings
    float32 [N,C] unit norm; masks bool [N,h,w] on the clustered grid; areas float32 [N]."""

    boxes: np.ndarray
    levels: np.ndarray
    embeddings: np.ndarray
    masks: np.ndarray
    areas: np.ndarray


def _empty(c: int, h: int, w: int) -> RegionProposals:
    return RegionProposals(
        np.zeros((0, 4), np.float32), np.zeros((0,), np.int64), np.zeros((0, c), np.float32),
        np.zeros((0, h, w), bool), np.zeros((0,), np.float32))


def _l2_normalise(x: np.ndarray, axis: int = -1) -> np.ndarray:
    n = np.linalg.norm(x, axis=axis, keepdims=True)
    return x / np.maximum(n, 1e-12)  # an all-zero vector stays zero instead of NaN


def _cut_tree(children: np.ndarray, n_leaves: int, ks) -> dict:
    """Leaf labels for each k (k clusters = the first n_leaves - k merges replayed).
    One union-find pass serves all levels: fewer merges (large k) are snapshotted first.
    Labels are renumbered by first occurrence in raster order so they are deterministic."""
    parent = np.arange(n_leaves + len(children))

    def find(i):
        root = i
        while parent[root] != root:
            root = parent[root]
        while parent[i] != root:  # path compression keeps the pass near-linear
            parent[i], i = root, parent[i]
        return root

    wanted = {n_leaves - k: k for k in ks}
    out, done = {}, 0
    for n_merges in sorted(wanted):
        while done < n_merges:
            a, b = children[done]
            parent[find(int(a))] = n_leaves + done
            parent[find(int(b))] = n_leaves + done
            done += 1
        roots = np.array([find(i) for i in range(n_leaves)])
        _, first, labels = np.unique(roots, return_index=True, return_inverse=True)
        rank = np.argsort(np.argsort(first))  # cluster order = its smallest cell index
        out[wanted[n_merges]] = rank[labels.reshape(-1)]
    return out


def region_proposals(features, stride: float, image_size: Tuple[int, int],
                     params: ProposalParams = ProposalParams()) -> RegionProposals:
    """Region proposals for ONE image from its feature map ``features`` [C, h, w] (tensor or
    ndarray) of stride ``stride``; ``image_size`` = (H, W) of the valid, unpadded image.
    Boxes are in that image's pixel coordinates; see the module docstring."""
    feats = torch.as_tensor(np.asarray(features) if not torch.is_tensor(features) else features)
    if feats.ndim != 3:
        raise ValueError(f"features must be [C, h, w], got shape {tuple(feats.shape)}")
    if not stride > 0:
        raise ValueError(f"stride must be > 0, got {stride!r}")
    H, W = int(image_size[0]), int(image_size[1])
    C, h, w = feats.shape
    # Cells past the valid image only see padding; they must never be clustered.
    hv, wv = min(h, math.ceil(H / stride)), min(w, math.ceil(W / stride))
    if H <= 0 or W <= 0 or hv <= 0 or wv <= 0:
        return _empty(C, max(hv, 0) * params.upsample, max(wv, 0) * params.upsample)
    x = feats[:, :hv, :wv].detach().to("cpu", torch.float64)
    s = float(stride)
    if params.upsample > 1:
        x = torch.nn.functional.interpolate(x[None], scale_factor=params.upsample, mode="bilinear",
                                            align_corners=False)[0]
        s = s / params.upsample
    gh, gw = x.shape[1:]
    n = gh * gw
    X = _l2_normalise(x.reshape(C, n).T.numpy())
    ks = [k for k in params.cluster_levels if k <= n]
    if n < 2 or not ks:
        return _empty(C, gh, gw)

    # Imported here: scikit-learn costs ~0.4 s, which `import updetr_d2` should not pay.
    from sklearn.cluster import ward_tree
    from sklearn.feature_extraction.image import grid_to_graph

    children, _, n_leaves, _ = ward_tree(X, connectivity=grid_to_graph(gh, gw))
    cuts = _cut_tree(np.asarray(children), int(n_leaves), ks)

    rows, cols = np.divmod(np.arange(n), gw)
    img_area = float(H * W)
    boxes, levels, embs, masks = [], [], [], []
    for k in ks:
        labels = cuts[k]
        for c in range(k):
            cells = np.flatnonzero(labels == c)
            if len(cells) < params.min_cells:
                continue
            r, q = rows[cells], cols[cells]
            box = np.array([q.min() * s, r.min() * s, (q.max() + 1) * s, (r.max() + 1) * s])
            box = np.clip(box, 0.0, [W, H, W, H])
            area = (box[2] - box[0]) * (box[3] - box[1])
            if area < params.min_area_fraction * img_area or area > params.max_image_fraction * img_area:
                continue
            # Mask average (not box average) so background inside the box does not leak in.
            boxes.append(box)
            levels.append(k)
            embs.append(X[cells].mean(0))
            m = np.zeros(n, bool)
            m[cells] = True
            masks.append(m.reshape(gh, gw))
    if not boxes:
        return _empty(C, gh, gw)

    boxes = np.stack(boxes).astype(np.float32)
    levels = np.asarray(levels, np.int64)
    areas = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).astype(np.float32)
    # Coarse levels first, then larger boxes, then position: keeps coarse regions in de-dup.
    order = np.lexsort((boxes[:, 3], boxes[:, 2], boxes[:, 0], boxes[:, 1], -areas, levels))
    iou = box_iou(torch.from_numpy(boxes[order]), torch.from_numpy(boxes[order])).numpy()
    kept = []
    for i in range(len(order)):
        if len(kept) >= params.max_proposals:
            break
        if not kept or iou[i, kept].max() <= params.dedup_iou:
            kept.append(i)
    sel = order[kept]
    embeddings = _l2_normalise(np.stack(embs)[sel]).astype(np.float32)
    return RegionProposals(boxes[sel], levels[sel], embeddings, np.stack(masks)[sel], areas[sel])


def scale_boxes(boxes, scale_x: float, scale_y: float, size: Tuple[int, int]) -> np.ndarray:
    """Map xyxy boxes from a resized image (resized = original * scale) back to the original
    image of ``size`` = (H, W), clipped to it."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4).copy()
    b[:, 0::2] /= float(scale_x)
    b[:, 1::2] /= float(scale_y)
    H, W = size
    b[:, 0::2] = np.clip(b[:, 0::2], 0.0, W)
    b[:, 1::2] = np.clip(b[:, 1::2], 0.0, H)
    return b.astype(np.float32)
