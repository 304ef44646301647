"""Models of the project: matcher and set criterion shared by every DETR-family method."""
from .criterion import BoxL1GIoU, LabelCrossEntropy, LabelFocal, LossTerm, SetCriterion
from .matcher import HungarianMatcher

__all__ = ["BoxL1GIoU", "HungarianMatcher", "LabelCrossEntropy", "LabelFocal", "LossTerm", "SetCriterion"]
