from .build import MAPPER_REGISTRY, build_dataset_mapper
from .dataset_mapper import DatasetMapper
from .detr_mapper import DetrDatasetMapper, RandomChoiceAugmentation, detr_train_augmentations

__all__ = [
    "MAPPER_REGISTRY",
    "build_dataset_mapper",
    "DatasetMapper",
    "DetrDatasetMapper",
    "RandomChoiceAugmentation",
    "detr_train_augmentations",
]
