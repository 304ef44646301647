"""One pass over a dataset's records (the dicts ``DatasetCatalog.get`` returns) against
what the config expects of them, without decoding an image: the recorded ``height`` /
``width`` and a ``stat`` per file are all it reads.

Errors (the run cannot work): image files that do not exist; images the configured resize
makes less than one pixel wide or high; a model class count that differs from the
dataset's classes (larger: evaluation fails at the end, "A prediction has class=...";
smaller: the loss fails on the first batch holding a higher label); labels outside the
model's classes. Warnings (the run works, but not on all of the data): degenerate boxes
(:mod:`.boxes`; dropped from training and evaluation) and images with more objects than
the model has queries (the Hungarian matching leaves the extra objects unsupervised).
"""
import json
import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from detectron2.structures import BoxMode
from detectron2.utils.file_io import PathManager

from .boxes import box_problem
from .geometry import smallest_sides

__all__ = ["DatasetReport", "DatasetUse", "InputCheckError", "scan_dataset"]

EXAMPLES = 5  # files named per problem in a message
_FILE_KEYS = ("file_name", "sem_seg_file_name", "pan_seg_file_name")
_XYXY = BoxMode.XYXY_ABS


class InputCheckError(ValueError):
    """A dataset the config cannot train or evaluate on; the message names the files and keys."""


@dataclass
class DatasetUse:
    """How a config uses one dataset. ``labels_used``: its annotations are the model's
    targets (a detection mapper; not pretraining on images only). ``classes`` /
    ``queries``: ``(config key, value)`` of the model's class count and object queries,
    ``None`` where the check does not apply (test sets: evaluation reads their labels, so
    ``labels_used``; the query count matters in training only). ``augmentations``: what the mapper does to
    an image's size, described by ``resize_keys``."""

    name: str
    split: str  # "train" or "test"
    labels_used: bool = True
    classes: Optional[Tuple[str, int]] = None
    queries: Optional[Tuple[str, int]] = None
    augmentations: Optional[list] = None
    resize_keys: str = ""


@dataclass
class DatasetReport:
    use: DatasetUse
    thing_classes: Optional[List[str]] = None
    json_file: Optional[str] = None
    images: int = 0
    boxes: int = 0
    labelled: bool = False
    unknown_size: int = 0
    max_objects: int = 0
    missing: List[str] = field(default_factory=list)
    thin: List[Tuple[str, int, int, float]] = field(default_factory=list)
    degenerate: List[Tuple[str, int, Dict, str]] = field(default_factory=list)  # file, image id, annotation, why
    crowded: List[Tuple[int, str]] = field(default_factory=list)
    bad_labels: List[Tuple[str, int]] = field(default_factory=list)

    @property
    def where(self) -> str:
        return f"{self.use.split} dataset '{self.use.name}'"

    def class_error(self) -> Optional[str]:
        # Pretraining mappers bring their own targets: the dataset's classes are not the model's.
        if self.use.classes is None or self.thing_classes is None or not (self.labelled and self.use.labels_used):
            return None
        key, n = self.use.classes
        k = len(self.thing_classes)
        if not isinstance(n, int) or n == k:
            return None
        consequence = ("evaluation fails on the first prediction of a class the dataset does not have" if n > k
                       else "the loss fails on the first batch holding a label >= {n}".format(n=n))
        shown = ", ".join(map(str, self.thing_classes[:10])) + (", ..." if k > 10 else "")
        return (f"{key}={n} but {self.where} has {k} classes ({shown}): {consequence}. "
                f"Set {key} {k}.")

    def errors(self) -> List[str]:
        out = []
        problem = self.class_error()
        if problem:
            out.append(problem)
        if self.missing:
            out.append(f"{self.where}: {len(self.missing)} of {self.images} image files do not exist: "
                       f"{_names(self.missing)}")
        if self.thin:
            shown = [f"{f} ({w}x{h} px -> {side:g} px)" for f, h, w, side in self.thin[:EXAMPLES]]
            out.append(f"{self.where}: {len(self.thin)} images become less than 1 pixel wide or high with the "
                       f"configured resize ({self.use.resize_keys}): {_more(shown, len(self.thin))}. Remove them "
                       "from the dataset or change those keys.")
        if self.bad_labels:
            key, n = self.use.classes
            shown = [f"{f} (category_id {c})" for f, c in self.bad_labels[:EXAMPLES]]
            out.append(f"{self.where}: {len(self.bad_labels)} annotations have a category_id outside 0..{n - 1} "
                       f"({key}={n}): {_more(shown, len(self.bad_labels))}")
        return out

    def warnings(self) -> List[str]:
        out = []
        if self.degenerate:
            ids = _annotation_ids(self.json_file, self.degenerate[:EXAMPLES])
            shown = [f"{f} ({ref}: {why})" for (f, _, _, why), ref in zip(self.degenerate, ids)]
            out.append(f"{self.where}: {len(self.degenerate)} degenerate boxes are dropped from training and "
                       f"evaluation: {_more(shown, len(self.degenerate))}")
        if self.crowded:
            key, q = self.use.queries
            worst = sorted(self.crowded, key=lambda c: -c[0])[:EXAMPLES]
            shown = [f"{f} ({n} objects)" for n, f in worst]
            out.append(f"{self.where}: {len(self.crowded)} images have more objects than {key}={q}; the "
                       f"Hungarian matching leaves the extra objects unsupervised. Most: {_more(shown, len(self.crowded))}")
        return out


