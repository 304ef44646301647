"""One-shot detection evaluation of UP-DETR (paper, section 6; protocol of CoAE).

:func:`evaluate_one_shot` runs the protocol on a labelled dataset: every (image, class
present) pair gets one seeded query crop from another image (``OneShotDatasetMapper``);
AP50 per class with pycocotools, restricted to the queried pairs, averaged over seen and
unseen classes. :func:`format_one_shot_results` prints them as a table.
"""
import logging
from typing import Dict, List, Optional, Sequence, Union

import numpy as np
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data import transforms as T
from detectron2.structures import BoxMode

from .pair_eval import box_annotation, pair_precision
from .one_shot_mapper import OneShotDatasetMapper, resolve_classes, valid_annotations
from .seeding import file_key

__all__ = ["evaluate_one_shot", "format_one_shot_results"]

logger = logging.getLogger(__name__)


def _class_ids(classes, class_names: Sequence[str]) -> List[int]:
    return resolve_classes(classes, class_names) or []


def _coco_ap50(pairs: List[Dict], detections: List[Dict], class_ids: List[int]) -> Dict[int, float]:
    """AP50 (%) per class over the given (image, class) pairs with pycocotools.

    Each pair is its own COCO "image" holding only the ground truth of its class, so a
    class is evaluated exactly on the images it was queried on."""
    categories = [{"id": c + 1, "name": str(c)} for c in class_ids]
    images = [{"id": p["id"], "height": p["height"], "width": p["width"]} for p in pairs]
    gt_anns = []
    for p in pairs:
        for box, crowd in zip(p["boxes"], p["iscrowd"]):
            gt_anns.append(box_annotation(len(gt_anns) + 1, p["id"], p["class"] + 1, box, iscrowd=int(crowd)))
    dt_anns = [box_annotation(i + 1, d["image_id"], d["class"] + 1, d["box"], score=float(d["score"]))
               for i, d in enumerate(detections)]
    precision = pair_precision(images, gt_anns, dt_anns, categories, iou_thresholds=[0.5])  # [T=1, R, K]
    result = {}
    for k, c in enumerate(class_ids):
        p = precision[0, :, k]
        p = p[p > -1]
        result[c] = float(p.mean() * 100) if p.size else 0.0
    return result


