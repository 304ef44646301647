"""Per-record randomness of UP-DETR's mappers (query patches and one-shot queries).

With a seed, a record's draws come from ``np.random.default_rng([seed, crc32(file_name)])``,
so a record always maps to the same output whatever the data-loader worker or the order;
without one, every call draws fresh from numpy's global RNG (which Detectron2 seeds per
worker). Detectron2's augmentations draw from numpy's global RNG only, hence
:func:`numpy_global_seed` to seed them from the record's generator.
"""
import contextlib
import zlib
from typing import Optional

import numpy as np
from detectron2.data import transforms as T

__all__ = ["file_key", "numpy_global_seed", "record_rng", "seeded_augment"]


def file_key(file_name) -> int:
    """A stable integer for a file name (seeds per-record generators)."""
    return zlib.crc32(str(file_name).encode("utf-8", "surrogateescape"))


def record_rng(seed: Optional[int], file_name) -> np.random.Generator:
    """The generator for one mapper call: per record with a ``seed``, else fresh from
    numpy's global RNG."""
    if seed is None:
        return np.random.default_rng(np.random.randint(0, 2**32, size=4, dtype=np.int64))
    return np.random.default_rng([seed, file_key(file_name)])


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


def seeded_augment(augmentations: T.AugmentationList, image: np.ndarray, seed: Optional[int]):
    """Applies ``augmentations`` to ``image`` with numpy's global RNG seeded by ``seed``
    (``None``: as it is); returns the augmented image and the transforms applied."""
    aug_input = T.AugInput(image)
    with numpy_global_seed(seed):
        transforms = augmentations(aug_input)
    return aug_input.image, transforms
