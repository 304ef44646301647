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
from detectron2.structures import ImageList
from torch import nn

from ...modeling.meta_arch.deformable_detr import DeformableDetr
from .aux_heads import AuxHead, build_aux_head
from .positive_queries import PositiveQueries, select_positive_queries

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
        backbone = ret["backbone"]
        extra = cfg.MODEL.DEFORMABLE_DETR.NUM_FEATURE_LEVELS - len(backbone.strides)
        strides = list(backbone.strides) + [backbone.strides[-1] * 2 ** (k + 1) for k in range(extra + 1)]
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
    def encoder_pyramid(self, encoded) -> Dict[str, torch.Tensor]:
        """The encoder memory cut back into its levels [B, d, H, W], plus the extra level."""
        B, _, d = encoded.memory.shape
        levels = []
        for (h, w), start in zip(encoded.spatial_shapes.tolist(), encoded.level_start_index.tolist()):
            levels.append(encoded.memory[:, start: start + h * w].transpose(1, 2).reshape(B, d, h, w))
        levels.append(self.pyramid_extra(levels[-1]))
        strides = self.level_strides + [self.level_strides[-1] * 2]
        return dict(zip(pyramid_level_names(strides), levels))

    # --- training -------------------------------------------------------------------
    def forward_outputs(self, batched_inputs: List[Dict], images: ImageList) -> Dict:
        encoded = self.transformer.encode(*self.extract_features(images))
        outputs = self.forward_decoder(batched_inputs, images, encoded)
        if not self.training or not len(self.aux_heads):
            return outputs
        pyramid = self.encoder_pyramid(encoded)
        gt_instances = [x["instances"].to(self.device) for x in batched_inputs]
        co = []
        for index, head in enumerate(self.aux_heads):
            head_losses, samples = head(pyramid, images, gt_instances)
            entry = {"name": head.name, "losses": head_losses}
            if self.positive_queries is not None:
                selected = select_positive_queries(
                    samples, images.image_sizes, self.num_classes,
                    self.min_positive_queries, self.max_positive_queries,
                )
                queries = self.positive_queries(index, selected, self.transformer.nhead)
                entry["outputs"] = self.decode_queries(encoded, queries, len(images))
                entry["selected"] = selected
            co.append(entry)
        outputs["co_detr"] = co
        return outputs

    def losses(self, outputs: Dict, batched_inputs: List[Dict], images: ImageList) -> Dict:
        co = outputs.pop("co_detr", [])
        losses = super().losses(outputs, batched_inputs, images)
        for entry in co:
            for key, value in entry["losses"].items():
                losses[key] = value * self.aux_loss_weight
            if "outputs" in entry:
                selected, head_outputs = entry["selected"], entry["outputs"]
                for layer in [head_outputs, *head_outputs.get("aux_outputs", [])]:
                    layer["query_valid"] = selected.valid
                targets, indices = selected.targets_and_indices()
                tagged = self.criterion(head_outputs, targets, indices=indices, tag=f"_co_{entry['name']}")
                losses.update({k: v * self.positive_query_weight for k, v in tagged.items()})
        return losses