def evaluate_one_shot(
    model,
    dataset_name: str,
    seen_classes: Optional[Sequence[Union[str, int]]],
    patch_size: int,
    min_size: int,
    max_size: int,
    seed: int = 0,
    image_format: str = "RGB",
    max_images: Optional[int] = None,
) -> Dict:
    """One-shot AP50 of ``model`` on a registered labelled dataset.

    For each image (the first ``max_images`` if given) and each class present in it
    (non-crowd), one query crop of that class from another image of the dataset, drawn
    with ``np.random.default_rng([seed, crc32(file_name), class])``; the model (eval mode,
    batch 1, no grad) gets ``image`` (resized with ``ResizeShortestEdge(min_size,
    max_size)``), ``patches`` [1, 3, S, S], ``height``/``width``, ``file_name``,
    ``image_id`` and ``query_class``, and must return ``[{"instances": ...}]`` with
    ``pred_boxes`` in original-image pixels and ``scores``. An ``UpDetr`` answers with
    the queries of its first patch group: all N when built with
    ``INPUT.QUERY_PATCH.NUM_PATCHES 1``, ``N // M`` when built for M patches. All its
    detections are labelled with the query class; the ground truth is the instances of
    that class in that image (crowd ones are "ignore" regions). AP50 per class by
    COCOeval (IoU 0.5, all areas, no detection cap), each class over the pairs it was
    queried in only.

    ``seen_classes``: names or contiguous ids; ``None``/empty: all classes are seen.
    Returns ``{"AP50": {class_name: %}, "seen_AP50": mean, "unseen_AP50": mean,
    "num_queries": {class_name: n}}``; classes never queried are left out (no NaN) and a
    group mean is left out when none of its classes was queried.
    """
    records = DatasetCatalog.get(dataset_name)
    class_names = list(MetadataCatalog.get(dataset_name).get("thing_classes", None) or [])
    if not class_names:
        raise ValueError(f"dataset {dataset_name!r} has no thing_classes in its metadata")
    seen = set(_class_ids(seen_classes, class_names)) or set(range(len(class_names)))
    mapper = OneShotDatasetMapper(
        is_train=False, dataset_dicts=records, class_names=class_names, patch_size=patch_size,
        augmentations=[T.ResizeShortestEdge(min_size, max_size)], image_format=image_format, seed=seed,
    )
    targets = records if max_images is None else records[: int(max_images)]
    pairs, detections = [], []
    was_training = getattr(model, "training", False)
    if hasattr(model, "eval"):
        model.eval()
    try:
        with torch.no_grad():
            for record in targets:
                classes = mapper.query_classes(record)
                if not classes:
                    continue
                record = dict(record)
                image = mapper.read_image(record["file_name"], record)
                resized, _ = mapper.resize(image, None)
                image_tensor = torch.as_tensor(np.ascontiguousarray(resized.transpose(2, 0, 1)))
                key = file_key(record["file_name"])
                for c in classes:
                    query = mapper.sample_query(c, record["file_name"], np.random.default_rng([seed, key, c]))
                    if query is None:
                        continue
                    patches, _source = query
                    inputs = {"file_name": record["file_name"], "image_id": record.get("image_id"),
                              "height": record["height"], "width": record["width"],
                              "image": image_tensor, "patches": patches, "query_class": c}
                    instances = model([inputs])[0]["instances"].to("cpu")
                    pair_id = len(pairs) + 1
                    gt = [(b, 0) for cc, b in valid_annotations(record) if cc == c]
                    gt += [(b, 1) for b in _crowd_boxes(record, c)]
                    pairs.append({"id": pair_id, "class": c, "height": record["height"],
                                  "width": record["width"], "boxes": [b for b, _ in gt],
                                  "iscrowd": [k for _, k in gt]})
                    for box, score in zip(instances.pred_boxes.tensor.tolist(), instances.scores.tolist()):
                        detections.append({"image_id": pair_id, "class": c, "box": box, "score": score})
    finally:
        if hasattr(model, "train"):
            model.train(was_training)

    queried = sorted({p["class"] for p in pairs})
    name = class_names.__getitem__
    ap = _coco_ap50(pairs, detections, queried) if queried else {}
    counts = {c: sum(p["class"] == c for p in pairs) for c in queried}
    results = {"AP50": {name(c): ap[c] for c in queried},
               "num_queries": {name(c): counts[c] for c in queried}}
    seen_ap = [ap[c] for c in queried if c in seen]
    unseen_ap = [ap[c] for c in queried if c not in seen]
    if seen_ap:
        results["seen_AP50"] = float(np.mean(seen_ap))
    if unseen_ap:
        results["unseen_AP50"] = float(np.mean(unseen_ap))
    _log_table(results, queried, seen, name, dataset_name)
    return results


def _crowd_boxes(record: Dict, class_id: int):
    for ann in record.get("annotations", ()):
        if ann.get("iscrowd", 0) and int(ann["category_id"]) == class_id:
            yield np.asarray(BoxMode.convert(list(ann["bbox"]), ann.get("bbox_mode", BoxMode.XYXY_ABS),
                                             BoxMode.XYXY_ABS), dtype=np.float64)


def format_one_shot_results(results: Dict, seen_names: Optional[Sequence[str]] = None) -> str:
    """A plain-text table of :func:`evaluate_one_shot`'s results."""
    from tabulate import tabulate

    rows = []
    for cname, value in results["AP50"].items():
        split = "" if seen_names is None else ("seen" if cname in seen_names else "unseen")
        rows.append([cname, split, results.get("num_queries", {}).get(cname, ""), f"{value:.2f}"])
    for key in ("seen_AP50", "unseen_AP50"):
        if key in results:
            rows.append([f"mean {key.split('_')[0]}", "", "", f"{results[key]:.2f}"])
    return tabulate(rows, headers=["class", "split", "queries", "AP50"], tablefmt="pipe")


def _log_table(results, queried, seen, name, dataset_name) -> None:
    seen_names = [name(c) for c in queried if c in seen]
    logger.info("One-shot detection AP50 on %s (%d queries):\n%s", dataset_name,
                sum(results["num_queries"].values()), format_one_shot_results(results, seen_names))
