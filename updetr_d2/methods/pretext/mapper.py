"""The encoder pretexts' mapper: a detection sample plus its corrupted pretext view.

:class:`PretextDatasetMapper` wraps a registered base mapper (``MODEL.PRETEXT.BASE_MAPPER``,
DETR's by default) and adds to its output

``"pretext": {"image", "source", "transformed"}`` (see :class:`.corruption.CorruptedView`)

made from the base mapper's own (augmented) image: its top-left ``floor(H/P)*P x
floor(W/P)*P`` part, corrupted. The original code resizes every image to a square of 512
px so that patches and tokens line up; here any size works because only whole patches of
the image exist, so when the batch is padded the padding never lies inside a patch and
never enters the pretext loss. ``"image"``, the clean detection view, is exactly what the
base mapper gave.

Randomness: the corruption draws only from the mapper's own ``np.random.Generator``, never
from numpy's global RNG, python's ``random`` or torch's global generator, which the base
mapper's augmentation uses. So the detection view is the same as with the base mapper
alone, and training with the pretext at weight 0 equals training without it.

Registered in ``updetr_d2.data.mappers.MAPPER_REGISTRY`` on import of this module. The
mapper takes the pretext's task name, not the corruption, so that a LazyConfig can tie it to
the plug-in's with one interpolation (``task="${model.plugins.0.task}"``, see
``configs/common/models/encoder_pretext.py``).
"""
import numbers
import os
import zlib
from typing import Callable, Dict, Optional, Sequence

import numpy as np
import torch
from detectron2.config import configurable

from ...data.mappers import MAPPER_REGISTRY
from .config import TASKS
from .corruption import corrupt
from .geometry import crop_to_patches

__all__ = ["IMAGENET_CONSTANTS", "PretextDatasetMapper", "mim_fill", "mim_fill_colour"]

# The original's MIM fill, R, G, B, written into the ImageNet-normalised image.
IMAGENET_CONSTANTS = (0.485, 0.456, 0.406)


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def mim_fill_colour(mode: str, pixel_mean: Sequence[float], pixel_std: Sequence[float],
                    image_format: str = "RGB") -> Sequence[float]:
    """The MIM fill colour in input pixel units (0-255, ``image_format`` channel order).

    The model normalises with ``(x - pixel_mean) / pixel_std``, so "mean" becomes exactly
    0, and "imagenet_constants" (``mean + c * std``) becomes the original's constants ``c``.
    A LazyConfig calls it with the model's ``pixel_mean`` / ``pixel_std`` interpolated, so
    the fill follows a later change of the normalisation.
    """
    mean = [float(v) for v in pixel_mean]
    if mode == "mean":
        return tuple(mean)
    if mode != "imagenet_constants":
        raise ValueError(f"MIM fill {mode!r} (MODEL.PRETEXT.MIM_FILL); choose 'mean' or 'imagenet_constants'")
    if image_format not in ("RGB", "BGR"):
        raise ValueError(f"the MIM fill 'imagenet_constants' is defined for RGB or BGR images, got image format "
                         f"{image_format!r} (INPUT.FORMAT)")
    std = [float(v) for v in pixel_std]
    # pixel_mean/std are in the images' channel order, the constants in R, G, B.
    consts = IMAGENET_CONSTANTS if image_format == "RGB" else IMAGENET_CONSTANTS[::-1]
    if not len(mean) == len(std) == 3:
        raise ValueError(f"the pixel mean / std (MODEL.PIXEL_MEAN/PIXEL_STD) need 3 values for {image_format} "
                         f"images, got {mean} / {std}")
    return tuple(m + c * s for m, c, s in zip(mean, consts, std))


def mim_fill(cfg) -> Sequence[float]:
    """:func:`mim_fill_colour` of a yaml config (``MODEL.PRETEXT.MIM_FILL``,
    ``MODEL.PIXEL_MEAN`` / ``PIXEL_STD``, ``INPUT.FORMAT``)."""
    return mim_fill_colour(cfg.MODEL.PRETEXT.MIM_FILL, cfg.MODEL.PIXEL_MEAN, cfg.MODEL.PIXEL_STD, cfg.INPUT.FORMAT)


