"""UP-DETR's pretraining mapper: random query patches cut from unlabeled images.

For each dataset record (``file_name`` and optionally ``image_id``/``height``/``width``;
annotations, if any, are ignored) :class:`QueryPatchDatasetMapper`

1. reads the image (an unreadable file raises ``ValueError`` naming it);
2. samples ``num_patches`` boxes on the ORIGINAL-resolution image (:func:`sample_patch_boxes`);
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
``np.random.default_rng((seed, crc32(file_name)))`` that drives the boxes, the patch
augmentation and the image resize, so a record always maps to the same output whatever
the worker or the order.
"""
import contextlib
import math
import numbers
import zlib
from typing import Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np
import torch
from detectron2.config import configurable
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from detectron2.structures import Boxes, Instances

from .build import MAPPER_REGISTRY

__all__ = [
    "QueryPatchDatasetMapper",
    "UPDETR_MIN_SIZES",
    "UPDETR_MAX_SIZE",
    "augment_patches",
    "crop_and_resize_patches",
    "sample_patch_boxes",
]

# UP-DETR's image scales (official ``datasets/selfdet.py``; note that 384 is not among them).
UPDETR_MIN_SIZES = (320, 336, 352, 368, 400, 416, 432, 448, 464, 480)
UPDETR_MAX_SIZE = 600

# Patch augmentation of the paper (section 2.3 of the spec), torchvision's parameters.
JITTER_PROB = 0.8
BRIGHTNESS = 0.4
CONTRAST = 0.4
SATURATION = 0.4
HUE = 0.1
GRAYSCALE_PROB = 0.2
BLUR_PROB = 0.5
BLUR_SIGMA = (0.1, 2.0)

# ITU-R 601-2 luma, as PIL's "L" conversion and cv2's RGB2GRAY.
_LUMA_RGB = np.array([0.299, 0.587, 0.114])
_IDENTITY_LUT = np.arange(256, dtype=np.float64)
_IDENTITY_U8 = np.arange(256, dtype=np.uint8)


# ----------------------------------------------------------------------------- boxes
def _side_range(size: int, min_side: int, max_fraction: float) -> Tuple[int, int]:
    """Inclusive integer range of a patch side on an image side of ``size`` px.

    ``[min_side, floor(max_fraction * size)]``, shrunk so that it is never empty and never
    exceeds the image: an image side shorter than ``min_side`` gives a patch side that
    spans the whole image side (never 0 px).
    """
    lo = min(min_side, size)
    hi = min(size, int(math.floor(max_fraction * size + 1e-9)))
    return lo, max(lo, hi)


