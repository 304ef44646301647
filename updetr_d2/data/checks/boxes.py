"""The one rule for "what is a degenerate box", shared by training (the mappers drop such
annotations before augmenting) and evaluation (the COCO ground truth loses the same
annotations), so a box never counts in one and not the other.

A box is degenerate when it has a negative or zero width or height (COCO
``[100, 100, -40, 50]`` would otherwise become a real target: Detectron2 transforms a box
by its corners and takes their min and max), is not finite, or lies entirely outside its
image. A box partly outside its image is kept and clipped to it, as Detectron2 clips
training boxes after augmentation and the predictions at inference.
"""
import contextlib
import io
import math
from typing import Dict, List, Optional, Sequence, Tuple

from detectron2.structures import BoxMode

__all__ = [
    "box_problem",
    "clip_xyxy",
    "drop_degenerate_annotations",
    "filter_coco_ground_truth",
    "xyxy",
]

_XYXY, _XYWH = int(BoxMode.XYXY_ABS), int(BoxMode.XYWH_ABS)


def xyxy(bbox: Sequence[float], bbox_mode) -> Optional[Tuple[float, float, float, float]]:
    """``bbox`` as absolute (x0, y0, x1, y1) without reordering the corners (a negative
    width stays visible as x1 < x0); ``None`` for modes the rule does not judge
    (relative or rotated boxes)."""
    if len(bbox) != 4:
        return None
    if bbox_mode == _XYWH:
        x, y, w, h = bbox
        return float(x), float(y), float(x) + float(w), float(y) + float(h)
    if bbox_mode == _XYXY:
        x0, y0, x1, y1 = bbox
        return float(x0), float(y0), float(x1), float(y1)
    return None


def clip_xyxy(box, height: float, width: float) -> Tuple[float, float, float, float]:
    x0, y0, x1, y1 = box
    return (min(max(x0, 0.0), width), min(max(y0, 0.0), height),
            min(max(x1, 0.0), width), min(max(y1, 0.0), height))


def box_problem(bbox: Sequence[float], bbox_mode, height: Optional[float] = None,
                width: Optional[float] = None) -> Optional[str]:
    """Why the box is degenerate ("negative width or height", "zero width or height",
    "not finite", "outside the image"), or ``None`` for a usable box. ``height``/``width``
    (of its image; ``None``: unknown) are needed for the last reason only."""
    box = xyxy(bbox, bbox_mode)
    if box is None:
        return None
    x0, y0, x1, y1 = box
    isfinite = math.isfinite
    if not (isfinite(x0) and isfinite(y0) and isfinite(x1) and isfinite(y1)):
        return "not finite"
    if x1 < x0 or y1 < y0:
        return "negative width or height"
    if x1 == x0 or y1 == y0:
        return "zero width or height"
    # Nothing left after clipping to the image (touching its border counts as outside).
    if height and width and (x1 <= 0 or y1 <= 0 or x0 >= width or y0 >= height):
        return "outside the image"
    return None


def drop_degenerate_annotations(annotations: List[Dict], height: Optional[float],
                                width: Optional[float]) -> List[Dict]:
    """The annotations whose box is usable (:func:`box_problem`); annotations without a
    box (e.g. keypoints only) are kept."""
    return [a for a in annotations
            if "bbox" not in a or box_problem(a["bbox"], a.get("bbox_mode", BoxMode.XYXY_ABS), height, width) is None]


def filter_coco_ground_truth(coco_api) -> Tuple[List[Tuple[int, str, str]], int]:
    """Applies the rule to a pycocotools ``COCO`` ground truth in place: degenerate
    annotations removed, boxes partly outside their image clipped to it (their ``area``
    capped at the clipped box's). Returns ``([(annotation id, file name, reason)], number
    clipped)``; the index is rebuilt only when something changed."""
    dropped, clipped, kept = [], 0, []
    for ann in coco_api.dataset.get("annotations", []):
        image = coco_api.imgs.get(ann.get("image_id"), {})
        height, width = image.get("height"), image.get("width")
        bbox = ann.get("bbox")
        reason = box_problem(bbox, BoxMode.XYWH_ABS, height, width) if bbox is not None else None
        if reason is not None:
            dropped.append((ann.get("id"), image.get("file_name", f"image {ann.get('image_id')}"), reason))
            continue
        if bbox is not None and height and width:
            box = xyxy(bbox, BoxMode.XYWH_ABS)
            inside = clip_xyxy(box, height, width)
            if inside != box:
                x0, y0, x1, y1 = inside
                ann["bbox"] = [x0, y0, x1 - x0, y1 - y0]
                if "area" in ann:
                    ann["area"] = min(ann["area"], (x1 - x0) * (y1 - y0))
                clipped += 1
        kept.append(ann)
    if dropped or clipped:
        coco_api.dataset["annotations"] = kept
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints "creating index..."
            coco_api.createIndex()
    return dropped, clipped