@MAPPER_REGISTRY.register()
class PretextDatasetMapper:
    """Base mapper output + ``"pretext"`` (see the module docstring).

    ``out["pretext"]``: ``"image"`` float32 ``[C, h*P, w*P]`` (pixel units and channel
    order of ``out["image"]``, corrupted), ``"source"`` int64 ``[h, w]``, ``"transformed"``
    bool ``[h, w]``, with ``(h, w)`` the whole-patch grid of the detection image.

    From a yaml config: ``MODEL.PRETEXT.{BASE_MAPPER, TASK, RATIO, PATCH_SIZE, MIM_FILL}``,
    ``MODEL.PIXEL_MEAN``/``PIXEL_STD`` and ``INPUT.FORMAT`` (for the fill). From a
    LazyConfig: ``add_encoder_pretext`` (``configs/common/models/encoder_pretext.py``)
    wraps the train loader's mapper, its task and patch size interpolated from the plug-in.
    """

    @configurable
    def __init__(
        self,
        base_mapper: Callable,
        *,
        task: str,
        ratio: float,
        patch_size: int,
        fill: Sequence[float],
        seed: Optional[int] = None,
    ):
        """
        Args:
            base_mapper: makes the detection sample (``dict`` with a uint8 CHW ``"image"``)
                from a record, or ``None`` to skip it.
            task: the pretext, one of :data:`.config.TASKS`; its corruption is
                ``TASKS[task][0]`` (``self.kind``).
            ratio: fraction of the patches masked or shuffled, in [0, 1].
            patch_size: side ``P`` of the patches in pixels, the stride (or a multiple of
                the strides) of the encoder levels the pretext head reads.
            fill: the MIM colour, one value per channel in pixel units.
            seed: ``None``: fresh corruptions on every call, from a generator seeded by
                ``torch.initial_seed()`` (different in every data-loader worker); an int >=
                0: each record always gets the same corruption (by its ``file_name``).
        """
        if task not in TASKS:
            raise ValueError(f"unknown pretext task {task!r}; choose one of {sorted(TASKS)}")
        if isinstance(ratio, bool) or not isinstance(ratio, numbers.Real) or not 0.0 <= ratio <= 1.0:
            raise ValueError(f"ratio must be a number in [0, 1], got {ratio!r}")
        if not _is_int(patch_size) or patch_size < 1:
            raise ValueError(f"patch_size must be an integer >= 1, got {patch_size!r}")
        if seed is not None and (not _is_int(seed) or seed < 0):
            raise ValueError(f"seed must be None or an integer >= 0, got {seed!r}")
        self.base_mapper = base_mapper
        self.task = task
        self.kind = TASKS[task][0]
        self.ratio = float(ratio)
        self.patch_size = int(patch_size)
        self.fill = tuple(float(v) for v in fill)
        self.seed = None if seed is None else int(seed)
        self._rng: Optional[np.random.Generator] = None
        self._rng_pid: Optional[int] = None

    @classmethod
    def from_config(cls, cfg, is_train: bool = True) -> Dict:
        p = cfg.MODEL.PRETEXT
        try:
            base_cls = MAPPER_REGISTRY.get(p.BASE_MAPPER)
        except KeyError:
            raise ValueError(
                f"MODEL.PRETEXT.BASE_MAPPER={p.BASE_MAPPER!r} is not a registered dataset mapper; "
                f"choose one of {sorted(name for name, _ in MAPPER_REGISTRY)}"
            ) from None
        if p.TASK not in TASKS:
            raise ValueError(f"MODEL.PRETEXT.TASK={p.TASK!r}; choose one of {sorted(TASKS)}")
        return {
            "base_mapper": base_cls(cfg, is_train),
            "task": p.TASK,
            "ratio": p.RATIO,
            "patch_size": p.PATCH_SIZE,
            "fill": mim_fill(cfg),
            "seed": None,
        }

    def __repr__(self):
        return (f"{type(self).__name__}(base_mapper={self.base_mapper}, task={self.task!r}, ratio={self.ratio}, "
                f"patch_size={self.patch_size}, fill={self.fill}, seed={self.seed})")

    def rng(self, dataset_dict: Dict) -> np.random.Generator:
        """The generator for one call. Seeded: a fresh one per record. Else the mapper's
        own, made on first use in each process: ``torch.initial_seed()`` only reads the
        seed (it draws nothing) and differs per data-loader worker; re-made after a fork
        so that workers forked from a used mapper do not repeat each other."""
        if self.seed is not None:
            key = zlib.crc32(str(dataset_dict["file_name"]).encode("utf-8", "surrogateescape"))
            return np.random.default_rng((self.seed, key))
        if self._rng is None or self._rng_pid != os.getpid():
            self._rng = np.random.default_rng([torch.initial_seed() % 2**63, 1])
            self._rng_pid = os.getpid()
        return self._rng

    def __call__(self, dataset_dict: Dict) -> Optional[Dict]:
        out = self.base_mapper(dataset_dict)
        if out is None:
            return None
        # corrupt() never writes into its input, so "image" stays as the base mapper made it.
        image = crop_to_patches(out["image"].to(torch.float32), self.patch_size)
        if image.shape[-2] == 0 or image.shape[-1] == 0:
            height, width = out["image"].shape[-2:]
            raise ValueError(
                f"{dataset_dict.get('file_name')}: the mapped image of {height}x{width} px holds no whole "
                f"{self.patch_size}-px patch (MODEL.PRETEXT.PATCH_SIZE); use larger images or a smaller patch"
            )
        view = corrupt(image, self.kind, self.ratio, self.patch_size, self.fill, self.rng(dataset_dict))
        out["pretext"] = {"image": view.image, "source": view.source, "transformed": view.transformed}
        return out
