"""Models: the shared building blocks (backbone adapter, query generators, heads, the
one matcher and one set criterion) and the meta-architectures built from them.
Importing this module registers the meta-architectures in Detectron2's META_ARCH_REGISTRY."""
from .backbone import MaskedBackbone
from .efficientnet import EfficientNetLiteBackbone, build_efficientnet_lite_backbone
from .criterion import BoxL1GIoU, LabelCrossEntropy, LabelFocal, LossTerm, SetCriterion
from .denoising import DenoisingQueries, dn_losses
from .heads import MLP, BoxRefinementHeads, DetrPredictionHeads
from .matcher import HungarianMatcher
from .meta_arch import DeformableDetr, Detr
from .queries import AnchorQueries, LearnedPointQueries, LearnedQueries, QueryBundle

__all__ = [
    "AnchorQueries",
    "BoxL1GIoU",
    "BoxRefinementHeads",
    "DeformableDetr",
    "DenoisingQueries",
    "Detr",
    "DetrPredictionHeads",
    "EfficientNetLiteBackbone",
    "HungarianMatcher",
    "LabelCrossEntropy",
    "LabelFocal",
    "LearnedPointQueries",
    "LearnedQueries",
    "LossTerm",
    "MLP",
    "MaskedBackbone",
    "QueryBundle",
    "SetCriterion",
    "build_efficientnet_lite_backbone",
    "dn_losses",
]
