"""Models: the shared building blocks (backbone adapter, query generators, heads, the
one matcher and one set criterion) and the meta-architectures built from them.
Importing this module registers the meta-architectures in Detectron2's META_ARCH_REGISTRY."""
from .backbone import MaskedBackbone
from .efficientnet import EfficientNetLiteBackbone, build_efficientnet_lite_backbone
from .criterion import BoxL1GIoU, LabelCrossEntropy, LabelFocal, LossTerm, SetCriterion
from .heads import MLP, DetrPredictionHeads
from .matcher import HungarianMatcher
from .meta_arch import Detr
from .queries import LearnedQueries, QueryBundle

__all__ = [
    "BoxL1GIoU",
    "Detr",
    "DetrPredictionHeads",
    "EfficientNetLiteBackbone",
    "HungarianMatcher",
    "LabelCrossEntropy",
    "LabelFocal",
    "LearnedQueries",
    "LossTerm",
    "MLP",
    "MaskedBackbone",
    "QueryBundle",
    "SetCriterion",
    "build_efficientnet_lite_backbone",
]
