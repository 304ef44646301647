"""One-shot detection input for UP-DETR (paper, section 6; protocol of CoAE, Hsieh et
al. 2019): a target image and ONE query patch (a ground-truth crop of some class taken
from another image); the model finds every object of that class in the target. The model
is the ``UpDetr`` meta-architecture with ``INPUT.QUERY_PATCH.NUM_PATCHES 1`` (its queries
form one group, so the patch is added to all of them and nothing is masked) and
``MODEL.UPDETR.FEATURE_RECONSTRUCTION False`` (so any number of target boxes goes with
the single patch); its class head is binary (match / no match). A model built for M > 1
patches (a pretraining checkpoint used as is) given the one crop decodes only its first
group, ``N // M`` queries for N queries, as the original code does with fewer patches.

:class:`OneShotDatasetMapper` (``INPUT.DATASET_MAPPER "OneShotDatasetMapper"``) turns a
labelled record into ``image`` + one query ``patches`` + the boxes of the query's class;
yaml keys ``INPUT.ONE_SHOT.*`` (``config.py``). The evaluation protocol is in
``one_shot_eval.py``.
"""
import logging
import math
import numbers
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from detectron2.config import configurable
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from detectron2.structures import BoxMode

from ...data.mappers import MAPPER_REGISTRY
from .patch_augmentation import augment_patches
from .patch_sampling import crop_and_resize_patches
from .query_patch_mapper import patch_detection_input, patches_to_tensor, read_image_file, resize_from_config
from .seeding import record_rng, seeded_augment

__all__ = ["OneShotDatasetMapper", "resolve_classes", "valid_annotations"]

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- helpers


def valid_annotations(record: Dict):
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


def resolve_classes(classes, class_names: Optional[Sequence[str]]) -> Optional[List[int]]:
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
        self.classes = resolve_classes(classes, self.class_names)
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
            for c, box in valid_annotations(record):
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
            names, classes = cfg.DATASETS.TRAIN, list(one_shot.SEEN_CLASSES) or None
        else:
            names, classes = cfg.DATASETS.TEST, None
        qp = cfg.INPUT.QUERY_PATCH
        return {
            "is_train": is_train,
            "dataset_names": list(names),
            "classes": classes,
            "patch_size": qp.SIZE,
            "patch_augment": one_shot.AUGMENT,
            "augmentations": [resize_from_config(cfg, is_train)],
            "image_format": cfg.INPUT.FORMAT,
            "seed": None if qp.SEED == -1 else qp.SEED,
        }

    def __repr__(self):
        return (f"{type(self).__name__}(records={len(self.file_names)}, classes={self.classes}, "
                f"patch_size={self.patch_size}, patch_augment={self.patch_augment}, "
                f"augmentations={self.augmentations}, image_format={self.image_format!r}, seed={self.seed})")

    # --- steps (public so that evaluation and tools can reuse them) ----------------
    def record_rng(self, dataset_dict: Dict) -> np.random.Generator:
        return record_rng(self.seed, dataset_dict["file_name"])

    def read_image(self, file_name: str, dataset_dict: Optional[Dict] = None) -> np.ndarray:
        """HxWx3 uint8 in ``image_format``; checks/sets ``dataset_dict``'s height/width."""
        image = read_image_file(file_name, self.image_format)
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
        present = {c for c, _ in valid_annotations(dataset_dict)}
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
        return seeded_augment(self.augmentations, image, resize_seed)

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
        boxes = np.array([b for c, b in valid_annotations(dataset_dict) if c == class_id]).reshape(-1, 4)
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
