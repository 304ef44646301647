"""FCOS as a Co-DETR auxiliary head (Tian et al., "FCOS: Fully Convolutional One-Stage
Object Detection", ICCV 2019; Co-DETR section 3 lists it as an aux head, paper ablation
only: the official Co-DETR code has no FCOS config).

Reused from Detectron2: :class:`FCOSHead` (towers, class / ltrb / centerness outputs),
the point generator (``DefaultAnchorGenerator`` with one box of side = stride per
location, offset 0.5, i.e. points at ``stride // 2 + k * stride`` as in the paper),
:class:`Box2BoxTransformLinear` (ltrb distances normalised by the stride) and its GIoU
regression loss, fvcore's sigmoid focal loss. The assignment is written here (vectorised
over points x GTs) because ``FCOS.match_anchors`` hard-codes the scale ranges to
``[4, 8] * stride`` and breaks area ties with ``1e8 - area`` in float32 (wrong for areas
that differ by less than float32's spacing at 1e8, i.e. 8 px^2).

Conventions (D2's FCOS kept unless the FCOS paper says otherwise):

* a point is positive for a GT when (1) it is inside the GT (``min(l, t, r, b) > 0``),
  (2) inside its centre region (``max(|x - cx|, |y - cy|) < radius * stride``, radius
  1.5: FCOS's centre sampling, D2 and FCOS-imprv), (3) ``lo <= max(l, t, r, b) <= hi``
  for its level's range (``[0, 64], [64, 128], [128, 256], [256, 512], [512, inf]``
  on p3..p7). The paper's rule is inclusive (a point is negative when
  ``max > m_i`` or ``max < m_{i-1}``); D2 uses strict bounds; we follow the paper.
  A point that is positive for several GTs takes the one with the smallest area
  (ties: the first GT).
* losses (FCOS's, all normalised by the number of positives, all-reduced and averaged
  over workers like ``SetCriterion.get_num_boxes``, at least 1): sigmoid focal loss
  (alpha 0.25, gamma 2) over every point inside the image's valid area (points in the
  padding are ignored), GIoU loss of the decoded boxes on positives, BCE of the
  centerness logits against ``sqrt(min(l,r)/max(l,r) * min(t,b)/max(t,b))`` on
  positives. Relative weights default to FCOS's 1 / 1 / 1.
* exported samples (:class:`PositiveSamples`): every point inside the image's valid area
  (``images.image_sizes[i]``; padding points have no supervision and a box centred
  outside the image would make a poor negative query), level-major (p3 first), row-major
  within a level. A point's box is centred on it with side ``box_point_scale * stride``
  (8 * stride: the spec's "w = h = 8 * 2^j (verify)", the same size as ATSS's anchors in
  Co-DETR), not clipped to the image; background label ``num_classes``, background
  target box = the point's own box; the feature is the pyramid feature at the point
  (not detached: the customized queries' feature term may train the encoder).
"""
import math
from typing import Dict, List, Sequence, Tuple

import torch
from fvcore.nn import sigmoid_focal_loss_jit
from torch import Tensor, nn
from torch.nn import functional as F

from detectron2.config import CfgNode as CN
from detectron2.config import configurable
from detectron2.layers import ShapeSpec, cat
from detectron2.modeling.anchor_generator import DefaultAnchorGenerator
from detectron2.modeling.box_regression import Box2BoxTransformLinear, _dense_box_regression_loss
from detectron2.modeling.meta_arch.dense_detector import permute_to_N_HWA_K
from detectron2.modeling.meta_arch.fcos import FCOSHead
from detectron2.structures import Boxes, ImageList, Instances

from ...layers.precision import to_float32
from ...modeling.criterion import average_over_workers
from .aux_heads import AUX_HEAD_REGISTRY, AuxHead, PositiveSamples

__all__ = ["FCOSAuxHead", "add_fcos_config", "fcos_assign", "fcos_centerness_targets", "point_level_ranges"]


def add_fcos_config(cfg):
    """``cfg.MODEL.CO_DETR.FCOS``: the FCOS auxiliary head (FCOS paper defaults).

    Needs ``cfg.MODEL.CO_DETR`` (created by the Co-DETR config) and
    ``cfg.MODEL.DETR.NUM_CLASSES`` (the class count is the detector's).
    """
    cfg.MODEL.CO_DETR.FCOS = CN()
    f = cfg.MODEL.CO_DETR.FCOS
    f.IN_FEATURES = ["p3", "p4", "p5", "p6", "p7"]
    # 1 stacked conv per tower, not FCOS's 4: it is an auxiliary, training-only head and
    # Co-DETR's supplementary found 1 conv as good as 4 for its ATSS head.
    f.NUM_CONVS = 1
    f.NORM = "GN"  # D2's FCOS config and Co-DETR's ATSS head use GroupNorm(32)
    f.PRIOR_PROB = 0.01
    f.CENTER_SAMPLING_RADIUS = 1.5
    # Boundaries between the levels' ranges of max(l, t, r, b), in input pixels:
    # len(IN_FEATURES) - 1 values; the first level starts at 0, the last ends at inf.
    f.SIZES_OF_INTEREST = [64, 128, 256, 512]
    f.FOCAL_ALPHA = 0.25
    f.FOCAL_GAMMA = 2.0
    # FCOS's relative weights (Co-DETR released no FCOS config; its ATSS uses GIoU 2).
    f.CLS_WEIGHT = 1.0
    f.BOX_WEIGHT = 1.0
    f.CENTERNESS_WEIGHT = 1.0
    # Side of an exported point box = BOX_POINT_SCALE * stride of its level.
    f.BOX_POINT_SCALE = 8.0


