"""One-shot detection with UP-DETR (paper, section 6; protocol of CoAE, Hsieh et al. 2019).

Given a target image and ONE query patch (a ground-truth crop of some class taken from
another image), find every object of that class in the target. The model is the
``UPDETR`` meta-architecture with ``MODEL.UPDETR.NUM_PATCHES 1`` (the patch is added to
all object queries, no group mask) and ``MODEL.UPDETR.FEATURE_RECONSTRUCTION False``
(so any number of target boxes goes with the single patch); its class head is binary
(match / no match).

* :class:`OneShotDatasetMapper` (``INPUT.DATASET_MAPPER "OneShotDatasetMapper"``) turns a
  labelled record into ``image`` + one query ``patches`` + the boxes of the query's class.
* :func:`evaluate_one_shot` runs the protocol on a labelled dataset: every (image, class
  present) pair gets one seeded query crop from another image; AP50 per class with
  pycocotools, restricted to the queried pairs, averaged over seen and unseen classes.
* yaml keys: ``INPUT.ONE_SHOT.*`` (``updetr_d2.config.add_updetr_pretraining_config``).
"""
import contextlib
import io
import logging
import math
import numbers
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from detectron2.config import configurable
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from detectron2.structures import BoxMode

from ...data.mappers import MAPPER_REGISTRY
from ...data.mappers.query_patch import (
    augment_patches,
    crop_and_resize_patches,
    file_key,
    numpy_global_seed,
    patch_detection_input,
    patches_to_tensor,
)

__all__ = ["OneShotDatasetMapper", "evaluate_one_shot"]

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- helpers


def _valid_annotations(record: Dict):
    """``(contiguous class, XYXY float box)`` of the record's non-crowd annotations with a
    positive width and height, in the record's order."""
    for ann in record.get("annotations", ()):
        if ann.get("iscrowd", 0):
            continue
        box = BoxMode.convert(list(ann["bbox"]), ann.get("bbox_mode", BoxMode.XYXY_ABS), BoxMode.XYXY_ABS)
        if box[2] > box[0] and box[3] > box[1]:
            yield int(ann["category_id"]), np.asarray(box, dtype=np.float64)


def _crop_box(box: np.ndarray, height: int, width: int) -> Optional[np.ndarray]:
    """The whole-pixel box covering ``box``, clipped to the image; ``None`` if empty."""
    x0 = min(max(int(math.floor(box[0])), 0), width)
    y0 = min(max(int(math.floor(box[1])), 0), height)
    x1 = min(max(int(math.ceil(box[2])), 0), width)
    y1 = min(max(int(math.ceil(box[3])), 0), height)
    if x1 <= x0 or y1 <= y0:
        return None
    return np.array([[x0, y0, x1, y1]], dtype=np.int64)


def _resolve_classes(classes, class_names: Optional[Sequence[str]]) -> Optional[List[int]]:
    """Class names or contiguous ids -> sorted contiguous ids (``None``/empty: all)."""
    if classes is None or len(classes) == 0:
        return None
    ids = []
    for c in classes:
        if isinstance(c, str):
            if class_names is None or c not in class_names:
                raise ValueError(f"unknown class {c!r}; known classes: {list(class_names or [])}")
            ids.append(list(class_names).index(c))
        elif isinstance(c, numbers.Integral) and not isinstance(c, bool):
            if class_names is not None and not 0 <= c < len(class_names):
                raise ValueError(f"class id {c} out of range for {len(class_names)} classes")
            ids.append(int(c))
        else:
            raise ValueError(f"classes must be names or contiguous ids, got {c!r}")
    return sorted(set(ids))