def _names(paths: Sequence[str]) -> str:
    return _more(list(paths[:EXAMPLES]), len(paths))


def _more(shown: List[str], total: int) -> str:
    return ", ".join(shown) + (f", ... ({total - len(shown)} more)" if total > len(shown) else "")


def _annotation_ids(json_file: Optional[str], found) -> List[str]:
    """How to find each of ``found`` in the annotation file: its annotation id where the
    record has one or the json (read only on this warning path) has a box equal to it,
    else its bounding box."""
    refs = [f"annotation id {ann['id']}" if "id" in ann else f"bbox {list(ann['bbox'])}"
            for _, _, ann, _ in found]
    if json_file is None or all(r.startswith("annotation id") for r in refs) or not os.path.isfile(json_file):
        return refs
    try:
        with open(json_file) as f:
            annotations = json.load(f).get("annotations", [])
    except (OSError, ValueError):
        return refs
    by_box = {(a.get("image_id"), tuple(a.get("bbox", ()))): a.get("id") for a in annotations}
    for i, (_, image_id, ann, _) in enumerate(found):
        ann_id = by_box.get((image_id, tuple(ann["bbox"])))
        if ann_id is not None:
            refs[i] = f"annotation id {ann_id}"
    return refs


def _exists(path: str) -> bool:
    return PathManager.exists(path) if "://" in path else os.path.exists(path)


def scan_dataset(records: List[Dict], use: DatasetUse, metadata=None) -> DatasetReport:
    """Checks ``records`` for the ``use`` a config makes of them (``metadata``: the
    dataset's ``MetadataCatalog`` entry, for its classes and annotation file)."""
    report = DatasetReport(use, images=len(records))
    if metadata is not None:
        report.thing_classes = metadata.get("thing_classes", None)
        report.json_file = metadata.get("json_file", None)
        stuff = metadata.get("stuff_classes", None)
        if records and "segments_info" in records[0] and stuff and len(stuff) > len(report.thing_classes or ()):
            # Panoptic: the model classifies every segment, things and stuff, in one
            # contiguous range that Detectron2's panoptic metadata lists as stuff_classes.
            report.thing_classes = stuff
    sized = []  # (file, height, width) of the records that give their size
    check_boxes = use.labels_used
    num_classes = use.classes[1] if use.classes is not None and use.labels_used else None
    if not isinstance(num_classes, int):
        num_classes = None
    num_queries = use.queries[1] if use.queries is not None and use.labels_used and use.split == "train" else None
    if not isinstance(num_queries, int):
        num_queries = None

    for record in records:
        file_name = record.get("file_name", "")
        for key in _FILE_KEYS:
            path = record.get(key)
            if path and not _exists(path):
                report.missing.append(path)
        height, width = record.get("height"), record.get("width")
        if not (height and width):
            report.unknown_size += 1
        else:
            sized.append((file_name, height, width))
        annotations = record.get("annotations")
        if annotations is None and "segments_info" in record:
            # A panoptic record: every segment, crowd included (as DETR's panoptic targets),
            # is one object to predict; its boxes come from its mask when it is mapped.
            report.labelled = True
            if check_boxes:
                segments = record["segments_info"]
                for segment in segments:
                    category = segment.get("category_id")
                    if num_classes is not None and isinstance(category, int) and not 0 <= category < num_classes:
                        report.bad_labels.append((file_name, category))
                report.max_objects = max(report.max_objects, len(segments))
                if num_queries is not None and len(segments) > num_queries:
                    report.crowded.append((len(segments), file_name))
            continue
        if annotations is None:
            continue
        report.labelled = True
        if not check_boxes:
            continue
        objects = 0
        for ann in annotations:
            bbox = ann.get("bbox")
            if bbox is not None:
                report.boxes += 1
                why = box_problem(bbox, ann.get("bbox_mode", _XYXY), height, width)
                if why is not None:
                    report.degenerate.append((file_name, record.get("image_id"), ann, why))
                    continue
            if ann.get("iscrowd", 0):
                continue  # the training mappers drop crowd regions; evaluation ignores them
            objects += 1
            category = ann.get("category_id")
            if num_classes is not None and isinstance(category, int) and not 0 <= category < num_classes:
                report.bad_labels.append((file_name, category))
        report.max_objects = max(report.max_objects, objects)
        if num_queries is not None and objects > num_queries:
            report.crowded.append((objects, file_name))
    if use.augmentations is not None and sized:
        sides = smallest_sides(use.augmentations, [s[1] for s in sized], [s[2] for s in sized])
        report.thin = [(*sized[i], float(sides[i])) for i in np.flatnonzero(sides < 1)]
    return report
