"""UP-DETR's pretraining mapper: random query patches cut from unlabeled images.

For each dataset record (``file_name`` and optionally ``image_id``/``height``/``width``;
annotations, if any, are ignored) :class:`QueryPatchDatasetMapper`

1. reads the image (an unreadable file raises ``ValueError`` naming it);
2. samples ``num_patches`` boxes on the ORIGINAL-resolution image (:func:`sample_patch_boxes`;
   by default sides in U_int[8, side - 8], as the original);
3. crops each box, resizes it to ``patch_size`` x ``patch_size`` (aspect distorted, as
   the paper) and applies the paper's patch augmentation (:func:`augment_patches`);
4. resizes the image with ``ResizeShortestEdge`` (no flip, no crop) and moves the boxes
   with the same transform;
5. returns ``image`` (CHW uint8), ``instances`` (``gt_boxes`` in resized-image pixels,
   ``gt_classes`` all 0) and ``patches`` (uint8 ``[M, 3, P, P]``, same channel order as
   the image). Normalisation (pixel mean/std) is left to the model, for patches as for
   the image.

Randomness: with ``seed=None`` every call draws new patches from numpy's global RNG
(which Detectron2 seeds per data-loader worker). With a seed, each record gets its own
``np.random.default_rng((seed, crc32(file_name)))`` (``seeding.py``) that drives the
boxes, the patch augmentation and the image resize, so a record always maps to the
same output whatever the worker or the order.

Registered in ``updetr_d2.data.mappers.MAPPER_REGISTRY`` when ``updetr_d2.methods.updetr``
is imported (``import updetr_d2`` does): shared data code never imports a method.
"""
import math
import numbers
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from detectron2.config import configurable
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from detectron2.structures import Boxes, Instances

from ...data.images import read_image
from ...data.mappers import MAPPER_REGISTRY
from .patch_augmentation import augment_patches
from .patch_sampling import crop_and_resize_patches, sample_patch_boxes
from .seeding import record_rng, seeded_augment

__all__ = [
    "QueryPatchDatasetMapper",
    "UPDETR_MIN_SIZES",
    "UPDETR_MAX_SIZE",
    "patch_detection_input",
    "patches_to_tensor",
    "read_image_file",
    "resize_from_config",
]

# UP-DETR's image scales (official ``datasets/selfdet.py``; note that 384 is not among them).
UPDETR_MIN_SIZES = (320, 336, 352, 368, 400, 416, 432, 448, 464, 480)
UPDETR_MAX_SIZE = 600


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


