"""Deformable DETR-R50 as LazyConfig; builds the same module tree as
projects/DeformableDETR/configs/deformable_detr_r50.yaml.

``use_dn_queries(model)`` is the DN-Deformable-DETR switch: anchor queries wrapped in
denoising groups; their sizes follow the model's. ``use_dino(model)`` turns the node into
DINO (contrastive denoising, mixed query selection, look-forward-twice).

The number of queries has one home: the query generator's ``num_queries``. ``model.num_queries``
is read by the two-stage variant only (no query generator: that many top encoder proposals
become the queries)."""
from detectron2.config import LazyCall as L

from updetr_d2.layers.deformable_transformer import DeformableTransformer
from updetr_d2.layers.position_encoding import PositionEmbeddingSine
from updetr_d2.methods.dn import DenoisingQueries
from updetr_d2.modeling import BoxL1GIoU, HungarianMatcher, LabelFocal, SetCriterion
from updetr_d2.modeling.meta_arch.deformable_detr import DeformableDetr
from updetr_d2.modeling.queries import AnchorQueries, LearnedPointQueries, ProposalQueries

from .resnet50 import masked_resnet50

model = L(DeformableDetr)(
    backbone=masked_resnet50(["res3", "res4", "res5"]),
    position_embedding=L(PositionEmbeddingSine)(num_pos_feats=128, normalize=True, offset=-0.5),
    transformer=L(DeformableTransformer)(
        d_model=256,
        nhead=8,
        num_encoder_layers=6,
        num_decoder_layers=6,
        dim_feedforward=1024,
        dropout=0.1,
        num_feature_levels=4,
        enc_n_points=4,
        dec_n_points=4,
        two_stage=False,
        anchor_queries=False,
    ),
    query_generator=L(LearnedPointQueries)(num_queries=300, hidden_dim=256),
    criterion=L(SetCriterion)(
        matcher=L(HungarianMatcher)(
            cost_class=2.0, cost_bbox=5.0, cost_giou=2.0, class_cost_type="focal", focal_alpha=0.25
        ),
        loss_terms=[L(LabelFocal)(num_classes="${....num_classes}", alpha=0.25), L(BoxL1GIoU)()],
        weight_dict={"loss_focal": 2.0, "loss_bbox": 5.0, "loss_giou": 2.0},
        aux_loss=True,
    ),
    num_classes=80,
    hidden_dim=256,
    pixel_mean=[123.675, 116.280, 103.530],
    pixel_std=[58.395, 57.120, 57.375],
    aux_loss=True,
    with_box_refine=False,
    two_stage=False,
    test_topk=100,
    size_divisibility=32,
)


def use_dn_queries(model, num_groups=5, label_noise_prob=0.2, box_noise_scale=0.4, mask_padding=True):
    """Turn a Deformable DETR node into DN-Deformable-DETR: the transformer takes anchor
    queries, wrapped in ``num_groups`` denoising groups. There are as many anchor queries as
    the query generator they replace had queries or, for a two-stage node (no query
    generator), as its proposals (``model.num_queries``, which then moves to the generator).
    A function, so that the config files that use it get no extra top-level node; the
    interpolations are relative to ``model.query_generator``, where the generator is placed."""
    if model.query_generator is None:
        num_queries = model.pop("num_queries")
    else:
        num_queries = model.query_generator.num_queries
    model.transformer.anchor_queries = True
    base = L(AnchorQueries)(num_queries=num_queries, hidden_dim="${...hidden_dim}", with_indicator=True)
    model.query_generator = _denoising(base, num_groups=num_groups, label_noise_prob=label_noise_prob,
                                       box_noise_scale=box_noise_scale, mask_padding=mask_padding)
    return model


def _denoising(base, **options):
    """``base`` (a query generator node) wrapped in denoising groups sized like the model;
    interpolations relative to ``model.query_generator``."""
    return L(DenoisingQueries)(base=base, num_classes="${..num_classes}", hidden_dim="${..hidden_dim}",
                               num_heads="${..transformer.nhead}", **options)


def use_dino(model, num_queries=900, num_dn_queries=200, label_noise_prob=0.25, box_noise_scale=0.4):
    """Turn a Deformable DETR node into DINO (projects/DINO/configs/dino_r50.yaml says what
    each setting is): box refinement, two-stage with mixed query selection (``num_queries``
    learned content queries on the top proposals' boxes), anchor-query decoder without the
    content scale, look-forward-twice, class-aware proposals, contrastive denoising of
    about ``num_dn_queries`` queries; matching class cost 2, focal weight 1, temperature 20.
    The width, feedforward and dropout stay the node's (DINO-R50: 2048 and 0)."""
    model.pop("num_queries", None)
    model.update(with_box_refine=True, two_stage=True)
    model.transformer.update(two_stage=True, anchor_queries=True, query_scale=False, look_forward_twice=True,
                             class_aware_proposals=True)
    model.position_embedding.temperature = 20
    model.criterion.matcher.cost_class = 2.0
    model.criterion.weight_dict["loss_focal"] = 1.0
    base = L(ProposalQueries)(num_queries=num_queries, hidden_dim="${...hidden_dim}", with_indicator=False)
    model.query_generator = _denoising(base, label_noise_prob=label_noise_prob, box_noise_scale=box_noise_scale,
                                       contrastive=True, num_dn_queries=num_dn_queries, with_indicator=False)
    return model
