"""Data: dataset registration, dataset mappers and the listing of image files."""
from .datasets import (
    coco128_available,
    coco128_root,
    ensure_demo_dataset,
    register_coco128,
    register_coco_json,
    register_demo_datasets,
    register_unlabeled_folder,
    scan_image_folder,
)
from .image_files import IMAGE_EXTENSIONS, list_image_files
from .mappers import MAPPER_REGISTRY, DetrDatasetMapper, build_dataset_mapper

__all__ = [
    "IMAGE_EXTENSIONS",
    "MAPPER_REGISTRY",
    "DetrDatasetMapper",
    "build_dataset_mapper",
    "coco128_available",
    "coco128_root",
    "ensure_demo_dataset",
    "list_image_files",
    "register_coco128",
    "register_coco_json",
    "register_demo_datasets",
    "register_unlabeled_folder",
    "scan_image_folder",
]
