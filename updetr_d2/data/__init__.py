"""Data: dataset registration and dataset mappers."""
from .datasets import (
    coco128_available,
    coco128_root,
    ensure_demo_dataset,
    register_coco128,
    register_demo_datasets,
    register_unlabeled_folder,
    scan_image_folder,
)
from .mappers import MAPPER_REGISTRY, DetrDatasetMapper, build_dataset_mapper

__all__ = [
    "MAPPER_REGISTRY",
    "DetrDatasetMapper",
    "build_dataset_mapper",
    "coco128_available",
    "coco128_root",
    "ensure_demo_dataset",
    "register_coco128",
    "register_demo_datasets",
    "register_unlabeled_folder",
    "scan_image_folder",
]
