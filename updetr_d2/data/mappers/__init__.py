from .build import MAPPER_REGISTRY, build_dataset_mapper
from .detr_mapper import DetrDatasetMapper, RandomChoiceAugmentation, detr_train_augmentations

__all__ = [
    "MAPPER_REGISTRY",
    "build_dataset_mapper",
    "DetrDatasetMapper",
    "RandomChoiceAugmentation",
    "detr_train_augmentations",
]
