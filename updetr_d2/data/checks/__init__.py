"""Checks of a config's datasets before anything trains on them (see :mod:`.scan`), and
the one rule for degenerate boxes shared by training and evaluation (:mod:`.boxes`)."""
from .boxes import box_problem, drop_degenerate_annotations, filter_coco_ground_truth
from .geometry import augmentations_of, output_sizes, smallest_side
from .scan import DatasetReport, DatasetUse, InputCheckError, scan_dataset

__all__ = [
    "DatasetReport",
    "DatasetUse",
    "InputCheckError",
    "augmentations_of",
    "box_problem",
    "drop_degenerate_annotations",
    "filter_coco_ground_truth",
    "output_sizes",
    "scan_dataset",
    "smallest_side",
]
