"""Deformable DETR (Zhu et al., 2021) as a Detectron2 meta-architecture, with its
iterative box refinement and two-stage variants, anchor queries (DAB-Deformable-DETR)
and DN-DETR's denoising training (Li et al., 2022) as switches.

Phases: ``extract_features`` (multi-scale backbone levels projected to the transformer
width, plus extra strided levels) -> ``transformer.encode`` -> ``build_queries``
(learned points, anchors, denoising groups, or the encoder's top proposals) ->
``transformer.decode`` -> ``heads`` -> ``losses`` / ``inference``. The matcher,
criterion, mapper and query generators are the project's shared ones.
"""
import logging
import math
from typing import Dict, List, Optional, Sequence

import torch
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, build_backbone
from detectron2.structures import ImageList
from torch import nn

from ...layers.deformable_transformer import DeformableTransformer
from ...layers.position_encoding import PositionEmbeddingSine
from ..backbone import MaskedBackbone, level_padding_mask, padding_mask
from ..criterion import BoxL1GIoU, LabelFocal, SetCriterion
from ..denoising import DenoisingQueries, dn_losses
from ..heads import BoxRefinementHeads
from ..matcher import HungarianMatcher
from ..queries import AnchorQueries, LearnedPointQueries, QueryBundle, per_image
from .base import SetPredictionDetector

__all__ = ["DeformableDetr", "build_deformable_criterion", "input_projections"]


def input_projections(in_channels: Sequence[int], hidden_dim: int, num_levels: int) -> nn.ModuleList:
    """Per backbone level a 1x1 conv + GroupNorm to ``hidden_dim``; then 3x3 stride-2
    convs + GroupNorm for the extra levels, the first on the last backbone level."""
    if num_levels < len(in_channels):
        raise ValueError(
            f"MODEL.DEFORMABLE_DETR.NUM_FEATURE_LEVELS={num_levels} is fewer than the "
            f"{len(in_channels)} backbone levels of MODEL.DEFORMABLE_DETR.IN_FEATURES"
        )
    groups = math.gcd(32, hidden_dim)  # 32 groups as the paper where the width allows

    def block(conv):
        nn.init.xavier_uniform_(conv.weight, gain=1)
        nn.init.zeros_(conv.bias)
        return nn.Sequential(conv, nn.GroupNorm(groups, hidden_dim))

    projections = [block(nn.Conv2d(c, hidden_dim, kernel_size=1)) for c in in_channels]
    previous = in_channels[-1]
    for _ in range(num_levels - len(in_channels)):
        projections.append(block(nn.Conv2d(previous, hidden_dim, kernel_size=3, stride=2, padding=1)))
        previous = hidden_dim
    return nn.ModuleList(projections)


def build_deformable_criterion(cfg, num_classes: Optional[int] = None) -> SetCriterion:
    """Focal classification + L1/GIoU, matched with the focal class cost (Deformable DETR)."""
    d, dd = cfg.MODEL.DETR, cfg.MODEL.DEFORMABLE_DETR
    num_classes = d.NUM_CLASSES if num_classes is None else num_classes
    matcher = HungarianMatcher(
        cost_class=d.CLASS_WEIGHT, cost_bbox=d.L1_WEIGHT, cost_giou=d.GIOU_WEIGHT,
        class_cost_type="focal", focal_alpha=dd.FOCAL_ALPHA,
    )
    return SetCriterion(
        matcher,
        loss_terms=[LabelFocal(num_classes, alpha=dd.FOCAL_ALPHA), BoxL1GIoU()],
        weight_dict={"loss_focal": d.CLASS_WEIGHT, "loss_bbox": d.L1_WEIGHT, "loss_giou": d.GIOU_WEIGHT},
        aux_loss=d.DEEP_SUPERVISION,
    )


def build_deformable_query_generator(cfg) -> Optional[nn.Module]:
    d, dd, dn = cfg.MODEL.DETR, cfg.MODEL.DEFORMABLE_DETR, cfg.MODEL.DN
    if dn.ENABLED and not dd.ANCHOR_QUERIES:
        raise ValueError(
            "MODEL.DN.ENABLED needs anchor queries (noised boxes are the denoising queries' "
            "anchors): set MODEL.DEFORMABLE_DETR.ANCHOR_QUERIES True"
        )
    if dd.TWO_STAGE:
        if dd.ANCHOR_QUERIES or dn.ENABLED:
            raise ValueError(
                "MODEL.DEFORMABLE_DETR.TWO_STAGE takes its queries from the encoder; it cannot be "
                "combined with MODEL.DEFORMABLE_DETR.ANCHOR_QUERIES or MODEL.DN.ENABLED"
            )
        return None
    if not dd.ANCHOR_QUERIES:
        return LearnedPointQueries(d.NUM_OBJECT_QUERIES, d.HIDDEN_DIM)
    anchors = AnchorQueries(d.NUM_OBJECT_QUERIES, d.HIDDEN_DIM, with_indicator=dn.WITH_INDICATOR)
    if not dn.ENABLED:
        return anchors
    return DenoisingQueries(
        anchors,
        num_classes=d.NUM_CLASSES,
        hidden_dim=d.HIDDEN_DIM,
        num_heads=d.NHEADS,
        num_groups=dn.NUM_GROUPS,
        label_noise_prob=dn.LABEL_NOISE_PROB,
        box_noise_scale=dn.BOX_NOISE_SCALE,
        mask_padding=dn.MASK_PADDING,
    )


