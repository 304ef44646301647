"""Deformable DETR (Zhu et al., 2021) as a Detectron2 meta-architecture, with its
iterative box refinement and two-stage variants and anchor queries
(DAB-Deformable-DETR) as switches.

It fills in the phases of :class:`~updetr_d2.modeling.meta_arch.base.SetPredictionDetector`:
``encode`` (multi-scale backbone levels projected to the transformer width, plus extra
strided levels, through the deformable encoder) -> ``build_queries`` (learned points,
anchors, any registered generator, or the encoder's top proposals) -> ``decode`` ->
``predict`` (per-layer heads). The matcher, criterion, mapper and query generators are
the project's shared ones; methods such as DN-DETR wrap the query generator and route
their losses through the bundle's metadata.
"""
import math
from typing import Dict, List, Optional, Sequence

import torch
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, build_backbone
from torch import nn

from ...layers.deformable_transformer import DeformableTransformer
from ...layers.encoder_memory import EncoderMemory
from ...layers.position_encoding import PositionEmbeddingSine
from ..backbone import MaskedBackbone, config_feature_strides, level_padding_mask, level_strides, padding_mask
from ..criterion import BoxL1GIoU, LabelFocal, SetCriterion
from ..heads import BoxRefinementHeads
from ..matcher import HungarianMatcher
from ..plugins import build_plugins
from ..queries import QueryBundle, build_query_generator, per_image
from .base import DecoderStates, DetectorState, SetPredictionDetector
from .detr import matcher_class_weight

__all__ = ["DeformableDetr", "EncoderProposalRoute", "build_deformable_criterion", "input_projections"]


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


def build_deformable_criterion(
    cfg, num_classes: Optional[int] = None, extra_terms=(), extra_weights=None
) -> SetCriterion:
    """Focal classification + L1/GIoU, matched with the focal class cost (Deformable DETR);
    methods append their own terms."""
    d, dd = cfg.MODEL.DETR, cfg.MODEL.DEFORMABLE_DETR
    num_classes = d.NUM_CLASSES if num_classes is None else num_classes
    matcher = HungarianMatcher(
        cost_class=matcher_class_weight(cfg), cost_bbox=d.L1_WEIGHT, cost_giou=d.GIOU_WEIGHT,
        class_cost_type="focal", focal_alpha=dd.FOCAL_ALPHA,
    )
    weights = {"loss_focal": d.CLASS_WEIGHT, "loss_bbox": d.L1_WEIGHT, "loss_giou": d.GIOU_WEIGHT}
    weights.update(extra_weights or {})
    return SetCriterion(
        matcher,
        loss_terms=[LabelFocal(num_classes, alpha=dd.FOCAL_ALPHA), BoxL1GIoU(), *extra_terms],
        weight_dict=weights,
        aux_loss=d.DEEP_SUPERVISION,
    )


def build_deformable_query_generator(cfg) -> Optional[nn.Module]:
    """None for two-stage (the queries come from the encoder); with mixed selection the
    generator of the learned content queries that the selected proposals' boxes join
    (``ProposalQueries``); else the generator of ``MODEL.DETR.QUERY_GENERATOR`` (default:
    anchors or learned points)."""
    dd = cfg.MODEL.DEFORMABLE_DETR
    if dd.MIXED_SELECTION and not dd.TWO_STAGE:
        raise ValueError("MODEL.DEFORMABLE_DETR.MIXED_SELECTION selects the queries' boxes among the encoder's "
                         "proposals: it needs MODEL.DEFORMABLE_DETR.TWO_STAGE")
    if dd.TWO_STAGE and dd.MIXED_SELECTION:
        return build_query_generator(cfg, default="ProposalQueries")
    if dd.TWO_STAGE:
        if dd.ANCHOR_QUERIES or cfg.MODEL.DETR.QUERY_GENERATOR:
            raise ValueError(
                "MODEL.DEFORMABLE_DETR.TWO_STAGE takes its queries from the encoder; with "
                "MODEL.DEFORMABLE_DETR.ANCHOR_QUERIES or MODEL.DETR.QUERY_GENERATOR it needs "
                "MODEL.DEFORMABLE_DETR.MIXED_SELECTION (learned content, the proposals' boxes)"
            )
        return None
    return build_query_generator(cfg, default="AnchorQueries" if dd.ANCHOR_QUERIES else "LearnedPointQueries")


