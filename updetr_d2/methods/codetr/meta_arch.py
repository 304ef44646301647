"""Co-DETR (Zong et al., ICCV 2023) on the project's detectors: collaborative hybrid
assignment training (:mod:`.collaborative`).

In training, the encoder's memory becomes a feature pyramid, auxiliary heads with
one-to-many assignment (ATSS, FCOS, Faster R-CNN; ``AUX_HEAD_REGISTRY``) are trained on
it, and each head's positive candidates become a group of customized positive queries,
decoded in a pass of their own by the same decoder and heads and supervised by the
head's assignment. Losses: the base model's, plus ``lambda2 * decoder layers`` times each
head's losses, plus ``lambda1`` times each positive-query pass's losses
(``loss_*_co_{head}``).

* :class:`CoDeformableDetr`: on Deformable DETR and everything built on it (DN, DINO):
  the memory cut back into its levels plus one stride-2 level (``p3``..).
* :class:`CoDetr`: on the single-scale DETR: the pyramid built from its one encoder map
  by the paper's single-scale adapter (:class:`~.pyramid.SingleScaleAdapter`).

At inference none of it runs: the model is exactly its base detector (same parameters
used, same FLOPs), and its checkpoints load into one (the auxiliary weights reported as
unused).
"""
import math
from typing import Dict

import torch
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY
from torch import nn

from ...layers.encoder_memory import EncoderMemory
from ...modeling.backbone import level_strides
from ...modeling.meta_arch.deformable_detr import DeformableDetr
from ...modeling.meta_arch.detr import Detr
from .collaborative import CollaborativeTraining
from .pyramid import SingleScaleAdapter, pyramid_level_names, pyramid_shapes

__all__ = ["CoDeformableDetr", "CoDetr", "pyramid_level_names", "pyramid_shapes"]

@META_ARCH_REGISTRY.register()
class CoDeformableDetr(CollaborativeTraining, DeformableDetr):
    """Deformable DETR (any of its variants: refine, two-stage, DN, DINO) trained with
    Co-DETR's auxiliary heads and customized positive queries; see the module docstring.
    Constructor: :class:`DeformableDetr`'s arguments plus ``aux_heads``,
    ``positive_queries``, ``aux_loss_weight`` (12), ``positive_query_weight`` (1),
    ``min_positive_queries`` (9), ``max_positive_queries`` (300)."""

    @configurable
    def __init__(self, *, aux_heads, positive_queries=None, aux_loss_weight: float = 12.0,
                 positive_query_weight: float = 1.0, min_positive_queries: int = 9,
                 max_positive_queries: int = 300, **kwargs):
        super().__init__(**kwargs)
        hidden_dim = self.transformer.d_model
        # The pyramid's extra level (Co-DETR: conv 3x3 stride 2 + GroupNorm, no activation).
        self.pyramid_extra = nn.Sequential(
            nn.Conv2d(hidden_dim, hidden_dim, kernel_size=3, stride=2, padding=1),
            nn.GroupNorm(math.gcd(32, hidden_dim), hidden_dim),
        )
        self.setup_collaborative(aux_heads, positive_queries, aux_loss_weight, positive_query_weight,
                                 min_positive_queries, max_positive_queries)

    @classmethod
    def from_config(cls, cfg):
        ret = super().from_config(cfg)
        # The encoder's levels and the pyramid's one extra level.
        strides = level_strides(ret["backbone"].strides, cfg.MODEL.DEFORMABLE_DETR.NUM_FEATURE_LEVELS + 1)
        ret.update(cls.collaborative_config(cfg, strides, anchor_queries=cfg.MODEL.DEFORMABLE_DETR.ANCHOR_QUERIES))
        return ret

    def encoder_pyramid(self, memory: EncoderMemory) -> Dict[str, torch.Tensor]:
        """The encoder memory cut back into its levels [B, d, H, W], plus the extra level."""
        levels = memory.level_maps()
        levels.append(self.pyramid_extra(levels[-1]))
        strides = level_strides(self.backbone.strides, len(levels))
        return dict(zip(pyramid_level_names(strides), levels))


@META_ARCH_REGISTRY.register()
class CoDetr(CollaborativeTraining, Detr):
    """DETR (single-scale encoder) trained with Co-DETR's auxiliary heads on a pyramid
    built from its encoder map (``pyramid_strides``, e.g. 8..128 from a stride-32 map),
    and their positive queries (positional and content queries from the boxes, as DETR's
    decoder takes them). Constructor: :class:`Detr`'s arguments plus ``pyramid_strides``
    and the auxiliary arguments of :class:`CoDeformableDetr`."""

    @configurable
    def __init__(self, *, aux_heads, pyramid_strides=(8, 16, 32, 64, 128), positive_queries=None,
                 aux_loss_weight: float = 12.0, positive_query_weight: float = 1.0, min_positive_queries: int = 9,
                 max_positive_queries: int = 300, **kwargs):
        super().__init__(**kwargs)
        if positive_queries is not None and positive_queries.anchor_queries:
            raise ValueError("DETR's decoder takes positional queries: CoDetr's positive queries need "
                             "anchor_queries=False")
        self.pyramid_adapter = SingleScaleAdapter(self.transformer.d_model, self.backbone.strides[-1],
                                                  list(pyramid_strides))
        self.setup_collaborative(aux_heads, positive_queries, aux_loss_weight, positive_query_weight,
                                 min_positive_queries, max_positive_queries)

    @classmethod
    def from_config(cls, cfg):
        ret = super().from_config(cfg)
        strides = list(cfg.MODEL.CO_DETR.SINGLE_SCALE_STRIDES)
        ret.update(cls.collaborative_config(cfg, strides, anchor_queries=False), pyramid_strides=strides)
        return ret

    def encoder_pyramid(self, memory: EncoderMemory) -> Dict[str, torch.Tensor]:
        return self.pyramid_adapter(memory.level_maps()[0])