@META_ARCH_REGISTRY.register()
class DeformableDetr(SetPredictionDetector):
    """Deformable DETR: multi-scale deformable attention over several backbone levels,
    sigmoid focal classification, optional iterative box refinement and two-stage
    queries; with anchor queries it is DAB-Deformable-DETR, and wrapping them in
    :class:`DenoisingQueries` trains it as DN-Deformable-DETR (denoising only in
    training: inference is the base model)."""

    @configurable
    def __init__(
        self,
        *,
        backbone: MaskedBackbone,
        position_embedding: nn.Module,
        transformer: DeformableTransformer,
        query_generator: Optional[nn.Module],
        criterion: SetCriterion,
        num_classes: int,
        hidden_dim: int,
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        num_queries: int = 300,
        aux_loss: bool = True,
        with_box_refine: bool = False,
        two_stage: bool = False,
        test_topk: int = 100,
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
        if two_stage != (query_generator is None):
            raise ValueError("two-stage Deformable DETR takes its queries from the encoder: "
                             "give query_generator=None exactly when two_stage=True")
        if two_stage and not transformer.two_stage:
            raise ValueError("two_stage=True needs a DeformableTransformer built with two_stage=True")
        self.position_embedding = position_embedding
        self.input_proj = input_projections(backbone.num_channels, hidden_dim, transformer.num_feature_levels)
        self.transformer = transformer
        self.query_generator = query_generator
        self.heads = BoxRefinementHeads(
            hidden_dim, num_classes, transformer.decoder.num_layers,
            share=not with_box_refine, two_stage=two_stage, aux_loss=aux_loss,
            box_references=transformer.decoder.anchor_queries,
        )
        self.num_queries = num_queries
        self.two_stage = two_stage
        self.test_topk = test_topk
        # Stride of every transformer level: the backbone's, then x2 per extra level.
        extra = transformer.num_feature_levels - len(backbone.strides)
        self.level_strides = list(backbone.strides) + [backbone.strides[-1] * 2 ** (k + 1) for k in range(extra)]

    @classmethod
    def from_config(cls, cfg):
        d, dd = cfg.MODEL.DETR, cfg.MODEL.DEFORMABLE_DETR
        return {
            "backbone": MaskedBackbone(build_backbone(cfg), dd.IN_FEATURES),
            "position_embedding": PositionEmbeddingSine(d.HIDDEN_DIM // 2, normalize=True, offset=-0.5),
            "transformer": DeformableTransformer(
                d_model=d.HIDDEN_DIM,
                nhead=d.NHEADS,
                num_encoder_layers=d.ENC_LAYERS,
                num_decoder_layers=d.DEC_LAYERS,
                dim_feedforward=d.DIM_FEEDFORWARD,
                dropout=d.DROPOUT,
                num_feature_levels=dd.NUM_FEATURE_LEVELS,
                enc_n_points=dd.ENC_N_POINTS,
                dec_n_points=dd.DEC_N_POINTS,
                two_stage=dd.TWO_STAGE,
                anchor_queries=dd.ANCHOR_QUERIES,
            ),
            "query_generator": build_deformable_query_generator(cfg),
            "criterion": build_deformable_criterion(cfg),
            "num_classes": d.NUM_CLASSES,
            "hidden_dim": d.HIDDEN_DIM,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "num_queries": d.NUM_OBJECT_QUERIES,
            "aux_loss": d.DEEP_SUPERVISION,
            "with_box_refine": dd.WITH_BOX_REFINE,
            "two_stage": dd.TWO_STAGE,
            "test_topk": dd.TEST_TOPK,
            "size_divisibility": d.SIZE_DIVISIBILITY,
        }

    # --- phases -------------------------------------------------------------------
    def extract_features(self, images: ImageList):
        """Per level: the feature projected to the transformer width [B, d, H, W], its
        padding mask [B, H, W] and its position embedding."""
        levels = self.backbone(images)
        srcs = [proj(x) for proj, (x, _) in zip(self.input_proj, levels)]
        masks = [m for _, m in levels]
        if len(self.input_proj) > len(levels):
            image_mask = padding_mask(images)
            previous = levels[-1][0]
            for proj in self.input_proj[len(levels):]:
                previous = proj(previous)
                srcs.append(previous)
                masks.append(level_padding_mask(image_mask, previous.shape[-2:]))
        pos = [self.position_embedding(m).to(s.dtype) for s, m in zip(srcs, masks)]
        return srcs, masks, pos

    def build_queries(self, batched_inputs: List[Dict], images: ImageList, encoded) -> QueryBundle:
        batch = len(images)
        if self.two_stage:
            query_pos, tgt, reference, enc_outputs = self.transformer.two_stage_proposals(
                encoded, self.heads.class_embed[-1], self.heads.bbox_embed[-1], self.num_queries
            )
            return QueryBundle(query_pos=query_pos, tgt=tgt, reference_points=reference,
                               meta={"enc_outputs": enc_outputs})
        context = {}
        if self.training and isinstance(self.query_generator, DenoisingQueries):
            context["targets"] = self.prepare_targets(batched_inputs, images)
        return self.query_generator(batch, **context)

    def decode_queries(self, encoded, queries: QueryBundle, batch: int) -> Dict:
        """Run ``queries`` through the decoder over ``encoded`` and the heads: the output
        dict (``pred_logits``, ``pred_boxes``, ``aux_outputs``)."""
        hs, references = self.transformer.decode(
            encoded,
            per_image(queries.tgt, batch),
            per_image(queries.reference_points, batch),
            query_pos=per_image(queries.query_pos, batch),
            self_attn_mask=queries.self_attn_mask,
            bbox_embed=self.heads.decoder_box_heads,
        )
        return self.heads(hs, references)

    def forward_outputs(self, batched_inputs: List[Dict], images: ImageList) -> Dict:
        encoded = self.transformer.encode(*self.extract_features(images))
        return self.forward_decoder(batched_inputs, images, encoded)

    def forward_decoder(self, batched_inputs: List[Dict], images: ImageList, encoded) -> Dict:
        """Queries for the encoded images, decoded; in training with what the losses need
        of the queries (two-stage proposals' outputs, denoising groups)."""
        queries = self.build_queries(batched_inputs, images, encoded)
        outputs = self.decode_queries(encoded, queries, len(images))
        if self.training:
            outputs.update({k: queries.meta[k] for k in ("enc_outputs", "dn") if k in queries.meta})
        return outputs

    # --- training -----------------------------------------------------------------
    def losses(self, outputs: Dict, batched_inputs: List[Dict], images: ImageList) -> Dict:
        targets = self.prepare_targets(batched_inputs, images)
        enc_outputs = outputs.pop("enc_outputs", None)
        groups = outputs.pop("dn", None)
        matching = outputs if groups is None else groups.split(outputs)[1]
        losses = self.criterion(matching, targets)
        if enc_outputs is not None:
            # Two-stage: proposals are scored class-agnostically (every object is class 0).
            binary = [{"labels": torch.zeros_like(t["labels"]), "boxes": t["boxes"]} for t in targets]
            losses.update(self.criterion(enc_outputs, binary, tag="_enc"))
        if isinstance(self.query_generator, DenoisingQueries):
            # Reconstruction of the clean ground truth by the denoising groups, reported
            # separately (``loss_*_dn``); zeros when the batch has no objects.
            losses.update(dn_losses(self.criterion, outputs, targets, groups))
        return losses

    # --- inference ----------------------------------------------------------------
    def inference(self, outputs: Dict, batched_inputs: List[Dict], images: ImageList) -> List[Dict]:
        """The ``test_topk`` most probable (query, class) pairs of each image, as Deformable
        DETR: a query may give several detections of different classes."""
        probs = outputs["pred_logits"].sigmoid()
        batch, num_queries, num_classes = probs.shape
        k = min(self.test_topk, num_queries * num_classes)
        scores, index = probs.view(batch, -1).topk(k, dim=1)
        query = torch.div(index, num_classes, rounding_mode="floor")
        boxes = outputs["pred_boxes"].gather(1, query[..., None].expand(-1, -1, 4))
        return self.detections(boxes, scores, index % num_classes, batched_inputs, images)

    # --- checkpoints ----------------------------------------------------------------
    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        """Weights move between denoising on and off: inside :class:`DenoisingQueries` the
        anchor queries are ``query_generator.base.*``, without it ``query_generator.*``;
        DN's label embedding only serves training and is left out (logged) for a model
        without denoising."""
        generator = prefix + "query_generator."
        has_dn = isinstance(self.query_generator, DenoisingQueries)
        renamed = {}
        for key in list(state_dict):
            if not key.startswith(generator):
                continue
            rest = key[len(generator):]
            if has_dn and not rest.startswith(("base.", "label_enc.")):
                renamed[generator + "base." + rest] = state_dict.pop(key)
            elif not has_dn and rest.startswith("base."):
                renamed[generator + rest[len("base."):]] = state_dict.pop(key)
            elif not has_dn and rest.startswith("label_enc."):
                del state_dict[key]
                logging.getLogger(__name__).info("Denoising is off: %s not loaded", key)
        state_dict.update(renamed)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
