from .base import SetPredictionDetector
from .deformable_detr import DeformableDetr
from .detr import Detr

__all__ = ["DeformableDetr", "Detr", "SetPredictionDetector"]