def point_level_ranges(sizes_of_interest: Sequence[float], num_levels: int) -> List[Tuple[float, float]]:
    """Per level ``(lo, hi)`` of the admitted ``max(l, t, r, b)`` from the boundaries."""
    soi = [float(s) for s in sizes_of_interest]
    if len(soi) != num_levels - 1:
        raise ValueError(f"FCOS: {num_levels} levels need {num_levels - 1} SIZES_OF_INTEREST boundaries, got {soi}")
    if any(b <= a for a, b in zip(soi, soi[1:])) or (soi and soi[0] <= 0):
        raise ValueError(f"FCOS: SIZES_OF_INTEREST must be positive and increasing, got {soi}")
    return list(zip([0.0] + soi, soi + [math.inf]))


@torch.no_grad()
def fcos_assign(
    points: Tensor,
    strides: Tensor,
    lower: Tensor,
    upper: Tensor,
    gt_boxes: Tensor,
    center_sampling_radius: float = 1.5,
) -> Tensor:
    """FCOS label assignment of one image.

    Args:
        points: [R, 2] point locations (x, y) in input pixels.
        strides, lower, upper: [R] each point's level stride and admitted range of
            ``max(l, t, r, b)`` (inclusive on both ends, as in the paper).
        gt_boxes: [G, 4] absolute xyxy.
        center_sampling_radius: the centre region is ``radius * stride`` around the GT
            centre (Chebyshev distance, strict).

    Returns:
        [R] long: the index of the GT each point is assigned to, -1 for background.
    """
    R, G = points.shape[0], gt_boxes.shape[0]
    if points.shape != (R, 2) or gt_boxes.shape != (G, 4) or not (strides.shape == lower.shape == upper.shape == (R,)):
        raise ValueError(
            f"fcos_assign: points {tuple(points.shape)}, strides {tuple(strides.shape)}, lower "
            f"{tuple(lower.shape)}, upper {tuple(upper.shape)}, gt_boxes {tuple(gt_boxes.shape)}"
        )
    if G == 0:
        return torch.full((R,), -1, dtype=torch.long, device=points.device)
    points, gt_boxes = points.float(), gt_boxes.float()
    x, y = points[:, 0, None], points[:, 1, None]  # [R, 1]
    ltrb = torch.stack(
        (x - gt_boxes[:, 0], y - gt_boxes[:, 1], gt_boxes[:, 2] - x, gt_boxes[:, 3] - y), dim=2
    )  # [R, G, 4]
    inside = ltrb.min(dim=2).values > 0
    gt_centers = (gt_boxes[:, :2] + gt_boxes[:, 2:]) / 2
    center_dist = (points[:, None, :] - gt_centers[None]).abs().max(dim=2).values  # [R, G]
    in_center = center_dist < center_sampling_radius * strides[:, None]
    max_dist = ltrb.max(dim=2).values
    in_range = (max_dist >= lower[:, None]) & (max_dist <= upper[:, None])
    match = inside & in_center & in_range

    # Ambiguous points take the smallest GT (exact float comparison, not D2's 1e8 - area).
    areas = (gt_boxes[:, 2] - gt_boxes[:, 0]) * (gt_boxes[:, 3] - gt_boxes[:, 1])
    cost = torch.where(match, areas[None, :].expand(R, G), torch.full_like(max_dist, math.inf))
    min_cost, idx = cost.min(dim=1)  # first index on ties
    idx[torch.isinf(min_cost)] = -1
    return idx


def fcos_centerness_targets(ltrb: Tensor) -> Tensor:
    """``sqrt(min(l, r) / max(l, r) * min(t, b) / max(t, b))`` for [N, 4] positive
    distances (any common scale, e.g. normalised by the stride)."""
    lr, tb = ltrb[:, [0, 2]], ltrb[:, [1, 3]]
    ratio = (lr.min(dim=1).values / lr.max(dim=1).values) * (tb.min(dim=1).values / tb.max(dim=1).values)
    return ratio.clamp(min=0).sqrt()


