"""DETR's training augmentation as Detectron2 ``Augmentation``s, and its mapper.

DETR (Carion et al. 2020) trains with a horizontal flip, then with probability 1/2
a multi-scale resize, otherwise a resize to a short side in {400, 500, 600}, a random
crop of 384-600 px and the multi-scale resize. Everything else (image reading, box
and mask transforms, dropping crowd annotations and boxes a crop removed) is
Detectron2's ``DatasetMapper`` (through :mod:`.dataset_mapper`: the project's image reader,
degenerate boxes dropped).
"""
from typing import List, Optional, Sequence

import numpy as np
from detectron2.data import transforms as T

from .build import MAPPER_REGISTRY
from .dataset_mapper import DatasetMapper


class RandomChoiceAugmentation(T.Augmentation):
    """Apply one of several augmentation lists, chosen at random per sample."""

    def __init__(self, branches: Sequence[Sequence[T.Augmentation]], probs: Optional[Sequence[float]] = None):
        super().__init__()
        self.branches = [T.AugmentationList(list(branch)) for branch in branches]
        if probs is None:
            probs = [1.0 / len(branches)] * len(branches)
        if len(probs) != len(branches) or abs(sum(probs) - 1.0) > 1e-6:
            raise ValueError(f"RandomChoiceAugmentation needs one probability per branch summing to 1, got {probs}")
        self.probs = list(probs)

    def __call__(self, aug_input):
        branch = self.branches[np.random.choice(len(self.branches), p=self.probs)]
        return branch(aug_input)

    def __repr__(self):
        return f"RandomChoiceAugmentation(branches={self.branches}, probs={self.probs})"


def detr_train_augmentations(
    min_sizes: Sequence[int],
    max_size: int,
    crop_enabled: bool = True,
    crop_pre_resize: Sequence[int] = (400, 500, 600),
    crop_type: str = "absolute_range",
    crop_size: Sequence[int] = (384, 600),
    crop_prob: float = 0.5,
    flip: bool = True,
) -> List[T.Augmentation]:
    if crop_type.startswith("relative") and max(crop_size) > 1:
        raise ValueError(
            f"INPUT.CROP.SIZE={tuple(crop_size)} is in pixels but INPUT.CROP.TYPE={crop_type!r} "
            "takes fractions of the image; use 'absolute_range' (as DETR) or fractions <= 1"
        )
    resize = T.ResizeShortestEdge(tuple(min_sizes), max_size, sample_style="choice")
    augs: List[T.Augmentation] = [T.RandomFlip(horizontal=True)] if flip else []
    if not crop_enabled or crop_prob <= 0:
        return augs + [resize]
    crop_branch = [
        T.ResizeShortestEdge(tuple(crop_pre_resize), sample_style="choice"),
        T.RandomCrop(crop_type, tuple(crop_size)),
        resize,
    ]
    return augs + [RandomChoiceAugmentation([[resize], crop_branch], [1.0 - crop_prob, crop_prob])]


@MAPPER_REGISTRY.register()
class DetrDatasetMapper(DatasetMapper):
    """Detectron2's ``DatasetMapper`` with DETR's augmentation (from yaml: ``INPUT.*``)."""

    @classmethod
    def from_config(cls, cfg, is_train: bool = True):
        ret = super().from_config(cfg, is_train)
        if is_train:
            ret["augmentations"] = detr_train_augmentations(
                cfg.INPUT.MIN_SIZE_TRAIN,
                cfg.INPUT.MAX_SIZE_TRAIN,
                crop_enabled=cfg.INPUT.CROP.ENABLED,
                crop_pre_resize=cfg.INPUT.DETR_CROP.PRE_RESIZE,
                crop_type=cfg.INPUT.CROP.TYPE,
                crop_size=cfg.INPUT.CROP.SIZE,
                crop_prob=cfg.INPUT.DETR_CROP.PROB,
                flip=cfg.INPUT.RANDOM_FLIP != "none",
            )
        # As Detectron2 does: boxes of cropped instances are recomputed from their masks.
        ret["recompute_boxes"] = is_train and cfg.MODEL.MASK_ON and cfg.INPUT.CROP.ENABLED
        return ret