class EncoderProposalRoute:
    """Loss route of two-stage Deformable DETR: the encoder's scored proposals are
    supervised class-agnostically (every object is class 0) or, ``class_aware`` (DINO),
    with the classes; keys tagged ``_enc``."""

    def __init__(self, enc_outputs: Dict, class_aware: bool = False):
        self.enc_outputs = enc_outputs
        self.class_aware = class_aware

    def split(self, outputs: Dict):
        return self.enc_outputs, outputs

    def losses(self, criterion: SetCriterion, own: Dict, targets) -> Dict:
        if not self.class_aware:
            targets = [{"labels": torch.zeros_like(t["labels"]), "boxes": t["boxes"]} for t in targets]
        return criterion(own, targets, tag="_enc")


@META_ARCH_REGISTRY.register()
class DeformableDetr(SetPredictionDetector):
    """Deformable DETR: multi-scale deformable attention over several backbone levels,
    sigmoid focal classification, optional iterative box refinement and two-stage
    queries; with anchor queries it is DAB-Deformable-DETR (the base of DN-DETR).

    ``num_queries`` is given only for two-stage (how many encoder proposals become
    queries); otherwise the query generator holds the number."""

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
        num_queries: Optional[int] = None,
        aux_loss: bool = True,
        with_box_refine: bool = False,
        two_stage: bool = False,
        test_topk: int = 100,
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
        # Two-stage without a generator: queries entirely from the proposals (num_queries of
        # them); with one: mixed selection, the generator's learned content with the boxes.
        mixed = two_stage and query_generator is not None
        if not two_stage and query_generator is None:
            raise ValueError("Deformable DETR needs a query generator unless it is two-stage")
        if two_stage and not mixed and num_queries is None:
            raise ValueError("two-stage Deformable DETR needs num_queries (encoder proposals kept)")
        if (mixed or not two_stage) and num_queries is not None:
            raise ValueError("num_queries is for two-stage without a query generator; otherwise the "
                             "query generator holds the number of queries")
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
        self.num_proposals = query_generator.num_queries if mixed else num_queries
        self.two_stage = two_stage
        self.test_topk = test_topk
        if encoder_only:
            self.drop_decoder_side([
                "transformer.decoder", "query_generator", "heads", "transformer.enc_output",
                "transformer.enc_output_norm", "transformer.pos_trans", "transformer.pos_trans_norm",
            ])

    @classmethod
    def from_config(cls, cfg):
        d, dd = cfg.MODEL.DETR, cfg.MODEL.DEFORMABLE_DETR
        return {
            "backbone": MaskedBackbone(build_backbone(cfg), dd.IN_FEATURES),
            "position_embedding": PositionEmbeddingSine(
                d.HIDDEN_DIM // 2, temperature=d.POSITION_TEMPERATURE, normalize=True, offset=-0.5
            ),
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
                recompute_sampling=dd.RECOMPUTE_SAMPLING,
                query_scale=dd.ANCHOR_QUERY_SCALE,
                look_forward_twice=dd.LOOK_FORWARD_TWICE,
                class_aware_proposals=dd.TWO_STAGE_CLASS_AWARE,
            ),
            "query_generator": build_deformable_query_generator(cfg),
            "criterion": build_deformable_criterion(cfg),
            "num_classes": d.NUM_CLASSES,
            "hidden_dim": d.HIDDEN_DIM,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "num_queries": d.NUM_OBJECT_QUERIES if dd.TWO_STAGE and not dd.MIXED_SELECTION else None,
            "aux_loss": d.DEEP_SUPERVISION,
            "with_box_refine": dd.WITH_BOX_REFINE,
            "two_stage": dd.TWO_STAGE,
            "test_topk": dd.TEST_TOPK,
            "size_divisibility": d.SIZE_DIVISIBILITY,
            "plugins": build_plugins(cfg),
            "encoder_only": d.ENCODER_ONLY,
        }

    @property
    def memory_strides(self) -> List[int]:
        return level_strides(self.backbone.strides, self.transformer.num_feature_levels)

    @classmethod
    def memory_strides_from_config(cls, cfg) -> List[int]:
        """``memory_strides`` of the model a yaml config builds (for plug-ins' sizes)."""
        dd = cfg.MODEL.DEFORMABLE_DETR
        return level_strides(config_feature_strides(cfg, dd.IN_FEATURES), dd.NUM_FEATURE_LEVELS)

    @property
    def num_queries(self) -> int:
        return self.num_proposals if self.two_stage else self.query_generator.num_queries

    # --- phases -------------------------------------------------------------------
    def encode(self, state: DetectorState) -> EncoderMemory:
        """Every level projected to the transformer width (the extra levels by strided
        convolutions from the last backbone level), with its padding mask and position
        embedding, through the deformable encoder."""
        levels = state.features
        srcs = [proj(x) for proj, (x, _) in zip(self.input_proj, levels)]
        masks = [m for _, m in levels]
        if len(self.input_proj) > len(levels):
            image_mask = padding_mask(state.images)
            previous = levels[-1][0]
            for proj in self.input_proj[len(levels):]:
                previous = proj(previous)
                srcs.append(previous)
                masks.append(level_padding_mask(image_mask, previous.shape[-2:]))
        pos = [self.position_embedding(m).to(s.dtype) for s, m in zip(srcs, masks)]
        memory = self.transformer.encode(srcs, masks, pos)
        memory.sources = srcs
        return memory

    def build_queries(self, state: DetectorState) -> QueryBundle:
        if not self.two_stage:
            return super().build_queries(state)
        query_pos, tgt, reference, enc_outputs = self.transformer.two_stage_proposals(
            state.memory, self.heads.class_embed[-1], self.heads.bbox_embed[-1], self.num_proposals
        )
        routes = [EncoderProposalRoute(enc_outputs, self.transformer.class_aware_proposals)] if self.training else []
        if self.query_generator is None:
            return QueryBundle(query_pos=query_pos, tgt=tgt, reference_points=reference, meta={"loss_routes": routes})
        # Mixed selection: the generator adds its learned content (and, in training, what
        # wrappers such as DN add) to the selected boxes.
        bundle = super().build_queries(state, proposals=reference, proposal_pos=query_pos)
        bundle.meta = {**bundle.meta, "loss_routes": [*routes, *bundle.meta.get("loss_routes", ())]}
        return bundle

    def decode(self, state: DetectorState, queries: QueryBundle) -> DecoderStates:
        batch = len(state.images)
        hs, references = self.transformer.decode(
            state.memory,
            per_image(queries.tgt, batch),
            per_image(queries.reference_points, batch),
            query_pos=per_image(queries.query_pos, batch),
            self_attn_mask=queries.self_attn_mask,
            bbox_embed=self.heads.decoder_box_heads,
        )
        return DecoderStates(hs, references)

    def predict(self, state: DetectorState, decoded: DecoderStates, queries: QueryBundle) -> Dict:
        return self.heads(decoded.hs, decoded.references)

    # --- inference ----------------------------------------------------------------
    def inference(self, state: DetectorState) -> List[Dict]:
        """The ``test_topk`` most probable (query, class) pairs of each image, as Deformable
        DETR: a query may give several detections of different classes."""
        outputs = state.outputs
        probs = outputs["pred_logits"].sigmoid()
        batch, num_queries, num_classes = probs.shape
        k = min(self.test_topk, num_queries * num_classes)
        scores, index = probs.view(batch, -1).topk(k, dim=1)
        query = torch.div(index, num_classes, rounding_mode="floor")
        boxes = outputs["pred_boxes"].gather(1, query[..., None].expand(-1, -1, 4))
        return self.detections(boxes, scores, index % num_classes, state.batched_inputs, state.images, query)