def _group_norm_32(channels: int) -> nn.GroupNorm:
    """``"GN"`` (GroupNorm with 32 groups) as a callable: D2's ``RetinaNetHead`` probes
    ``get_norm(norm, 1)`` for the norm's type, and the string ``"GN"`` then builds
    ``GroupNorm(32, 1)``, an error in current PyTorch; the probe gets 1 group."""
    return nn.GroupNorm(32 if channels != 1 else 1, channels)


def _num_positives(num_pos: int, device) -> float:
    """Positives per worker averaged over workers (each divides by the same number so
    DDP's gradient average is right), at least 1; as ``SetCriterion.get_num_boxes``."""
    return max(average_over_workers(torch.as_tensor([float(num_pos)], device=device)).item(), 1.0)


@AUX_HEAD_REGISTRY.register()
class FCOSAuxHead(AuxHead):
    """FCOS on the Co-DETR encoder pyramid; see the module docstring for the conventions.

    Losses: ``loss_fcos_cls``, ``loss_fcos_giou``, ``loss_fcos_centerness`` (each times
    its relative weight). Samples: every point of each image's valid area.
    """

    name = "fcos"

    @configurable
    def __init__(
        self,
        *,
        input_shape: Dict[str, ShapeSpec],
        num_classes: int,
        in_features: Sequence[str] = ("p3", "p4", "p5", "p6", "p7"),
        num_convs: int = 1,
        norm: str = "GN",
        prior_prob: float = 0.01,
        center_sampling_radius: float = 1.5,
        sizes_of_interest: Sequence[float] = (64, 128, 256, 512),
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        cls_weight: float = 1.0,
        box_weight: float = 1.0,
        centerness_weight: float = 1.0,
        box_point_scale: float = 8.0,
    ):
        """
        Args:
            input_shape: pyramid level name -> ShapeSpec(channels, stride); every level
                in ``in_features`` must be there, all with the same channels.
            num_classes: foreground classes; background label is ``num_classes``.
            in_features: the levels used, finest first.
            num_convs, norm, prior_prob: D2 ``FCOSHead`` towers (convs of width C).
            center_sampling_radius, sizes_of_interest: the assignment (see
                :func:`fcos_assign`, :func:`point_level_ranges`).
            focal_alpha, focal_gamma: sigmoid focal loss.
            cls_weight, box_weight, centerness_weight: relative loss weights.
            box_point_scale: exported point boxes have side ``box_point_scale * stride``.
        """
        super().__init__(input_shape=input_shape, num_classes=num_classes, in_features=in_features)
        self.level_ranges = point_level_ranges(sizes_of_interest, len(self.in_features))

        self.head = FCOSHead(
            input_shape=[input_shape[f] for f in self.in_features],
            conv_dims=[self.in_channels] * int(num_convs),
            num_classes=self.num_classes,
            norm=_group_norm_32 if norm == "GN" else norm,
            prior_prob=prior_prob,
        )
        # One point per location, represented (as in D2's FCOS) by a box of side = stride,
        # which is also what Box2BoxTransformLinear normalises the distances by.
        self.point_generator = DefaultAnchorGenerator(
            sizes=[[s] for s in self.strides], aspect_ratios=[1.0], strides=self.strides, offset=0.5
        )
        self.box2box_transform = Box2BoxTransformLinear(normalize_by_size=True)

        self.center_sampling_radius = float(center_sampling_radius)
        self.focal_alpha = float(focal_alpha)
        self.focal_gamma = float(focal_gamma)
        self.cls_weight = float(cls_weight)
        self.box_weight = float(box_weight)
        self.centerness_weight = float(centerness_weight)
        self.box_point_scale = float(box_point_scale)

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]):
        f = cfg.MODEL.CO_DETR.FCOS
        return {
            **cls._pyramid_config(cfg, f, input_shape),
            "num_convs": f.NUM_CONVS,
            "norm": f.NORM,
            "prior_prob": f.PRIOR_PROB,
            "center_sampling_radius": f.CENTER_SAMPLING_RADIUS,
            "sizes_of_interest": list(f.SIZES_OF_INTEREST),
            "focal_alpha": f.FOCAL_ALPHA,
            "focal_gamma": f.FOCAL_GAMMA,
            "cls_weight": f.CLS_WEIGHT,
            "box_weight": f.BOX_WEIGHT,
            "centerness_weight": f.CENTERNESS_WEIGHT,
            "box_point_scale": f.BOX_POINT_SCALE,
        }

    def _points(self, feats: List[Tensor]):
        """Point boxes (side = stride) per level, and per point: stride, range lo, hi."""
        anchors = self.point_generator(feats)  # List[Boxes], level-major, row-major inside
        counts = [len(a) for a in anchors]
        device = anchors[0].tensor.device
        strides = torch.cat([torch.full((n,), float(s), device=device) for n, s in zip(counts, self.strides)])
        lower = torch.cat([torch.full((n,), lo, device=device) for n, (lo, _) in zip(counts, self.level_ranges)])
        upper = torch.cat([torch.full((n,), hi, device=device) for n, (_, hi) in zip(counts, self.level_ranges)])
        return anchors, strides, lower, upper

    def forward(
        self, features: Dict[str, Tensor], images: ImageList, gt_instances: List[Instances]
    ) -> Tuple[Dict[str, Tensor], PositiveSamples]:
        feats = self._select_features(features, images, gt_instances)
        B = feats[0].shape[0]

        # The towers may run in low precision (autocast); assignment, box decoding and the
        # losses take float32 (autocast lowers matmuls and convs only, none follows here).
        logits, deltas, centerness = to_float32(self.head(feats))
        logits = cat([permute_to_N_HWA_K(x, self.num_classes) for x in logits], dim=1)  # [B, R, K]
        deltas = [permute_to_N_HWA_K(x, 4) for x in deltas]  # per level [B, R_l, 4]
        centerness = cat([permute_to_N_HWA_K(x, 1) for x in centerness], dim=1).squeeze(2)  # [B, R]

        anchors, strides, lower, upper = self._points(feats)
        point_boxes = Boxes.cat(anchors).tensor  # [R, 4], side = stride
        centers = (point_boxes[:, :2] + point_boxes[:, 2:]) / 2
        R = point_boxes.shape[0]
        if logits.shape[1] != R:
            raise ValueError(f"FCOSAuxHead: {logits.shape[1]} predictions for {R} points")

        labels, target_boxes, valid = [], [], []
        for inst, (h, w) in zip(gt_instances, images.image_sizes):
            boxes, classes = self._gt_boxes_and_classes(inst, point_boxes)
            valid.append((centers[:, 0] < w) & (centers[:, 1] < h))
            if boxes.shape[0] == 0:
                labels.append(torch.full((R,), self.num_classes, dtype=torch.long, device=centers.device))
                target_boxes.append(point_boxes.clone())
                continue
            idx = fcos_assign(centers, strides, lower, upper, boxes, self.center_sampling_radius)
            pos = idx >= 0
            safe = idx.clamp(min=0)
            labels.append(torch.where(pos, classes[safe], torch.full_like(classes[safe], self.num_classes)))
            target_boxes.append(torch.where(pos[:, None], boxes[safe], point_boxes))
        labels_t = torch.stack(labels)  # [B, R]
        valid_t = torch.stack(valid)  # [B, R]
        pos_mask = labels_t != self.num_classes
        normalizer = _num_positives(int(pos_mask.sum()), logits.device)

        # Classification: every point of the valid area; background = all-zero one-hot.
        onehot = F.one_hot(labels_t, num_classes=self.num_classes + 1)[..., :-1].to(logits.dtype)
        loss_cls = sigmoid_focal_loss_jit(
            logits[valid_t], onehot[valid_t], alpha=self.focal_alpha, gamma=self.focal_gamma, reduction="sum"
        )
        # Box: GIoU of the decoded ltrb boxes on positives (D2's helper, relu'd distances).
        loss_giou = _dense_box_regression_loss(
            anchors, self.box2box_transform, deltas, target_boxes, pos_mask, box_reg_loss_type="giou"
        )
        # Centerness: BCE on positives against the centerness of the assigned GT.
        pos_targets = torch.stack(target_boxes)[pos_mask]
        pos_points = point_boxes[None].expand(B, R, 4)[pos_mask]
        ctr_targets = fcos_centerness_targets(self.box2box_transform.get_deltas(pos_points, pos_targets))
        loss_ctr = F.binary_cross_entropy_with_logits(
            centerness[pos_mask], ctr_targets.to(centerness.dtype), reduction="sum"
        )
        losses = {
            "loss_fcos_cls": loss_cls / normalizer * self.cls_weight,
            "loss_fcos_giou": loss_giou / normalizer * self.box_weight,
            "loss_fcos_centerness": loss_ctr / normalizer * self.centerness_weight,
        }

        # Samples: the valid-area points, with boxes of side box_point_scale * stride.
        half = (0.5 * self.box_point_scale * strides)[:, None]
        sample_boxes = torch.cat([centers - half, centers + half], dim=1)
        flat_feats = cat([x.flatten(2) for x in feats], dim=2).transpose(1, 2)  # [B, R, C]
        samples = PositiveSamples(
            boxes=[sample_boxes[v] for v in valid_t],
            labels=[lab[v] for lab, v in zip(labels_t, valid_t)],
            target_boxes=[t[v] for t, v in zip(target_boxes, valid_t)],
            features=[f[v] for f, v in zip(flat_feats, valid_t)],
        )
        return losses, samples