@MAPPER_REGISTRY.register()
class QueryPatchDatasetMapper:
    """Maps an unlabeled record to UP-DETR pretraining input (see the module docstring).

    Output: ``{"file_name", "image_id", "height", "width"`` (original image size),
    ``"image"``: uint8 CHW tensor of the resized image, ``"instances"``: ``Instances``
    with ``gt_boxes`` (the patch boxes, XYXY pixels of the resized image) and
    ``gt_classes`` (all 0, the single "patch" class), ``"patches"``: uint8 tensor
    ``[num_patches, 3, patch_size, patch_size]``}, patch ``k`` belonging to box ``k``.

    From a yaml config: ``INPUT.QUERY_PATCH.{NUM_PATCHES, SIZE, MIN_SIDE, MAX_FRACTION,
    ASPECT_RANGE (empty: none), AUGMENT, SEED (-1: none)}``,
    ``INPUT.MIN_SIZE_TRAIN``/``MAX_SIZE_TRAIN``/``MIN_SIZE_TRAIN_SAMPLING`` (training) or
    ``INPUT.MIN_SIZE_TEST``/``MAX_SIZE_TEST`` and ``INPUT.FORMAT``.

    With a seed, the image resize is seeded too, by seeding numpy's global RNG around the
    augmentations and restoring its state after; this is not thread-safe (Detectron2's
    loaders use processes, where it is fine).
    """

    @configurable
    def __init__(
        self,
        is_train: bool = True,
        *,
        num_patches: int = 10,
        patch_size: int = 128,
        min_side: int = 8,
        max_fraction: float = 1.0,
        aspect_range: Optional[Sequence[float]] = None,
        patch_augment: bool = True,
        augmentations: Optional[List[T.Augmentation]] = None,
        min_sizes: Sequence[int] = UPDETR_MIN_SIZES,
        max_size: int = UPDETR_MAX_SIZE,
        image_format: str = "RGB",
        seed: Optional[int] = None,
    ):
        """
        Args:
            is_train: only recorded (the resize sizes come from the config accordingly).
            num_patches: patches (boxes) per image, M; the model's query groups are made
                for the same count (``INPUT.QUERY_PATCH.NUM_PATCHES`` feeds both).
            patch_size: side of the square patches, in pixels.
            min_side: smallest patch side, in pixels of the original image; also the least
                a patch side stays below the image side (image sides shorter than
                ``2 * min_side`` give ``min_side`` px patches, shorter than ``min_side``
                patches spanning that whole side).
            max_fraction: largest patch side, as a fraction of the image side, in (0, 1].
                Sides are drawn from ``[min_side, min(floor(max_fraction * side), side -
                min_side)]``: the defaults (8, 1.0) give the original's U_int[8, side - 8]
                (``sample_patch_boxes``).
            aspect_range: ``(lo, hi)`` bounds of the patch aspect ratio width / height;
                ``None``: width and height independent (the paper).
            patch_augment: apply the paper's patch augmentation (off for tests and
                visualisation).
            augmentations: image augmentations; default
                ``[ResizeShortestEdge(min_sizes, max_size, "choice")]``. The boxes follow
                them, the patches (cut before) do not: use resizes only, as UP-DETR (a flip
                or crop would make boxes and patch content disagree).
            min_sizes, max_size: the default resize (UP-DETR's scales by default).
            image_format: "RGB" or "BGR", the channel order of image and patches.
            seed: ``None``: new draws on every call from numpy's global RNG; an int >= 0:
                each record always gets the same patches, boxes and resize.
        """
        if not _is_int(num_patches) or num_patches < 1:
            raise ValueError(f"num_patches must be an integer >= 1, got {num_patches!r}")
        if not _is_int(patch_size) or patch_size < 1:
            raise ValueError(f"patch_size must be an integer >= 1, got {patch_size!r}")
        if not _is_int(min_side) or min_side < 1:
            raise ValueError(f"min_side must be an integer >= 1, got {min_side!r}")
        if (not isinstance(max_fraction, numbers.Real) or isinstance(max_fraction, bool)
                or not 0 < max_fraction <= 1):
            raise ValueError(f"max_fraction must be a number in (0, 1], got {max_fraction!r}")
        if aspect_range is not None:
            try:
                ok = len(aspect_range) == 2 and all(
                    isinstance(a, numbers.Real) and not isinstance(a, bool) and math.isfinite(a) and a > 0
                    for a in aspect_range
                ) and aspect_range[0] <= aspect_range[1]
            except TypeError:
                ok = False
            if not ok:
                raise ValueError(
                    "aspect_range must be None or (lo, hi) with 0 < lo <= hi < inf (aspect ratio = "
                    f"width / height), got {aspect_range!r}"
                )
            aspect_range = (float(aspect_range[0]), float(aspect_range[1]))
        if image_format not in ("RGB", "BGR"):
            raise ValueError(
                f"image_format must be 'RGB' or 'BGR' (the patch augmentation needs colour), got {image_format!r}"
            )
        if seed is not None and (not _is_int(seed) or seed < 0):
            raise ValueError(f"seed must be None or an integer >= 0, got {seed!r}")
        if augmentations is None:
            augmentations = [T.ResizeShortestEdge(tuple(min_sizes), max_size, sample_style="choice")]
        self.is_train = is_train
        self.num_patches = int(num_patches)
        self.patch_size = int(patch_size)
        self.min_side = int(min_side)
        self.max_fraction = float(max_fraction)
        self.aspect_range = aspect_range
        self.patch_augment = bool(patch_augment)
        self.augmentations = T.AugmentationList(list(augmentations))
        self.image_format = image_format
        self.seed = None if seed is None else int(seed)

    @classmethod
    def from_config(cls, cfg, is_train: bool = True) -> Dict:
        qp = cfg.INPUT.QUERY_PATCH
        aspect = tuple(qp.ASPECT_RANGE) if qp.ASPECT_RANGE else None
        return {
            "is_train": is_train,
            "num_patches": qp.NUM_PATCHES,
            "patch_size": qp.SIZE,
            "min_side": qp.MIN_SIDE,
            "max_fraction": qp.MAX_FRACTION,
            "aspect_range": aspect,
            "patch_augment": qp.AUGMENT,
            "augmentations": [resize_from_config(cfg, is_train)],
            "image_format": cfg.INPUT.FORMAT,
            "seed": None if qp.SEED == -1 else qp.SEED,
        }

    def __repr__(self):
        return (
            f"{type(self).__name__}(num_patches={self.num_patches}, patch_size={self.patch_size}, "
            f"min_side={self.min_side}, max_fraction={self.max_fraction}, aspect_range={self.aspect_range}, "
            f"patch_augment={self.patch_augment}, augmentations={self.augmentations}, "
            f"image_format={self.image_format!r}, seed={self.seed})"
        )

    # The steps of __call__, separate so that benchmarks can time them.
    def record_rng(self, dataset_dict: Dict) -> np.random.Generator:
        """The generator for one call: per record with a seed, else fresh from numpy's
        global RNG."""
        return record_rng(self.seed, dataset_dict["file_name"])

    def read_image(self, dataset_dict: Dict) -> np.ndarray:
        """The image as HxWx3 uint8 in ``image_format``; ``ValueError`` naming the file if
        it cannot be decoded. Sets the record's height/width when it has none."""
        image = read_image_file(dataset_dict["file_name"], self.image_format)
        utils.check_image_size(dataset_dict, image)
        return image

    def make_patches(self, image: np.ndarray, rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
        """Boxes (float XYXY, original image pixels) and their uint8 ``[M, P, P, 3]`` patches."""
        h, w = image.shape[:2]
        boxes = sample_patch_boxes(h, w, self.num_patches, rng, self.min_side, self.max_fraction,
                                   self.aspect_range)
        patches = crop_and_resize_patches(image, boxes, self.patch_size)
        if self.patch_augment:
            augment_patches(patches, rng, self.image_format)
        return boxes, patches

    def resize(self, image: np.ndarray, boxes: np.ndarray, resize_seed: Optional[int]):
        """Applies the image augmentations; returns the image and the boxes moved with it."""
        out, transforms = seeded_augment(self.augmentations, image, resize_seed)
        return out, transforms.apply_box(boxes)

    def __call__(self, dataset_dict: Dict) -> Dict:
        dataset_dict = dict(dataset_dict)  # check_image_size may add height/width
        image = self.read_image(dataset_dict)
        rng = self.record_rng(dataset_dict)
        # Drawn first, so that boxes and image size do not depend on patch_augment.
        resize_seed = None if self.seed is None else int(rng.integers(0, 2**32))
        boxes, patches = self.make_patches(image, rng)
        image, boxes = self.resize(image, boxes, resize_seed)

        return patch_detection_input(dataset_dict, image, boxes, patches_to_tensor(patches))


# ----------------------------------------------------------------------------- helpers
# Shared with OneShotDatasetMapper: both build the same kind of input.
def resize_from_config(cfg, is_train: bool) -> T.ResizeShortestEdge:
    """The image resize of a config: ``INPUT.MIN_SIZE_TRAIN``/``MAX_SIZE_TRAIN``/
    ``MIN_SIZE_TRAIN_SAMPLING`` in training, ``INPUT.MIN_SIZE_TEST``/``MAX_SIZE_TEST`` else."""
    if is_train:
        return T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN,
                                    cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING)
    return T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST, "choice")


