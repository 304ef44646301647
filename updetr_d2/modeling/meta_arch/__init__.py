from .base import DecoderStates, DetectorState, SetPredictionDetector, register_checkpoint_rule
from .deformable_detr import DeformableDetr
from .detr import Detr

__all__ = ["DecoderStates", "DeformableDetr", "DetectorState", "Detr", "SetPredictionDetector",
           "register_checkpoint_rule"]
