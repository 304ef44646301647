"""Datasets: the generated demo set, unlabeled image folders, the COCO128 subset and
users' own COCO jsons.

Importing this module registers the demo and COCO128 names in Detectron2's
``DatasetCatalog``; nothing is read or generated until a dataset is loaded.
"""
from .coco128 import coco128_available, coco128_root, register_coco128
from .demo import (
    DEMO_STUFF_CLASSES,
    DEMO_THING_CLASSES,
    demo_root,
    ensure_demo_dataset,
    register_demo_datasets,
)
from .unlabeled import ScanResult, load_unlabeled_folder, register_unlabeled_folder, scan_image_folder
from .user_coco import CocoDatasetError, register_coco_json

register_demo_datasets()
register_coco128()

__all__ = [
    "CocoDatasetError",
    "DEMO_STUFF_CLASSES",
    "DEMO_THING_CLASSES",
    "ScanResult",
    "coco128_available",
    "coco128_root",
    "demo_root",
    "ensure_demo_dataset",
    "load_unlabeled_folder",
    "register_coco128",
    "register_coco_json",
    "register_demo_datasets",
    "register_unlabeled_folder",
    "scan_image_folder",
]