# ----------------------------------------------------------------------------- mapper
@MAPPER_REGISTRY.register()
class OneShotDatasetMapper:
    """Maps a labelled record to one-shot detection input.

    For a target record: choose (uniformly) a class present in it (non-crowd, restricted
    to ``classes`` when given) for which ANOTHER image of the indexed dataset has an
    instance; choose (uniformly) such an instance; crop its box (whole pixels) from that
    image and resize the crop to ``patch_size`` x ``patch_size`` (aspect distorted, no
    augmentation unless ``patch_augment``); resize the target image (``ResizeShortestEdge``
    by default). Returns ``None`` when no class is possible (Detectron2's training loader
    then draws another record).

    Output: ``file_name``, ``image_id``, ``height``, ``width`` (original size), ``image``
    (CHW uint8, resized), ``patches`` (uint8 ``[1, 3, S, S]``, same channel order as the
    image), ``instances`` (``gt_boxes``: ALL non-crowd boxes of the query class in the
    target, resized-image pixels, in annotation order; ``gt_classes``: all 0),
    ``query_class`` (contiguous id) and ``query_source`` = ``(file_name, [x0, y0, x1, y1])``
    (the crop, whole pixels of the source image).

    Index: built once from ``dataset_dicts`` and/or the records of ``dataset_names``:
    ``self.index[c] = (record_indices, boxes)`` (int64 ``[K]``, float64 XYXY ``[K, 4]``)
    over the valid instances of class ``c``; ``self.file_names[i]`` is record ``i``'s file.
    "Another image" means another ``file_name``; a target not in the index may take
    queries from any indexed image.

    Randomness: ``seed=None``: fresh draws from numpy's global RNG on every call. With a
    seed, each record gets ``np.random.default_rng([seed, crc32(file_name)])`` (as
    ``QueryPatchDatasetMapper``), which drives the resize, the class, the instance and the
    patch augmentation: a record always maps to the same output.

    From a yaml config: ``DATASETS.TRAIN`` (training) or ``DATASETS.TEST`` (otherwise) for
    the index, ``INPUT.ONE_SHOT.SEEN_CLASSES`` (training only; names, empty: all),
    ``INPUT.ONE_SHOT.AUGMENT``, ``INPUT.QUERY_PATCH.SIZE``, ``INPUT.QUERY_PATCH.SEED``
    (-1: none), ``INPUT.MIN_SIZE_TRAIN``/``MAX_SIZE_TRAIN``/``MIN_SIZE_TRAIN_SAMPLING``
    (training) or ``INPUT.MIN_SIZE_TEST``/``MAX_SIZE_TEST`` and ``INPUT.FORMAT``.
    """

    @configurable
    def __init__(
        self,
        is_train: bool = True,
        *,
        dataset_dicts: Optional[List[Dict]] = None,
        dataset_names: Union[str, Sequence[str], None] = None,
        classes: Optional[Sequence[Union[int, str]]] = None,
        class_names: Optional[Sequence[str]] = None,
        patch_size: int = 128,
        patch_augment: bool = False,
        augmentations: Optional[List[T.Augmentation]] = None,
        min_sizes: Union[int, Sequence[int]] = (800,),
        max_size: int = 1333,
        image_format: str = "RGB",
        seed: Optional[int] = None,
    ):
        """
        Args:
            is_train: only recorded.
            dataset_dicts: labelled records (Detectron2 format) to take query crops from.
            dataset_names: registered dataset name(s) whose records are added to the index;
                the first one's ``thing_classes`` names the classes unless ``class_names``.
            classes: restrict the query classes to these (names or contiguous ids), e.g. the
                seen classes in training; ``None`` or empty: all.
            class_names: the contiguous classes' names (to resolve names in ``classes``).
            patch_size: side of the square query patch.
            patch_augment: apply UP-DETR's pretraining patch augmentation to the crop.
            augmentations: target image augmentations (resizes only: the boxes follow them);
                default ``[ResizeShortestEdge(min_sizes, max_size, "choice")]``.
            image_format: "RGB" or "BGR", channel order of image and patch.
            seed: ``None`` or an integer >= 0 (see the class docstring).
        """
        if isinstance(dataset_names, str):
            dataset_names = [dataset_names]
        dataset_names = list(dataset_names or [])
        records = list(dataset_dicts or [])
        for name in dataset_names:
            records.extend(DatasetCatalog.get(name))
        if class_names is None and dataset_names:
            class_names = MetadataCatalog.get(dataset_names[0]).get("thing_classes", None)
        if not isinstance(patch_size, numbers.Integral) or patch_size < 1:
            raise ValueError(f"patch_size must be an integer >= 1, got {patch_size!r}")
        if image_format not in ("RGB", "BGR"):
            raise ValueError(f"image_format must be 'RGB' or 'BGR', got {image_format!r}")
        if seed is not None and (not isinstance(seed, numbers.Integral) or seed < 0):
            raise ValueError(f"seed must be None or an integer >= 0, got {seed!r}")
        if augmentations is None:
            sizes = (min_sizes,) if isinstance(min_sizes, numbers.Integral) else tuple(min_sizes)
            augmentations = [T.ResizeShortestEdge(sizes, max_size, sample_style="choice")]
        self.is_train = is_train
        self.class_names = None if class_names is None else list(class_names)
        self.classes = _resolve_classes(classes, self.class_names)
        self.patch_size = int(patch_size)
        self.patch_augment = bool(patch_augment)
        self.augmentations = T.AugmentationList(list(augmentations))
        self.image_format = image_format
        self.seed = None if seed is None else int(seed)
        self._build_index(records)

    def _build_index(self, records: List[Dict]) -> None:
        self.file_names = [str(r["file_name"]) for r in records]
        file_ids: Dict[str, int] = {}
        self._record_file_id = np.array([file_ids.setdefault(f, len(file_ids)) for f in self.file_names],
                                        dtype=np.int64)
        self._file_ids = file_ids
        per_class: Dict[int, Tuple[List[int], List[np.ndarray]]] = {}
        for i, record in enumerate(records):
            for c, box in _valid_annotations(record):
                idx, boxes = per_class.setdefault(c, ([], []))
                idx.append(i)
                boxes.append(box)
        self.index = {
            c: (np.asarray(idx, dtype=np.int64), np.stack(boxes).reshape(-1, 4))
            for c, (idx, boxes) in sorted(per_class.items())
        }
        logger.info("OneShotDatasetMapper: %d records, instances per class %s",
                    len(records), {c: len(v[0]) for c, v in self.index.items()})

    @classmethod
    def from_config(cls, cfg, is_train: bool = True) -> Dict:
        one_shot = cfg.INPUT.ONE_SHOT
        if is_train:
            names, min_sizes, max_size = cfg.DATASETS.TRAIN, cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN
            sample_style = cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING
            classes = list(one_shot.SEEN_CLASSES) or None
        else:
            names, min_sizes, max_size = cfg.DATASETS.TEST, cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST
            sample_style, classes = "choice", None
        qp = cfg.INPUT.QUERY_PATCH
        return {
            "is_train": is_train,
            "dataset_names": list(names),
            "classes": classes,
            "patch_size": qp.SIZE,
            "patch_augment": one_shot.AUGMENT,
            "augmentations": [T.ResizeShortestEdge(min_sizes, max_size, sample_style)],
            "image_format": cfg.INPUT.FORMAT,
            "seed": None if qp.SEED == -1 else qp.SEED,
        }

    def __repr__(self):
        return (f"{type(self).__name__}(records={len(self.file_names)}, classes={self.classes}, "
                f"patch_size={self.patch_size}, patch_augment={self.patch_augment}, "
                f"augmentations={self.augmentations}, image_format={self.image_format!r}, seed={self.seed})")

    # --- steps (public so that evaluation and tools can reuse them) ----------------
    def record_rng(self, dataset_dict: Dict) -> np.random.Generator:
        if self.seed is None:
            return np.random.default_rng(np.random.randint(0, 2**32, size=4, dtype=np.int64))
        return np.random.default_rng([self.seed, file_key(dataset_dict["file_name"])])

    def read_image(self, file_name: str, dataset_dict: Optional[Dict] = None) -> np.ndarray:
        """HxWx3 uint8 in ``image_format``; checks/sets ``dataset_dict``'s height/width."""
        try:
            image = utils.read_image(file_name, format=self.image_format)
        except Exception as e:
            raise ValueError(f"Cannot read image {file_name}: {type(e).__name__}: {e}") from e
        if dataset_dict is not None:
            utils.check_image_size(dataset_dict, image)
        return image

    def candidates(self, class_id: int, file_name: str) -> np.ndarray:
        """Positions in ``self.index[class_id]`` of the instances from images other than
        ``file_name``."""
        if class_id not in self.index:
            return np.zeros(0, dtype=np.int64)
        record_idx = self.index[class_id][0]
        target = self._file_ids.get(str(file_name), -1)
        return np.flatnonzero(self._record_file_id[record_idx] != target)

    def query_classes(self, dataset_dict: Dict) -> List[int]:
        """The classes a query can be made for in this record, sorted."""
        present = {c for c, _ in _valid_annotations(dataset_dict)}
        if self.classes is not None:
            present &= set(self.classes)
        return [c for c in sorted(present) if len(self.candidates(c, dataset_dict["file_name"]))]

    def sample_query(self, class_id: int, file_name: str, rng: np.random.Generator):
        """A query crop of ``class_id`` from an image other than ``file_name``:
        ``(patches uint8 [1, 3, S, S], (source file, [x0, y0, x1, y1]))``, or ``None``."""
        cands = self.candidates(class_id, file_name)
        if len(cands) == 0:
            return None
        k = int(cands[rng.integers(len(cands))])
        record_idx, boxes = self.index[class_id]
        source = self.file_names[int(record_idx[k])]
        image = self.read_image(source)
        box = _crop_box(boxes[k], *image.shape[:2])
        if box is None:  # the annotation lies outside its image
            return None
        patch = crop_and_resize_patches(image, box, self.patch_size)
        if self.patch_augment:
            augment_patches(patch, rng, self.image_format)
        patches = patches_to_tensor(patch)
        return patches, (source, [float(v) for v in box[0]])

    def resize(self, image: np.ndarray, resize_seed: Optional[int]):
        """The augmented (resized) image and the transforms applied."""
        aug_input = T.AugInput(image)
        with numpy_global_seed(resize_seed):
            transforms = self.augmentations(aug_input)
        return aug_input.image, transforms

    def map_query(self, dataset_dict: Dict, class_id: int, rng: np.random.Generator,
                  resize_seed: Optional[int] = None) -> Optional[Dict]:
        """The output for a given query class (``None`` if no query crop is possible)."""
        dataset_dict = dict(dataset_dict)
        query = self.sample_query(class_id, dataset_dict["file_name"], rng)
        if query is None:
            return None
        patches, source = query
        image = self.read_image(dataset_dict["file_name"], dataset_dict)
        image, transforms = self.resize(image, resize_seed)
        boxes = np.array([b for c, b in _valid_annotations(dataset_dict) if c == class_id]).reshape(-1, 4)
        boxes = transforms.apply_box(boxes) if len(boxes) else boxes
        return dict(patch_detection_input(dataset_dict, image, boxes, patches),
                    query_class=int(class_id), query_source=source)

    def __call__(self, dataset_dict: Dict) -> Optional[Dict]:
        rng = self.record_rng(dataset_dict)
        resize_seed = None if self.seed is None else int(rng.integers(0, 2**32))
        classes = self.query_classes(dataset_dict)
        while classes:
            c = classes.pop(int(rng.integers(len(classes))))
            out = self.map_query(dataset_dict, c, rng, resize_seed)
            if out is not None:
                return out
        return None


