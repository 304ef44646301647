"""What a mapper's augmentations can make of an image's size, from the size alone (no
image is read): every size the resize and crop choices can produce, their extremes for
random ranges. An image is too thin for a mapper when one of those sizes has a side below
one pixel (the loader would fail with "height and width must be > 0", naming no file).

Augmentations are read from the objects the mapper holds, so the numbers stay in the
config that built them. Size-preserving augmentations (flips, colour) and ones this module
does not know are taken as leaving the size as it is. Sizes are numpy arrays ``[images,
candidates]``, so that a whole dataset is one pass per augmentation; the arithmetic is
Detectron2's (``ResizeShortestEdge.get_output_shape``, ``RandomCrop.get_crop_size``) in
float64, the same numbers as its Python floats.
"""
from typing import Optional, Tuple

import numpy as np
from detectron2.data import transforms as T

__all__ = ["augmentations_of", "output_sizes", "smallest_side", "smallest_sides"]

_CHUNK = 4096  # images per pass: bounds the [images, candidates] arrays


def augmentations_of(mapper) -> Optional[list]:
    """The augmentation list a mapper applies to its images (looking through mappers that
    wrap a ``base_mapper``), or ``None`` when it has none to read."""
    while mapper is not None:
        augs = getattr(mapper, "augmentations", None)
        if augs is not None:
            return list(getattr(augs, "augs", augs))
        mapper = getattr(mapper, "base_mapper", None)
    return None


def _round(x):
    return np.floor(x + 0.5)  # int(x + 0.5) of non-negative x


def _resize(h, w, short: int, max_size: float):
    """``ResizeShortestEdge.get_output_shape`` on arrays (0: Detectron2's "no resize")."""
    if short == 0:
        return h, w
    scale = short / np.minimum(h, w)
    newh = np.where(h < w, float(short), scale * h)
    neww = np.where(h < w, scale * w, float(short))
    longest = np.maximum(newh, neww)
    shrink = np.where(longest > max_size, max_size / longest, 1.0)
    return _round(np.where(longest > max_size, newh * shrink, newh)), _round(np.where(longest > max_size, neww * shrink, neww))


def _crops(aug: T.RandomCrop, h, w):
    kind, size = aug.crop_type, aug.crop_size
    if kind == "relative":
        return [(_round(h * size[0]), _round(w * size[1]))]
    if kind == "relative_range":
        return [(_round(h * size[0]), _round(w * size[1])), (h, w)]
    if kind == "absolute":
        return [(np.minimum(h, size[0]), np.minimum(w, size[1]))]
    if kind == "absolute_range":
        return [(np.minimum(h, size[0]), np.minimum(w, size[0])), (np.minimum(h, size[1]), np.minimum(w, size[1]))]
    return [(h, w)]


def _step(aug, h, w) -> Tuple[np.ndarray, np.ndarray]:
    if hasattr(aug, "augs"):  # an AugmentationList
        for inner in aug.augs:
            h, w = _step(inner, h, w)
        return h, w
    if hasattr(aug, "branches"):  # one of several augmentation lists (DETR's crop branch)
        outs = [_step(branch, h, w) for branch in aug.branches]
        return np.concatenate([o[0] for o in outs], axis=1), np.concatenate([o[1] for o in outs], axis=1)
    if isinstance(aug, T.ResizeShortestEdge):
        lengths = [int(v) for v in np.atleast_1d(aug.short_edge_length)]
        if getattr(aug, "is_range", False):
            lengths = [min(lengths), max(lengths)]
        outs = [_resize(h, w, short, aug.max_size) for short in sorted(set(lengths))]
    elif isinstance(aug, T.Resize):
        outs = [(np.full_like(h, aug.shape[0]), np.full_like(w, aug.shape[1]))]
    elif isinstance(aug, T.RandomCrop):
        outs = _crops(aug, h, w)
    elif isinstance(aug, T.RandomCrop_CategoryAreaConstraint):
        outs = _crops(aug.crop_aug, h, w)
    else:
        return h, w
    failed = (h < 1) | (w < 1)  # already below a pixel: later steps cannot repair it
    return (np.concatenate([np.where(failed, h, o[0]) for o in outs], axis=1),
            np.concatenate([np.where(failed, w, o[1]) for o in outs], axis=1))


def output_sizes(augmentations, heights, widths) -> Tuple[np.ndarray, np.ndarray]:
    """Every (height, width) the augmentations can turn each image into (the extremes of
    random ranges): two float arrays ``[images, candidates]``."""
    h = np.asarray(heights, dtype=np.float64).reshape(-1, 1)
    w = np.asarray(widths, dtype=np.float64).reshape(-1, 1)
    with np.errstate(divide="ignore", invalid="ignore"):  # zero sides are masked as failed
        for aug in augmentations:
            h, w = _step(aug, h, w)
    return h, w


def smallest_sides(augmentations, heights, widths) -> np.ndarray:
    """The shortest side each image can get, ``[images]`` (unique sizes computed once)."""
    sizes = np.stack([np.asarray(heights, dtype=np.float64), np.asarray(widths, dtype=np.float64)], axis=1)
    if len(sizes) == 0:
        return np.zeros(0)
    unique, inverse = np.unique(sizes, axis=0, return_inverse=True)
    sides = np.empty(len(unique))
    for start in range(0, len(unique), _CHUNK):
        h, w = output_sizes(augmentations, unique[start:start + _CHUNK, 0], unique[start:start + _CHUNK, 1])
        sides[start:start + _CHUNK] = np.minimum(h, w).min(axis=1)
    return sides[inverse.reshape(-1)]


def smallest_side(augmentations, height: int, width: int) -> float:
    return float(smallest_sides(augmentations, [height], [width])[0])
