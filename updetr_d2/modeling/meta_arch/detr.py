"""DETR (Carion et al., 2020) as a Detectron2 meta-architecture.

It fills in the phases of :class:`~updetr_d2.modeling.meta_arch.base.SetPredictionDetector`
with DETR's parts: the last backbone level projected to the transformer width and
encoded, learned queries (any registered generator), the transformer decoder, and
class + box heads; methods override one phase at a time (UP-DETR replaces
``build_queries`` and adds an output and a loss).
"""
import math
from typing import Dict, List, Sequence

from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, build_backbone
from torch import nn

from ...layers.encoder_memory import EncoderMemory
from ...layers.position_encoding import PositionEmbeddingLearned, PositionEmbeddingSine
from ...layers.transformer import Transformer
from ..backbone import MaskedBackbone, config_feature_strides
from ..criterion import BoxL1GIoU, LabelCrossEntropy, SetCriterion
from ..heads import DetrPredictionHeads
from ..matcher import HungarianMatcher
from ..plugins import build_plugins
from ..queries import QueryBundle, build_query_generator
from .base import DecoderStates, DetectorState, SetPredictionDetector

__all__ = ["Detr", "build_position_embedding", "build_transformer", "build_detr_criterion", "matcher_class_weight"]


def matcher_class_weight(cfg) -> float:
    """The matcher's class cost weight: ``MODEL.DETR.MATCHER_CLASS_WEIGHT``, or the class
    loss weight when that is negative (DETR and Deformable DETR use one number for both)."""
    d = cfg.MODEL.DETR
    return d.CLASS_WEIGHT if d.MATCHER_CLASS_WEIGHT < 0 else d.MATCHER_CLASS_WEIGHT


def build_position_embedding(cfg):
    hidden_dim = cfg.MODEL.DETR.HIDDEN_DIM
    kind = cfg.MODEL.DETR.POSITION_EMBEDDING
    if kind == "sine":
        return PositionEmbeddingSine(hidden_dim // 2, temperature=cfg.MODEL.DETR.POSITION_TEMPERATURE, normalize=True,
                                     scale=2 * math.pi)
    if kind == "learned":
        return PositionEmbeddingLearned(hidden_dim // 2)
    raise ValueError(f"MODEL.DETR.POSITION_EMBEDDING must be 'sine' or 'learned', got {kind!r}")


def build_transformer(cfg):
    d = cfg.MODEL.DETR
    return Transformer(
        d_model=d.HIDDEN_DIM,
        nhead=d.NHEADS,
        num_encoder_layers=d.ENC_LAYERS,
        num_decoder_layers=d.DEC_LAYERS,
        dim_feedforward=d.DIM_FEEDFORWARD,
        dropout=d.DROPOUT,
        normalize_before=d.PRE_NORM,
        return_intermediate_dec=True,
    )


def build_detr_criterion(cfg, num_classes: int = None, extra_terms=(), extra_weights=None):
    """DETR's matcher and losses from ``MODEL.DETR``; methods append their own terms."""
    d = cfg.MODEL.DETR
    num_classes = d.NUM_CLASSES if num_classes is None else num_classes
    matcher = HungarianMatcher(cost_class=matcher_class_weight(cfg), cost_bbox=d.L1_WEIGHT, cost_giou=d.GIOU_WEIGHT)
    weights = {"loss_ce": d.CLASS_WEIGHT, "loss_bbox": d.L1_WEIGHT, "loss_giou": d.GIOU_WEIGHT}
    weights.update(extra_weights or {})
    return SetCriterion(
        matcher,
        loss_terms=[LabelCrossEntropy(num_classes, eos_coef=d.NO_OBJECT_WEIGHT), BoxL1GIoU(), *extra_terms],
        weight_dict=weights,
        aux_loss=d.DEEP_SUPERVISION,
    )


@META_ARCH_REGISTRY.register()
class Detr(SetPredictionDetector):
    """DETR: a CNN backbone, a transformer encoder-decoder over its last feature map, and
    set prediction trained with Hungarian matching."""

    @configurable
    def __init__(
        self,
        *,
        backbone: MaskedBackbone,
        position_embedding: nn.Module,
        transformer: Transformer,
        query_generator: nn.Module,
        criterion: SetCriterion,
        num_classes: int,
        hidden_dim: int,
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        aux_loss: bool = True,
        size_divisibility: int = 32,
        plugins: Sequence[nn.Module] = (),
        encoder_only: bool = False,
    ):
        super().__init__(
            backbone=backbone,
            criterion=criterion,
            num_classes=num_classes,
            pixel_mean=pixel_mean,
            pixel_std=pixel_std,
            size_divisibility=size_divisibility,
            plugins=plugins,
            encoder_only=encoder_only,
        )
        self.position_embedding = position_embedding
        self.input_proj = nn.Conv2d(backbone.num_channels[-1], hidden_dim, kernel_size=1)
        self.transformer = transformer
        self.query_generator = query_generator
        self.heads = DetrPredictionHeads(hidden_dim, num_classes, aux_loss=aux_loss)
        if encoder_only:
            self.drop_decoder_side(["transformer.decoder", "query_generator", "heads"])

    @classmethod
    def from_config(cls, cfg):
        d = cfg.MODEL.DETR
        return {
            "backbone": MaskedBackbone(build_backbone(cfg), [d.IN_FEATURE]),
            "position_embedding": build_position_embedding(cfg),
            "transformer": build_transformer(cfg),
            "query_generator": build_query_generator(cfg, default="LearnedQueries"),
            "criterion": build_detr_criterion(cfg),
            "num_classes": d.NUM_CLASSES,
            "hidden_dim": d.HIDDEN_DIM,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "aux_loss": d.DEEP_SUPERVISION,
            "size_divisibility": d.SIZE_DIVISIBILITY,
            "plugins": build_plugins(cfg),
            "encoder_only": d.ENCODER_ONLY,
        }

    @property
    def memory_strides(self) -> List[int]:
        return [self.backbone.strides[-1]]

    @classmethod
    def memory_strides_from_config(cls, cfg) -> List[int]:
        """``memory_strides`` of the model a yaml config builds (for plug-ins' sizes)."""
        return config_feature_strides(cfg, [cfg.MODEL.DETR.IN_FEATURE])

    # --- phases -------------------------------------------------------------------
    def encode(self, state: DetectorState) -> EncoderMemory:
        """The last transformer level projected to the transformer width, encoded."""
        feature, mask = state.features[-1]
        pos = self.position_embedding(mask).to(feature.dtype)
        source = self.input_proj(feature)
        memory = self.transformer.encode(source, mask, pos)
        memory.sources = [source]
        return memory

    def decode(self, state: DetectorState, queries: QueryBundle) -> DecoderStates:
        hs = self.transformer.decode(
            state.memory, queries.query_pos, tgt=queries.tgt, self_attn_mask=queries.self_attn_mask
        )
        return DecoderStates(hs)

    def predict(self, state: DetectorState, decoded: DecoderStates, queries: QueryBundle) -> Dict:
        """DETR's output dict (``pred_logits``, ``pred_boxes``, ``aux_outputs``) from decoder states."""
        return self.heads(decoded.hs)

    # --- inference ----------------------------------------------------------------
    def inference(self, state: DetectorState) -> List[Dict]:
        """One detection per query: its most likely real class (no-object excluded)."""
        outputs = state.outputs
        scores, labels = outputs["pred_logits"].softmax(-1)[..., :-1].max(-1)
        return self.detections(outputs["pred_boxes"], scores, labels, state.batched_inputs, state.images)