# ----------------------------------------------------------------------------- evaluation
def _class_ids(classes, class_names: Sequence[str]) -> List[int]:
    return _resolve_classes(classes, class_names) or []


def _coco_ap50(pairs: List[Dict], detections: List[Dict], class_ids: List[int]) -> Dict[int, float]:
    """AP50 (%) per class over the given (image, class) pairs with pycocotools.

    Each pair is its own COCO "image" holding only the ground truth of its class, so a
    class is evaluated exactly on the images it was queried on."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    categories = [{"id": c + 1, "name": str(c)} for c in class_ids]
    images = [{"id": p["id"], "height": p["height"], "width": p["width"]} for p in pairs]
    gt_anns = []
    for p in pairs:
        for box, crowd in zip(p["boxes"], p["iscrowd"]):
            x0, y0, x1, y1 = (float(v) for v in box)
            gt_anns.append({"id": len(gt_anns) + 1, "image_id": p["id"], "category_id": p["class"] + 1,
                            "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0),
                            "iscrowd": int(crowd)})
    dt_anns = []
    for d in detections:
        x0, y0, x1, y1 = (float(v) for v in d["box"])
        dt_anns.append({"id": len(dt_anns) + 1, "image_id": d["image_id"], "category_id": d["class"] + 1,
                        "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0),
                        "score": float(d["score"]), "iscrowd": 0})
    with contextlib.redirect_stdout(io.StringIO()):
        gt, dt = COCO(), COCO()
        gt.dataset = {"images": images, "annotations": gt_anns, "categories": categories}
        dt.dataset = {"images": images, "annotations": dt_anns, "categories": categories}
        gt.createIndex()
        dt.createIndex()
        ev = COCOeval(gt, dt, iouType="bbox")
        ev.params.imgIds = [p["id"] for p in pairs]
        ev.params.catIds = [c + 1 for c in class_ids]
        ev.params.iouThrs = np.array([0.5])
        per_image = {}
        for d in detections:
            per_image[d["image_id"]] = per_image.get(d["image_id"], 0) + 1
        ev.params.maxDets = [max([1] + list(per_image.values()))]
        ev.params.areaRng = [[0.0, 1e10]]
        ev.params.areaRngLbl = ["all"]
        ev.evaluate()
        ev.accumulate()
    precision = ev.eval["precision"]  # [T=1, R, K, A=1, M=1]
    result = {}
    for k, c in enumerate(class_ids):
        p = precision[0, :, k, 0, -1]
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
    ``pred_boxes`` in original-image pixels and ``scores``. All its detections are
    labelled with the query class; the ground truth is the instances of that class in
    that image (crowd ones are "ignore" regions). AP50 per class by COCOeval (IoU 0.5, all
    areas, no detection cap), each class over the pairs it was queried in only.

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
                    gt = [(b, 0) for cc, b in _valid_annotations(record) if cc == c]
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
