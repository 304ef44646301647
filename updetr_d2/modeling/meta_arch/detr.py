"""DETR (Carion et al., 2020) as a Detectron2 meta-architecture.

The forward pass is split into phases that later methods override one at a time:
``preprocess_image`` -> ``build_queries`` -> ``decode`` (``extract_features`` and the
transformer) -> ``predict`` (heads) -> ``losses`` (training) or ``inference``. UP-DETR replaces
``build_queries`` and adds an output and a loss; DN-DETR and Co-DETR add query groups.
"""
import logging
import math
from typing import Dict, List, Sequence

import torch
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, build_backbone
from detectron2.structures import ImageList
from torch import nn

from ...layers.position_encoding import PositionEmbeddingLearned, PositionEmbeddingSine
from ...layers.transformer import Transformer
from ..backbone import MaskedBackbone
from ..criterion import BoxL1GIoU, LabelCrossEntropy, SetCriterion
from ..heads import DetrPredictionHeads
from ..matcher import HungarianMatcher
from ..queries import LearnedQueries, QueryBundle
from .base import SetPredictionDetector

__all__ = ["Detr", "build_position_embedding", "build_transformer", "build_detr_criterion"]


def build_position_embedding(cfg):
    hidden_dim = cfg.MODEL.DETR.HIDDEN_DIM
    kind = cfg.MODEL.DETR.POSITION_EMBEDDING
    if kind == "sine":
        return PositionEmbeddingSine(hidden_dim // 2, normalize=True, scale=2 * math.pi)
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
    matcher = HungarianMatcher(cost_class=d.CLASS_WEIGHT, cost_bbox=d.L1_WEIGHT, cost_giou=d.GIOU_WEIGHT)
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
    ):
        super().__init__(
            backbone=backbone,
            criterion=criterion,
            num_classes=num_classes,
            pixel_mean=pixel_mean,
            pixel_std=pixel_std,
            size_divisibility=size_divisibility,
        )
        self.position_embedding = position_embedding
        self.input_proj = nn.Conv2d(backbone.num_channels[-1], hidden_dim, kernel_size=1)
        self.transformer = transformer
        self.query_generator = query_generator
        self.heads = DetrPredictionHeads(hidden_dim, num_classes, aux_loss=aux_loss)

    @classmethod
    def from_config(cls, cfg):
        d = cfg.MODEL.DETR
        return {
            "backbone": MaskedBackbone(build_backbone(cfg), [d.IN_FEATURE]),
            "position_embedding": build_position_embedding(cfg),
            "transformer": build_transformer(cfg),
            "query_generator": LearnedQueries(d.NUM_OBJECT_QUERIES, d.HIDDEN_DIM),
            "criterion": build_detr_criterion(cfg),
            "num_classes": d.NUM_CLASSES,
            "hidden_dim": d.HIDDEN_DIM,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "aux_loss": d.DEEP_SUPERVISION,
            "size_divisibility": d.SIZE_DIVISIBILITY,
        }

    # --- phases -------------------------------------------------------------------
    def extract_features(self, images: ImageList):
        """The last backbone level, projected to the transformer width, its padding
        mask and its position embedding."""
        feature, mask = self.backbone(images)[-1]
        pos = self.position_embedding(mask).to(feature.dtype)
        return self.input_proj(feature), mask, pos

    def build_queries(self, batched_inputs: List[Dict], images: ImageList) -> QueryBundle:
        return self.query_generator(len(images))

    def decode(self, images: ImageList, queries: QueryBundle) -> torch.Tensor:
        """Decoder states of every layer, ``[L, B, Q, d]``."""
        src, mask, pos = self.extract_features(images)
        hs, _ = self.transformer(
            src, mask, queries.query_pos, pos, tgt=queries.tgt, self_attn_mask=queries.self_attn_mask
        )
        return hs

    def predict(self, hs: torch.Tensor, queries: QueryBundle) -> Dict:
        """DETR's output dict (``pred_logits``, ``pred_boxes``, ``aux_outputs``) from decoder states."""
        return self.heads(hs)

    def forward_outputs(self, batched_inputs: List[Dict], images: ImageList) -> Dict:
        queries = self.build_queries(batched_inputs, images)
        return self.predict(self.decode(images, queries), queries)

    # --- inference ----------------------------------------------------------------
    def inference(self, outputs: Dict, batched_inputs: List[Dict], images: ImageList) -> List[Dict]:
        """One detection per query: its most likely real class (no-object excluded)."""
        scores, labels = outputs["pred_logits"].softmax(-1)[..., :-1].max(-1)
        return self.detections(outputs["pred_boxes"], scores, labels, batched_inputs, images)

    # --- checkpoints ----------------------------------------------------------------
    # Keys only an UP-DETR pretraining checkpoint has, and the pretext's class head.
    PRETRAINING_ONLY_KEYS = ("query_generator.patch2query.", "feature_align.", "heads.class_embed.")

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        """Fine-tuning from an UP-DETR pretraining checkpoint: as the paper, everything
        loads except the patch projection, the feature head and the class head (the
        pretext's "patch" class means nothing to the detector); what was dropped is logged."""
        is_pretraining = any(k.startswith(prefix + "query_generator.patch2query.") for k in state_dict)
        if is_pretraining and not hasattr(self.query_generator, "patch2query"):
            dropped = [k for k in list(state_dict) if k[len(prefix):].startswith(self.PRETRAINING_ONLY_KEYS)]
            for key in dropped:
                del state_dict[key]
            logging.getLogger(__name__).info(
                "Initialising %s from an UP-DETR pretraining checkpoint; not loaded: %s",
                type(self).__name__, ", ".join(k[len(prefix):] for k in dropped),
            )
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
