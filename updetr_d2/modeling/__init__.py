"""Models: the parts two or more methods share (backbone adapter, query generators,
the one attention-mask builder, heads, the one matcher and one set criterion, plug-ins)
and the base meta-architectures built from them. Nothing here imports a method.
Importing this module registers ``Detr`` and ``DeformableDetr`` in Detectron2's
META_ARCH_REGISTRY and the shared query generators in QUERY_GENERATOR_REGISTRY."""
from ..layers.mlp import MLP
from .backbone import MaskedBackbone
from .criterion import BoxL1GIoU, LabelCrossEntropy, LabelFocal, LossTerm, SetCriterion
from .efficientnet import EfficientNetLiteBackbone, build_efficientnet_lite_backbone
from .heads import BoxRefinementHeads, DetrPredictionHeads
from .matcher import HungarianMatcher
from .meta_arch import DecoderStates, DeformableDetr, DetectorState, Detr, SetPredictionDetector
from .plugins import PLUGIN_REGISTRY, DetectorPlugin
from .queries import QUERY_GENERATOR_REGISTRY, AnchorQueries, LearnedPointQueries, LearnedQueries, QueryBundle

__all__ = [
    "AnchorQueries",
    "BoxL1GIoU",
    "BoxRefinementHeads",
    "DecoderStates",
    "DeformableDetr",
    "DetectorPlugin",
    "DetectorState",
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
    "PLUGIN_REGISTRY",
    "QUERY_GENERATOR_REGISTRY",
    "QueryBundle",
    "SetCriterion",
    "SetPredictionDetector",
    "build_efficientnet_lite_backbone",
]
