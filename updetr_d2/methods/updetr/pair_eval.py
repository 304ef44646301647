"""COCO box evaluation of (image, query) pairs, each pair a COCO "image" of its own: one-shot
detection (a class queried on an image) and patch localisation (a patch on its image)
both score a detection only against the ground truth of its own pair."""
import contextlib
import io
from typing import Dict, List, Optional, Sequence

import numpy as np

__all__ = ["box_annotation", "pair_precision"]


def box_annotation(ann_id: int, image_id: int, category_id: int, box, **extra) -> Dict:
    """A COCO box annotation from an xyxy box."""
    x0, y0, x1, y1 = (float(v) for v in box)
    return {"id": ann_id, "image_id": image_id, "category_id": category_id, "bbox": [x0, y0, x1 - x0, y1 - y0],
            "area": (x1 - x0) * (y1 - y0), "iscrowd": 0, **extra}


def pair_precision(images: List[Dict], gt_anns: List[Dict], dt_anns: List[Dict], categories: List[Dict],
                   iou_thresholds: Optional[Sequence[float]] = None) -> np.ndarray:
    """pycocotools' precision array [T, R, K] (IoU thresholds, recall levels, categories),
    all areas, with room for every detection of a pair (no per-image cap)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    per_image: Dict[int, int] = {}
    for d in dt_anns:
        per_image[d["image_id"]] = per_image.get(d["image_id"], 0) + 1
    with contextlib.redirect_stdout(io.StringIO()):
        gt, dt = COCO(), COCO()
        gt.dataset = {"images": images, "annotations": gt_anns, "categories": categories}
        dt.dataset = {"images": images, "annotations": dt_anns, "categories": categories}
        gt.createIndex()
        dt.createIndex()
        ev = COCOeval(gt, dt, iouType="bbox")
        ev.params.imgIds = [im["id"] for im in images]
        ev.params.catIds = [c["id"] for c in categories]
        if iou_thresholds is not None:
            ev.params.iouThrs = np.asarray(iou_thresholds, dtype=np.float64)
        ev.params.maxDets = [max([1] + list(per_image.values()))]
        ev.params.areaRng = [[0.0, 1e10]]
        ev.params.areaRngLbl = ["all"]
        ev.evaluate()
        ev.accumulate()
    return ev.eval["precision"][:, :, :, 0, 0]
