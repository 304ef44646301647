from .build import MAPPER_REGISTRY, build_dataset_mapper
from .detr_mapper import DetrDatasetMapper, RandomChoiceAugmentation, detr_train_augmentations
from .query_patch import QueryPatchDatasetMapper, augment_patches, crop_and_resize_patches, sample_patch_boxes

__all__ = [
    "MAPPER_REGISTRY",
    "build_dataset_mapper",
    "DetrDatasetMapper",
    "RandomChoiceAugmentation",
    "detr_train_augmentations",
    "QueryPatchDatasetMapper",
    "augment_patches",
    "crop_and_resize_patches",
    "sample_patch_boxes",
]
