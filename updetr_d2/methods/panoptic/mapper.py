"""DETR's panoptic training targets from Detectron2's COCO panoptic records.

DETR (Carion et al. 2020, ``datasets/coco_panoptic.py``) trains panoptic segmentation as
set prediction over *all* segments of an image: every entry of ``segments_info``, thing or
stuff, becomes one target (class + binary mask + box), crowd segments included. The
augmentation is the detection one (flip, multi-scale resize, 50% resize + random crop),
boxes are the tight boxes of the masks after augmentation, and a crop drops the segments
whose mask it empties.

:class:`PanopticDetrDatasetMapper` does that for the records of Detectron2's
``load_coco_panoptic_json`` (``pan_seg_file_name`` + ``segments_info`` with contiguous
``category_id``), e.g. ``updetr_demo_panoptic_*`` or a ``register_coco_panoptic`` dataset.
From yaml: ``INPUT.DATASET_MAPPER: "PanopticDetrDatasetMapper"`` (same ``INPUT.*`` keys as
``DetrDatasetMapper``).

How segment ids travel through the augmentations: the PNG encodes id = R + 256 G + 256^2 B,
up to 2^24 - 1, but Detectron2's ``ResizeTransform.apply_segmentation`` only resizes uint8
(through PIL) and float arrays (through ``F.interpolate``, which refuses int32/int64). So
the mapper transforms a map of segment *indices* instead (0 = void, k = k-th entry of
``segments_info``): uint8 whenever there are fewer than 256 segments (PIL nearest, as
Detectron2 does for semantic labels), else float32, whose integers are exact far beyond
any segment count. Nearest interpolation never blends labels, so every output pixel holds
an index that was in the input.
"""
import copy
from typing import List, Union

import numpy as np
import torch
from detectron2.config import configurable
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from detectron2.structures import BitMasks, Instances
from detectron2.utils.file_io import PathManager
from PIL import Image

from ...data.images import read_image
from ...data.mappers import MAPPER_REGISTRY, DetrDatasetMapper

__all__ = ["PanopticDetrDatasetMapper", "read_panoptic_ids"]


def read_panoptic_ids(path: str) -> np.ndarray:
    """The COCO panoptic PNG at ``path`` as an int64 (H, W) map of segment ids
    (R + 256 G + 256^2 B; 0 is void). Read as plain RGB: it is a label map, not an image,
    so the project's image reader (which rescales some modes) must not touch it."""
    try:
        with PathManager.open(path, "rb") as f:
            rgb = np.asarray(Image.open(f).convert("RGB"), dtype=np.int64)
    except FileNotFoundError:
        raise FileNotFoundError(f"panoptic segmentation PNG not found: {path}") from None
    return rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]


def _segment_index_map(pan_ids: np.ndarray, segments_info: List[dict]) -> np.ndarray:
    """0 = void (or an id not in ``segments_info``), k = ``segments_info[k - 1]``; uint8
    if it fits (PIL's exact nearest resize), float32 otherwise (see the module docstring)."""
    dtype = np.uint8 if len(segments_info) < 256 else np.float32
    index = np.zeros(pan_ids.shape, dtype=dtype)
    for k, segment in enumerate(segments_info, 1):
        index[pan_ids == segment["id"]] = k
    return index


@MAPPER_REGISTRY.register()
class PanopticDetrDatasetMapper:
    """Panoptic record -> ``{"image", "height", "width", "image_id", "file_name",
    "instances"}`` with one instance per segment still visible after augmentation:
    ``gt_masks`` (``BitMasks``), ``gt_classes`` (contiguous category id) and ``gt_boxes``
    (the masks' tight boxes, Detectron2's exclusive max). At test time only the image
    (resized by the test augmentation) and the record's keys; the PNG is not read.
    """

    uses_dataset_labels = True  # the input checks compare the dataset's classes with the model's

    @configurable
    def __init__(
        self,
        is_train: bool = True,
        *,
        augmentations: List[Union[T.Augmentation, T.Transform]],
        image_format: str = "BGR",
    ):
        self.is_train = is_train
        self.augmentations = T.AugmentationList(augmentations)
        self.image_format = image_format

    @classmethod
    def from_config(cls, cfg, is_train: bool = True):
        # DetrDatasetMapper's choice of augmentation: DETR's in training, Detectron2's
        # ResizeShortestEdge(MIN_SIZE_TEST, MAX_SIZE_TEST) at test time.
        ret = DetrDatasetMapper.from_config(cfg, is_train)
        return {"is_train": is_train, "augmentations": ret["augmentations"], "image_format": ret["image_format"]}

    def __call__(self, dataset_dict: dict) -> dict:
        dataset_dict = copy.deepcopy(dataset_dict)  # modified below
        dataset_dict.pop("annotations", None)  # instance annotations: the targets are the segments
        if self.is_train and "pan_seg_file_name" not in dataset_dict:
            # Only training needs the PNG; inference on any image set stays possible.
            raise ValueError(
                f"PanopticDetrDatasetMapper: the record of {dataset_dict.get('file_name')!r} has no "
                "'pan_seg_file_name'; the training dataset must be a panoptic one (registered with "
                "Detectron2's register_coco_panoptic, or updetr_demo_panoptic_*), not an instance one."
            )
        image = read_image(dataset_dict["file_name"], format=self.image_format)
        utils.check_image_size(dataset_dict, image)

        if not self.is_train:
            aug_input = T.AugInput(image)
            self.augmentations(aug_input)
            dataset_dict["image"] = torch.as_tensor(np.ascontiguousarray(aug_input.image.transpose(2, 0, 1)))
            return dataset_dict

        segments = dataset_dict["segments_info"]
        pan_ids = read_panoptic_ids(dataset_dict["pan_seg_file_name"])
        if pan_ids.shape != image.shape[:2]:
            raise ValueError(
                f"panoptic PNG {dataset_dict['pan_seg_file_name']} is {pan_ids.shape[::-1]} (w, h) but "
                f"its image {dataset_dict['file_name']} is {image.shape[1::-1]}"
            )
        aug_input = T.AugInput(image, sem_seg=_segment_index_map(pan_ids, segments))
        self.augmentations(aug_input)
        image, index = aug_input.image, aug_input.sem_seg.astype(np.int64)
        image_shape = image.shape[:2]
        dataset_dict["image"] = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))

        # Every segment is a target, things and stuff alike. Crowd segments are kept too:
        # DETR's coco_panoptic.py does not filter iscrowd, so neither do we.
        masks, classes = [], []
        for k, segment in enumerate(segments, 1):
            mask = index == k
            if mask.any():  # a crop may have removed the segment (DETR drops empty masks)
                masks.append(mask)
                classes.append(segment["category_id"])
        instances = Instances(image_shape)
        if masks:
            instances.gt_masks = BitMasks(torch.from_numpy(np.stack(masks)))
        else:
            instances.gt_masks = BitMasks(torch.zeros((0, *image_shape), dtype=torch.bool))
        instances.gt_classes = torch.tensor(classes, dtype=torch.int64)
        # Boxes from the augmented masks, so they are tight after flips, resizes and crops.
        instances.gt_boxes = instances.gt_masks.get_bounding_boxes()
        dataset_dict["instances"] = instances
        return dataset_dict