def read_image_file(file_name: str, image_format: str) -> np.ndarray:
    """HxWx3 uint8 in ``image_format``; ``ValueError`` naming the file if it cannot be
    decoded (so that a bad file in a large folder can be found)."""
    try:
        return read_image(file_name, format=image_format)  # 16-bit / alpha images scaled, not clipped
    except Exception as e:
        raise ValueError(f"Cannot read image {file_name}: {type(e).__name__}: {e}") from e


def patches_to_tensor(patches: np.ndarray) -> torch.Tensor:
    """``[M, S, S, 3]`` uint8 crops as the ``[M, 3, S, S]`` tensor models take."""
    return torch.from_numpy(np.ascontiguousarray(patches.transpose(0, 3, 1, 2)))


def patch_detection_input(dataset_dict: Dict, image: np.ndarray, boxes, patches: torch.Tensor) -> Dict:
    """The model input of a patch-detection sample (pretraining or one-shot): the resized
    image, its query ``patches`` and the boxes to find (XYXY pixels of the resized image),
    all of the single "patch" class."""
    image_size = image.shape[:2]
    instances = Instances(image_size)
    gt_boxes = Boxes(torch.as_tensor(np.asarray(boxes, dtype=np.float32).reshape(-1, 4)))
    gt_boxes.clip(image_size)  # only float rounding can reach past the border
    instances.gt_boxes = gt_boxes
    instances.gt_classes = torch.zeros(len(gt_boxes), dtype=torch.int64)
    return {
        "file_name": dataset_dict["file_name"],
        "image_id": dataset_dict.get("image_id"),
        "height": dataset_dict["height"],
        "width": dataset_dict["width"],
        "image": torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1))),
        "instances": instances,
        "patches": patches,
    }