def sample_patch_boxes(
    height: int,
    width: int,
    num_patches: int,
    rng: np.random.Generator,
    min_side: int = 8,
    max_fraction: float = 1.0,
    aspect_range: Optional[Tuple[float, float]] = None,
) -> np.ndarray:
    """Random patch boxes on a ``height`` x ``width`` image, float64 XYXY pixels ``[M, 4]``.

    Box widths and heights are integers in ``[min(min_side, side), max(that,
    floor(max_fraction * side))]``. Without ``aspect_range`` they are drawn independently
    and uniformly (the paper draws U_int[8, side - 8]; this is the same with the upper
    bound set by ``max_fraction``). With ``aspect_range=(lo, hi)`` the pair is drawn
    uniformly among the pairs with ``lo <= width / height <= hi`` (the distribution that
    rejection sampling would give, with a single draw); if no pair of allowed sides has
    such an aspect ratio (an image too small or too elongated), every patch takes the
    allowed size whose aspect ratio is closest to the range (in log scale).

    The top-left corner is uniform over all positions that keep the box inside the image,
    including the ones touching the right/bottom border: a box is ``(x, y, x + w, y + h)``
    with ``0 <= x <= width - w``. (The official code draws ``x`` from
    ``np.random.randint(0, width - w)``, whose exclusive upper bound means a patch never
    touches the right/bottom border: an off-by-one not reproduced here.)
    """
    wlo, whi = _side_range(width, min_side, max_fraction)
    hlo, hhi = _side_range(height, min_side, max_fraction)
    if aspect_range is None:
        bw = rng.integers(wlo, whi, size=num_patches, endpoint=True)
        bh = rng.integers(hlo, hhi, size=num_patches, endpoint=True)
    else:
        a_lo, a_hi = float(aspect_range[0]), float(aspect_range[1])
        widths = np.arange(wlo, whi + 1)
        # Heights h with a_lo <= w / h <= a_hi, i.e. w / a_hi <= h <= w / a_lo
        # (the tolerance keeps exact boundary ratios such as 1.5 = 3 / 2).
        hmin = np.maximum(hlo, np.ceil(widths / a_hi - 1e-9)).astype(np.int64)
        hmax = np.minimum(hhi, np.floor(widths / a_lo + 1e-9)).astype(np.int64)
        counts = np.maximum(hmax - hmin + 1, 0)
        cum = np.cumsum(counts)
        total = int(cum[-1])
        if total > 0:
            k = rng.integers(0, total, size=num_patches)  # uniform over the allowed pairs
            i = np.searchsorted(cum, k, side="right")
            bw = widths[i]
            bh = hmin[i] + (k - (cum[i] - counts[i]))
        else:
            bw, bh = _closest_aspect_size(wlo, whi, hlo, hhi, a_lo, a_hi)
            bw = np.full(num_patches, bw)
            bh = np.full(num_patches, bh)
    x0 = rng.integers(0, width - bw, endpoint=True)
    y0 = rng.integers(0, height - bh, endpoint=True)
    return np.stack([x0, y0, x0 + bw, y0 + bh], axis=1).astype(np.float64)


def _closest_aspect_size(wlo, whi, hlo, hhi, a_lo, a_hi) -> Tuple[int, int]:
    """The (w, h) in the allowed ranges whose log aspect ratio is closest to [a_lo, a_hi]."""
    widths = np.arange(wlo, whi + 1)
    target = math.sqrt(a_lo * a_hi)
    heights = np.clip(np.rint(widths / target), hlo, hhi)
    log_aspect = np.log(widths / heights)
    violation = np.maximum(math.log(a_lo) - log_aspect, 0) + np.maximum(log_aspect - math.log(a_hi), 0)
    best = int(np.argmin(violation))
    return int(widths[best]), int(heights[best])


# ----------------------------------------------------------------------------- patches
def crop_and_resize_patches(image: np.ndarray, boxes: np.ndarray, patch_size: int) -> np.ndarray:
    """Crops integer XYXY ``boxes`` from an HxWx3 uint8 image and resizes each to
    ``patch_size`` x ``patch_size`` (aspect ratio distorted, ``cv2.INTER_LINEAR``).
    Returns uint8 ``[M, patch_size, patch_size, 3]``."""
    patches = np.empty((len(boxes), patch_size, patch_size, image.shape[2]), dtype=np.uint8)
    for i, (x0, y0, x1, y1) in enumerate(boxes.astype(np.int64)):
        crop = image[y0:y1, x0:x1]
        if crop.shape[0] == patch_size and crop.shape[1] == patch_size:
            patches[i] = crop
        else:
            patches[i] = cv2.resize(crop, (patch_size, patch_size), interpolation=cv2.INTER_LINEAR)
    return patches


