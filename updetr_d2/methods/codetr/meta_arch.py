"""Co-DETR (Zong et al., ICCV 2023) on the project's Deformable DETR: collaborative
hybrid assignment training.

In training, the encoder's memory is cut back into its levels plus one stride-2 level
(a feature pyramid ``p3``..), auxiliary heads with one-to-many assignment (ATSS, FCOS,
Faster R-CNN; ``AUX_HEAD_REGISTRY``) are trained on it, and each head's positive
candidates become a group of customized positive queries, decoded in a pass of their
own by the same decoder and heads and supervised by the head's assignment. Losses:
the base model's, plus ``lambda2 * decoder layers`` times each head's losses, plus
``lambda1`` times each positive-query pass's losses (``loss_*_co_{head}``).

At inference none of it runs: the model is exactly its base Deformable DETR (same
parameters used, same FLOPs), and its checkpoints load into one.
"""
import math
from typing import Dict, List, Optional

import torch
from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling import META_ARCH_REGISTRY
from torch import nn

from ...layers.encoder_memory import EncoderMemory
from ...modeling.backbone import level_strides
from ...modeling.meta_arch.base import DetectorState, add_losses
from ...modeling.meta_arch.deformable_detr import DeformableDetr
from .aux_heads import AuxHead, build_aux_head
from .positive_queries import PositiveQueries, PositiveQueryRoute, select_positive_queries

__all__ = ["CoDeformableDetr", "pyramid_level_names", "pyramid_shapes"]


def pyramid_level_names(strides: List[int]) -> List[str]:
    """``p{log2(stride)}`` for every level, e.g. strides 8..128 -> p3..p7."""
    names = []
    for s in strides:
        level = int(round(math.log2(s)))
        if 2**level != s:
            raise ValueError(f"pyramid strides must be powers of two, got {strides}")
        names.append(f"p{level}")
    return names


def pyramid_shapes(channels: int, strides: List[int]) -> Dict[str, ShapeSpec]:
    """The encoder pyramid's level names -> shapes, as the auxiliary heads are built for."""
    return {n: ShapeSpec(channels=channels, stride=s) for n, s in zip(pyramid_level_names(strides), strides)}


@META_ARCH_REGISTRY.register()
class CoDeformableDetr(DeformableDetr):
    """Deformable DETR (any of its variants, DN included) trained with Co-DETR's
    auxiliary heads and customized positive queries; see the module docstring."""

    @configurable
    def __init__(
        self,
        *,
        aux_heads: List[AuxHead],
        positive_queries: Optional[PositiveQueries] = None,
        aux_loss_weight: float = 12.0,
        positive_query_weight: float = 1.0,
        min_positive_queries: int = 9,
        max_positive_queries: int = 300,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if positive_queries is not None and len(positive_queries.box_proj) != len(aux_heads):
            raise ValueError(
                f"positive queries are built for {len(positive_queries.box_proj)} heads, "
                f"but there are {len(aux_heads)} auxiliary heads"
            )
        names = [h.name for h in aux_heads]
        if len(set(names)) != len(names):
            raise ValueError(f"MODEL.CO_DETR.AUX_HEADS: each head may be used once, got {names}")
        hidden_dim = self.transformer.d_model
        # The pyramid's extra level (Co-DETR: conv 3x3 stride 2 + GroupNorm, no activation).
        self.pyramid_extra = nn.Sequential(
            nn.Conv2d(hidden_dim, hidden_dim, kernel_size=3, stride=2, padding=1),
            nn.GroupNorm(math.gcd(32, hidden_dim), hidden_dim),
        )
        self.aux_heads = nn.ModuleList(aux_heads)
        self.positive_queries = positive_queries
        self.aux_loss_weight = aux_loss_weight
        self.positive_query_weight = positive_query_weight
        self.min_positive_queries = min_positive_queries
        self.max_positive_queries = max_positive_queries

    @classmethod
    def from_config(cls, cfg):
        ret = super().from_config(cfg)
        c, d = cfg.MODEL.CO_DETR, cfg.MODEL.DETR
        # The encoder's levels and the pyramid's one extra level.
        strides = level_strides(ret["backbone"].strides, cfg.MODEL.DEFORMABLE_DETR.NUM_FEATURE_LEVELS + 1)
        heads = [build_aux_head(name, cfg, pyramid_shapes(d.HIDDEN_DIM, strides)) for name in c.AUX_HEADS]
        positive_queries = None
        if c.POSITIVE_QUERIES and heads:
            positive_queries = PositiveQueries(
                len(heads), d.HIDDEN_DIM, d.HIDDEN_DIM,
                anchor_queries=cfg.MODEL.DEFORMABLE_DETR.ANCHOR_QUERIES,
                with_coord_feat=c.WITH_COORD_FEAT,
            )
        ret.update(
            aux_heads=heads,
            positive_queries=positive_queries,
            # The paper's lambda2 weighs the encoder losses inside the sum over decoder layers.
            aux_loss_weight=c.LAMBDA2 * d.DEC_LAYERS,
            positive_query_weight=c.LAMBDA1,
            min_positive_queries=c.MIN_POSITIVE_QUERIES,
            max_positive_queries=c.MAX_POSITIVE_QUERIES,
        )
        return ret

    # --- the encoder pyramid --------------------------------------------------------
    def encoder_pyramid(self, memory: EncoderMemory) -> Dict[str, torch.Tensor]:
        """The encoder memory cut back into its levels [B, d, H, W], plus the extra level."""
        levels = memory.level_maps()
        levels.append(self.pyramid_extra(levels[-1]))
        strides = level_strides(self.backbone.strides, len(levels))
        return dict(zip(pyramid_level_names(strides), levels))

    # --- training -------------------------------------------------------------------
    def losses(self, state: DetectorState) -> Dict:
        """The base model's losses, each auxiliary head's (x lambda2 x decoder depth) and
        those of its positive queries, decoded in a pass of their own over the same memory."""
        losses = super().losses(state)
        if not len(self.aux_heads):
            return losses
        pyramid = self.encoder_pyramid(state.memory)
        gt_instances = [x["instances"].to(self.device) for x in state.batched_inputs]
        for index, head in enumerate(self.aux_heads):
            head_losses, samples = head(pyramid, state.images, gt_instances)
            add_losses(losses, {k: v * self.aux_loss_weight for k, v in head_losses.items()}, head.name)
            if self.positive_queries is None:
                continue
            selected = select_positive_queries(
                samples, state.images.image_sizes, self.num_classes,
                self.min_positive_queries, self.max_positive_queries,
            )
            route = PositiveQueryRoute(selected, f"_co_{head.name}", self.positive_query_weight)
            queries = self.positive_queries(index, selected, self.transformer.nhead, route)
            outputs = self.decode_and_predict(state, queries)
            add_losses(losses, self.set_losses(outputs, state.targets, queries), head.name)
        return losses
