"""Where UP-DETR's random query patches come from: boxes drawn on the original image
(:func:`sample_patch_boxes`) and the crops cut from them, resized to the square patch
size (:func:`crop_and_resize_patches`). Their colour augmentation is in
``patch_augmentation.py``."""
import math
from typing import Optional, Tuple

import cv2
import numpy as np

__all__ = ["crop_and_resize_patches", "sample_patch_boxes"]


# ----------------------------------------------------------------------------- boxes
def _side_range(size: int, min_side: int, max_fraction: float) -> Tuple[int, int]:
    """Inclusive integer range of a patch side on an image side of ``size`` px.

    ``[min_side, min(floor(max_fraction * size), size - min_side)]``: with
    ``max_fraction`` 1 (the default) this is the original's ``[min_pixel, side -
    min_pixel]`` with ``min_pixel`` 8 (``datasets/selfdet.py``,
    ``get_random_patch_from_img``), which keeps every patch at least ``min_side`` px
    short of the image side. The original skips images with a side
    of 16 px or less, where that range is empty or a single size; here such an image
    still gets patches: sides in ``[min_side, 2 * min_side)`` give ``min_side`` px
    patches and sides shorter than ``min_side`` give patches spanning the whole side
    (never 0 px).
    """
    lo = min(min_side, size)
    hi = min(size - min_side, int(math.floor(max_fraction * size + 1e-9)))
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
    min(floor(max_fraction * side), side - min_side))]`` (:func:`_side_range`). Without
    ``aspect_range`` they are drawn independently and uniformly: with the defaults
    (``min_side`` 8, ``max_fraction`` 1) exactly the original's U_int[8, side - 8] per
    side; a smaller ``max_fraction`` only lowers the upper bound. With
    ``aspect_range=(lo, hi)`` the pair is drawn uniformly among the pairs with
    ``lo <= width / height <= hi`` (the distribution that rejection sampling would give,
    with a single draw); if no pair of allowed sides has such an aspect ratio (an image
    too small or too elongated), every patch takes the allowed size whose aspect ratio is
    closest to the range (in log scale).

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