def _lut(values: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


_EYE3 = np.eye(3)


def _hue_lut(turns: float) -> np.ndarray:
    """A 3-channel LUT adding ``turns`` of a full turn to H (8-bit, wrapping), keeping S, V."""
    lut = np.empty((256, 1, 3), np.uint8)
    lut[:, 0, :] = _IDENTITY_U8[:, None]
    lut[:, 0, 0] += np.uint8(int(round(turns * 256)) % 256)
    return lut


def augment_patches(
    patches: np.ndarray,
    rng: np.random.Generator,
    channel_order: str = "RGB",
    return_params: bool = False,
):
    """UP-DETR's patch augmentation on uint8 ``[M, P, P, 3]`` patches, in place.

    As the paper's torchvision pipeline, per patch and in this order:

    1. with probability 0.8, colour jitter: brightness, contrast, saturation factors
       ~ U[0.6, 1.4] and a hue shift ~ U[-0.1, 0.1] of a full turn, applied in the FIXED
       order brightness, contrast, saturation, hue (torchvision picks a random order per
       call), each followed by rounding and clipping to [0, 255]:
       brightness ``b * x``; contrast ``c * x + (1 - c) * mean(gray(x))``; saturation
       ``s * x + (1 - s) * gray(x)`` per pixel; hue: rotate H in 8-bit HSV (as
       torchvision's PIL path);
    2. with probability 0.2, grayscale (ITU-R 601-2 luma copied to the 3 channels);
    3. with probability 0.5, Gaussian blur with sigma ~ U[0.1, 2] (kernel 2*ceil(3 sigma)+1,
       reflected border).

    No flip. All the random numbers are drawn up front with a fixed count (8 per patch),
    whatever is applied. ``channel_order`` ("RGB" or "BGR") tells where red and blue are.
    With ``return_params`` also returns a dict of the per-patch draws (for tests).
    """
    if channel_order not in ("RGB", "BGR"):
        raise ValueError(f"channel_order must be 'RGB' or 'BGR', got {channel_order!r}")
    m = len(patches)
    jitter = rng.random(m) < JITTER_PROB
    brightness = rng.uniform(1 - BRIGHTNESS, 1 + BRIGHTNESS, m)
    contrast = rng.uniform(1 - CONTRAST, 1 + CONTRAST, m)
    saturation = rng.uniform(1 - SATURATION, 1 + SATURATION, m)
    hue = rng.uniform(-HUE, HUE, m)
    gray = rng.random(m) < GRAYSCALE_PROB
    blur = rng.random(m) < BLUR_PROB
    sigma = rng.uniform(BLUR_SIGMA[0], BLUR_SIGMA[1], m)

    rgb = channel_order == "RGB"
    luma = _LUMA_RGB if rgb else _LUMA_RGB[::-1]
    luma_rows = np.tile(luma, (3, 1))  # row c: output channel c = luma . pixel
    to_hsv, from_hsv = ((cv2.COLOR_RGB2HSV_FULL, cv2.COLOR_HSV2RGB_FULL) if rgb
                        else (cv2.COLOR_BGR2HSV_FULL, cv2.COLOR_HSV2BGR_FULL))
    # One patch at a time: cheaper than batching here (no gather/scatter copies), each
    # OpenCV call writes into the patch or a temporary.
    for i in np.flatnonzero(jitter):
        p = patches[i]
        cv2.LUT(p, _lut(_IDENTITY_LUT * brightness[i]), dst=p)
        mean = float(np.dot(luma, cv2.mean(p)[:3]))
        cv2.LUT(p, _lut(contrast[i] * _IDENTITY_LUT + (1 - contrast[i]) * mean), dst=p)
        s = saturation[i]
        cv2.transform(p, (1 - s) * luma_rows + s * _EYE3, dst=p)
        # Hue: H of 8-bit "full" HSV covers a turn in 256 steps; the shift wraps around.
        hsv = cv2.cvtColor(p, to_hsv)
        cv2.LUT(hsv, _hue_lut(hue[i]), dst=hsv)
        cv2.cvtColor(hsv, from_hsv, dst=p)
    for i in np.flatnonzero(gray):
        p = patches[i]
        p[...] = cv2.cvtColor(p, cv2.COLOR_RGB2GRAY if rgb else cv2.COLOR_BGR2GRAY)[..., None]
    for i in np.flatnonzero(blur):
        ksize = 2 * int(math.ceil(3 * sigma[i])) + 1
        cv2.GaussianBlur(patches[i], (ksize, ksize), sigmaX=float(sigma[i]), sigmaY=float(sigma[i]),
                         dst=patches[i], borderType=cv2.BORDER_REFLECT_101)
    if return_params:
        params = dict(jitter=jitter, brightness=brightness, contrast=contrast, saturation=saturation,
                      hue=hue, grayscale=gray, blur=blur, sigma=sigma)
        return patches, params
    return patches


# ----------------------------------------------------------------------------- mapper
def file_key(file_name) -> int:
    """A stable integer for a file name (seeds per-record generators)."""
    return zlib.crc32(str(file_name).encode("utf-8", "surrogateescape"))


@contextlib.contextmanager
def numpy_global_seed(seed: Optional[int]):
    """Seeds numpy's global RNG for the block and restores its state afterwards
    (Detectron2's augmentations draw from it). ``None``: leaves it alone."""
    if seed is None:
        yield
        return
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


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

    From a yaml config: ``MODEL.UPDETR.NUM_PATCHES``, ``INPUT.QUERY_PATCH.{SIZE, MIN_SIDE,
    MAX_FRACTION, ASPECT_RANGE (empty: none), AUGMENT, SEED (-1: none)}``,
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
            num_patches: patches (boxes) per image, M.
            patch_size: side of the square patches, in pixels.
            min_side: smallest patch side, in pixels of the original image (image sides
                shorter than this give patches spanning that whole side).
            max_fraction: largest patch side, as a fraction of the image side, in (0, 1].
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
        if is_train:
            min_sizes, max_size = cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN
            sample_style = cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING
        else:
            min_sizes, max_size, sample_style = cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST, "choice"
        aspect = tuple(qp.ASPECT_RANGE) if qp.ASPECT_RANGE else None
        return {
            "is_train": is_train,
            "num_patches": cfg.MODEL.UPDETR.NUM_PATCHES,
            "patch_size": qp.SIZE,
            "min_side": qp.MIN_SIDE,
            "max_fraction": qp.MAX_FRACTION,
            "aspect_range": aspect,
            "patch_augment": qp.AUGMENT,
            "augmentations": [T.ResizeShortestEdge(min_sizes, max_size, sample_style)],
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
        if self.seed is None:
            return np.random.default_rng(np.random.randint(0, 2**32, size=4, dtype=np.int64))
        key = file_key(dataset_dict["file_name"])
        return np.random.default_rng([self.seed, key])

    def read_image(self, dataset_dict: Dict) -> np.ndarray:
        """The image as HxWx3 uint8 in ``image_format``; ``ValueError`` naming the file if
        it cannot be decoded. Sets the record's height/width when it has none."""
        file_name = dataset_dict["file_name"]
        try:
            image = utils.read_image(file_name, format=self.image_format)
        except Exception as e:
            raise ValueError(f"Cannot read image {file_name}: {type(e).__name__}: {e}") from e
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
        aug_input = T.AugInput(image)
        with numpy_global_seed(resize_seed):
            transforms = self.augmentations(aug_input)
        out = aug_input.image
        new_boxes = transforms.apply_box(boxes)
        return out, new_boxes

    def __call__(self, dataset_dict: Dict) -> Dict:
        dataset_dict = dict(dataset_dict)  # check_image_size may add height/width
        image = self.read_image(dataset_dict)
        rng = self.record_rng(dataset_dict)
        # Drawn first, so that boxes and image size do not depend on patch_augment.
        resize_seed = None if self.seed is None else int(rng.integers(0, 2**32))
        boxes, patches = self.make_patches(image, rng)
        image, boxes = self.resize(image, boxes, resize_seed)

        return patch_detection_input(dataset_dict, image, boxes, patches_to_tensor(patches))


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
