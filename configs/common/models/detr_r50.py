"""DETR-R50 as LazyConfig; builds the same module tree as configs/detr/detr_r50.yaml."""
import math

from detectron2.config import LazyCall as L

from updetr_d2.layers.position_encoding import PositionEmbeddingSine
from updetr_d2.layers.transformer import Transformer
from updetr_d2.modeling import BoxL1GIoU, HungarianMatcher, LabelCrossEntropy, SetCriterion
from updetr_d2.modeling.meta_arch.detr import Detr
from updetr_d2.modeling.queries import LearnedQueries

from .resnet50 import masked_resnet50

model = L(Detr)(
    backbone=masked_resnet50(["res5"]),
    position_embedding=L(PositionEmbeddingSine)(num_pos_feats=128, normalize=True, scale=2 * math.pi),
    transformer=L(Transformer)(
        d_model=256,
        nhead=8,
        num_encoder_layers=6,
        num_decoder_layers=6,
        dim_feedforward=2048,
        dropout=0.1,
        normalize_before=False,
        return_intermediate_dec=True,
    ),
    query_generator=L(LearnedQueries)(num_queries=100, hidden_dim=256),
    criterion=L(SetCriterion)(
        matcher=L(HungarianMatcher)(cost_class=1.0, cost_bbox=5.0, cost_giou=2.0),
        loss_terms=[L(LabelCrossEntropy)(num_classes="${....num_classes}", eos_coef=0.1), L(BoxL1GIoU)()],
        weight_dict={"loss_ce": 1.0, "loss_bbox": 5.0, "loss_giou": 2.0},
        aux_loss=True,
    ),
    num_classes=80,
    hidden_dim=256,
    pixel_mean=[123.675, 116.280, 103.530],
    pixel_std=[58.395, 57.120, 57.375],
    aux_loss=True,
    size_divisibility=32,
)
