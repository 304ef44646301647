"""Detectron2's ``DatasetMapper`` reading images with the project's reader and dropping
degenerate boxes, the base of the project's detection mappers and what
``INPUT.DATASET_MAPPER "DatasetMapper"`` names.

- Images: :func:`updetr_d2.data.images.read_image` (16-bit, float and transparent
  images scaled to 8 bits instead of clipped). ``__call__`` is Detectron2's own, whose
  image reading cannot be swapped otherwise.
- Boxes: annotations with a degenerate box (:func:`~updetr_d2.data.checks.box_problem`,
  the rule evaluation applies to its ground truth too) are dropped before the
  augmentations, which would otherwise turn a negative width into a real box.
"""
import copy

import numpy as np
import torch
from detectron2.data import DatasetMapper as D2DatasetMapper
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T

from ..checks.boxes import drop_degenerate_annotations
from ..images import read_image

__all__ = ["DatasetMapper"]


class DatasetMapper(D2DatasetMapper):
    def _transform_annotations(self, dataset_dict, transforms, image_shape):
        dataset_dict["annotations"] = drop_degenerate_annotations(
            dataset_dict["annotations"], dataset_dict.get("height"), dataset_dict.get("width")
        )
        super()._transform_annotations(dataset_dict, transforms, image_shape)

    def __call__(self, dataset_dict):
        dataset_dict = copy.deepcopy(dataset_dict)  # it will be modified by code below
        image = read_image(dataset_dict["file_name"], format=self.image_format)
        utils.check_image_size(dataset_dict, image)

        # Label maps are not images: Detectron2's reader keeps their values.
        if "sem_seg_file_name" in dataset_dict:
            sem_seg_gt = utils.read_image(dataset_dict.pop("sem_seg_file_name"), "L").squeeze(2)
        else:
            sem_seg_gt = None

        aug_input = T.AugInput(image, sem_seg=sem_seg_gt)
        transforms = self.augmentations(aug_input)
        image, sem_seg_gt = aug_input.image, aug_input.sem_seg

        image_shape = image.shape[:2]  # h, w
        dataset_dict["image"] = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        if sem_seg_gt is not None:
            dataset_dict["sem_seg"] = torch.as_tensor(sem_seg_gt.astype("long"))

        if self.proposal_topk is not None:
            utils.transform_proposals(dataset_dict, image_shape, transforms, proposal_topk=self.proposal_topk)

        if not self.is_train:
            dataset_dict.pop("annotations", None)
            dataset_dict.pop("sem_seg_file_name", None)
            return dataset_dict

        if "annotations" in dataset_dict:
            self._transform_annotations(dataset_dict, transforms, image_shape)
        return dataset_dict
