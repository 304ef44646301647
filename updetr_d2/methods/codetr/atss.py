"""Co-DETR's ATSS auxiliary head (Zhang et al., "Bridging the Gap Between Anchor-based and
Anchor-free Detection via Adaptive Training Sample Selection", CVPR 2020).

Training only: it runs on the pyramid built from the DETR encoder output, adds its
one-to-many losses and exports every anchor with its assignment (``PositiveSamples``)
for Co-DETR's customized positive queries. See :mod:`.aux_heads` for the contract and
:mod:`.atss_assign` for the assignment itself.

Conventions
-----------
* Boxes are absolute xyxy in input (padded-image) pixels.
* Anchors: one square anchor per location and level, side ``anchor_scale * stride``
  (8 * stride), from Detectron2's ``DefaultAnchorGenerator``. The anchor of cell
  ``(i, j)`` is centred at ``((j + offset) * stride, (i + offset) * stride)`` with
  ``offset = 0.0`` by default, as mmdet's anchor generator used by ATSS / Co-DETR (and
  Detectron2's ``MODEL.ANCHOR_GENERATOR.OFFSET`` default): a stride-2 3x3/1x1 conv chain
  centres output cell ``i`` on input pixel ``~i * stride``.
* Anchor order: levels in ``in_features`` order, then row-major locations (``y * W + x``),
  the order of ``feature.flatten(2)``; predictions, anchors, assignments and exported
  samples all use it.
* Labels: ``0..num_classes-1``, background ``num_classes``.
* Valid area: an anchor whose centre is outside ``images.image_sizes[b]`` (the padding) is
  *ignored* for that image: it is no ATSS candidate (so it neither becomes positive nor
  shifts the IoU threshold, as mmdet drops anchors outside the valid flags before
  assigning) and gets no classification loss. It is still exported, as background.
"""
import math
from typing import Dict, List, Sequence, Tuple

import torch
from detectron2.config import CfgNode as CN
from detectron2.config import configurable
from detectron2.layers import ShapeSpec, cat
from detectron2.modeling.anchor_generator import DefaultAnchorGenerator
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.modeling.meta_arch.dense_detector import permute_to_N_HWA_K
from detectron2.structures import Boxes, ImageList, Instances
from fvcore.nn import giou_loss, sigmoid_focal_loss
from torch import Tensor, nn
from torch.nn import functional as F

from ...layers.precision import float32_region
from ...modeling.criterion import average_over_workers
from .atss_assign import assign_atss
from .aux_heads import AUX_HEAD_REGISTRY, AuxHead, PositiveSamples
from .fcos import fcos_centerness_targets

__all__ = ["ATSSAuxHead", "add_atss_config", "centerness_targets"]


def add_atss_config(cfg):
    """Create ``cfg.MODEL.CO_DETR.ATSS`` with the Co-DETR / ATSS paper defaults (in place).

    ``cfg.MODEL.CO_DETR`` must exist (the Co-DETR config creates it). The class count is
    ``cfg.MODEL.DETR.NUM_CLASSES``. Loss weights are the head's own relative weights; the
    meta-architecture multiplies them by Co-DETR's decoder depth x lambda2.
    """
    if "CO_DETR" not in cfg.MODEL:
        raise KeyError("add_atss_config: cfg.MODEL.CO_DETR does not exist; add the Co-DETR config first")
    c = cfg.MODEL.CO_DETR.ATSS = CN()
    c.IN_FEATURES = ["p3", "p4", "p5", "p6", "p7"]
    c.TOPK = 9  # candidates per level and GT
    c.ANCHOR_SCALE = 8  # anchor side = ANCHOR_SCALE * stride (mmdet's octave_base_scale)
    c.ANCHOR_OFFSET = 0.0  # anchor centre = (index + offset) * stride, as mmdet / Co-DETR
    c.NUM_CONVS = 1  # stacked convs per tower; Co-DETR uses 1 (paper supp.: as good as 4)
    c.FOCAL_ALPHA = 0.25
    c.FOCAL_GAMMA = 2.0
    c.CLS_WEIGHT = 1.0
    c.GIOU_WEIGHT = 2.0
    c.CENTERNESS_WEIGHT = 1.0
    # Box2BoxTransform weights; (10, 10, 5, 5) = mmdet's target_stds (0.1, 0.1, 0.2, 0.2).
    c.BBOX_REG_WEIGHTS = (10.0, 10.0, 5.0, 5.0)
    return cfg


def centerness_targets(points: Tensor, boxes: Tensor) -> Tensor:
    """FCOS/ATSS centerness of points [N, 2] w.r.t. their boxes [N, 4] (xyxy):
    ``sqrt(min(l, r) / max(l, r) * min(t, b) / max(t, b))``; points must lie inside."""
    return fcos_centerness_targets(torch.cat([points - boxes[:, :2], boxes[:, 2:] - points], dim=1))


def _tower(channels: int, num_convs: int) -> nn.Sequential:
    """``num_convs`` x (3x3 conv + GroupNorm + ReLU); no conv bias (GN follows), as ATSS."""
    layers = []
    for _ in range(num_convs):
        layers += [
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            # 32 groups as ATSS; gcd keeps GN valid for widths not divisible by 32.
            nn.GroupNorm(math.gcd(32, channels), channels),
            nn.ReLU(),
        ]
    return nn.Sequential(*layers)


@AUX_HEAD_REGISTRY.register()
class ATSSAuxHead(AuxHead):
    """ATSS head with one-to-many ATSS assignment, as Co-DETR's auxiliary head.

    Architecture (ATSS paper / mmdet ``ATSSHead``, ``stacked_convs`` = ``num_convs``):
    separate classification and regression towers of ``num_convs`` (3x3 conv, GN, ReLU)
    shared across levels; a 3x3 conv to ``num_classes`` sigmoid logits on the cls tower
    (bias prior 0.01); 3x3 convs to 4 box deltas and to 1 centerness logit on the reg
    tower (centerness parallel to regression, as ATSS). The deltas are multiplied by a
    learnable per-level scalar (ATSS's ``Scale``, init 1) and decoded with Detectron2's
    ``Box2BoxTransform`` (weights (10, 10, 5, 5) = mmdet's stds (0.1, 0.1, 0.2, 0.2)).

    Losses (each already times its relative weight; keys ``loss_atss_{cls,giou,centerness}``):
    sigmoid focal loss over all valid anchors / #positives; GIoU loss of the decoded
    positive boxes weighted by their centerness targets / the targets' sum; centerness BCE
    over positives / #positives. #positives and the centerness sum are averaged over
    workers; #positives is at least 1.
    """

    name = "atss"

    @configurable
    def __init__(
        self,
        *,
        input_shape: Dict[str, ShapeSpec],
        num_classes: int,
        in_features: Sequence[str] = ("p3", "p4", "p5", "p6", "p7"),
        topk: int = 9,
        anchor_scale: float = 8.0,
        anchor_offset: float = 0.0,
        num_convs: int = 1,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        cls_weight: float = 1.0,
        giou_weight: float = 2.0,
        centerness_weight: float = 1.0,
        bbox_reg_weights: Sequence[float] = (10.0, 10.0, 5.0, 5.0),
        prior_prob: float = 0.01,
    ):
        """
        Args:
            input_shape: pyramid level name -> ShapeSpec (channels, stride).
            num_classes: foreground classes (background label = num_classes).
            in_features: the levels used, in order (all with the same channel count).
            topk: ATSS candidates per level and GT.
            anchor_scale, anchor_offset: anchor side = anchor_scale * stride; centre of
                cell i = (i + anchor_offset) * stride.
            num_convs: convs per tower (0 allowed).
            focal_alpha, focal_gamma: sigmoid focal loss parameters.
            cls_weight, giou_weight, centerness_weight: relative loss weights.
            bbox_reg_weights: Box2BoxTransform weights.
            prior_prob: initial foreground probability of the classifier.
        """
        super().__init__(input_shape=input_shape, num_classes=num_classes, in_features=in_features)
        self.topk = topk
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma
        self.cls_weight = cls_weight
        self.giou_weight = giou_weight
        self.centerness_weight = centerness_weight

        c = self.in_channels
        self.cls_tower = _tower(c, num_convs)
        self.reg_tower = _tower(c, num_convs)
        self.cls_score = nn.Conv2d(c, num_classes, 3, padding=1)
        self.bbox_pred = nn.Conv2d(c, 4, 3, padding=1)
        self.centerness = nn.Conv2d(c, 1, 3, padding=1)
        self.scales = nn.Parameter(torch.ones(len(self.in_features)))
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, std=0.01)
                if module.bias is not None:
                    nn.init.constant_(module.bias, 0.0)
        nn.init.constant_(self.cls_score.bias, -math.log((1 - prior_prob) / prior_prob))

        self.anchor_generator = DefaultAnchorGenerator(
            sizes=[[float(anchor_scale * s)] for s in self.strides],
            aspect_ratios=[[1.0]],
            strides=self.strides,
            offset=anchor_offset,
        )
        self.box2box_transform = Box2BoxTransform(weights=tuple(bbox_reg_weights))

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]):
        c = cfg.MODEL.CO_DETR.ATSS
        return {
            **cls._pyramid_config(cfg, c, input_shape),
            "topk": c.TOPK,
            "anchor_scale": c.ANCHOR_SCALE,
            "anchor_offset": c.ANCHOR_OFFSET,
            "num_convs": c.NUM_CONVS,
            "focal_alpha": c.FOCAL_ALPHA,
            "focal_gamma": c.FOCAL_GAMMA,
            "cls_weight": c.CLS_WEIGHT,
            "giou_weight": c.GIOU_WEIGHT,
            "centerness_weight": c.CENTERNESS_WEIGHT,
            "bbox_reg_weights": tuple(c.BBOX_REG_WEIGHTS),
        }

    # ------------------------------------------------------------------ predictions
    def predict(self, feats: List[Tensor]) -> Tuple[Tensor, Tensor, Tensor]:
        """Per-level predictions flattened in anchor order: logits [B, A, K], deltas
        [B, A, 4] (after the per-level scale), centerness logits [B, A]."""
        logits, deltas, ctr = [], [], []
        for level, x in enumerate(feats):
            cls_feat = self.cls_tower(x)
            reg_feat = self.reg_tower(x)
            logits.append(permute_to_N_HWA_K(self.cls_score(cls_feat), self.num_classes))
            deltas.append(permute_to_N_HWA_K(self.bbox_pred(reg_feat) * self.scales[level], 4))
            ctr.append(permute_to_N_HWA_K(self.centerness(reg_feat), 1))
        return cat(logits, dim=1), cat(deltas, dim=1), cat(ctr, dim=1).squeeze(-1)

    # ------------------------------------------------------------------ forward
    def forward(
        self, features: Dict[str, Tensor], images: ImageList, gt_instances: List[Instances]
    ) -> Tuple[Dict[str, Tensor], PositiveSamples]:
        feats = self._select_features(features, images, gt_instances)
        batch = feats[0].shape[0]
        pred_logits, pred_deltas, pred_ctr = self.predict(feats)

        anchors_per_level = self.anchor_generator(feats)
        num_per_level = [len(a) for a in anchors_per_level]
        anchors = Boxes.cat(anchors_per_level).tensor  # [A, 4]
        if pred_logits.shape[1] != anchors.shape[0]:
            raise ValueError(f"ATSSAuxHead: {pred_logits.shape[1]} predictions for {anchors.shape[0]} anchors")

        labels, target_boxes, valid = self.label_anchors(anchors, num_per_level, images.image_sizes, gt_instances)
        losses = self.losses(anchors, pred_logits, pred_deltas, pred_ctr, labels, target_boxes, valid)

        # Features at each anchor's location: the pyramid (input) feature, not the tower
        # output (Co-DETR feeds the neck feature into the query); same order as anchors.
        # Not detached: the query builder decides whether its gradient reaches the pyramid.
        flat_feats = cat([x.flatten(2) for x in feats], dim=2).transpose(1, 2)  # [B, A, C]
        samples = PositiveSamples(
            boxes=[anchors for _ in range(batch)],
            labels=list(labels.unbind(0)),
            target_boxes=list(target_boxes.unbind(0)),
            features=list(flat_feats.unbind(0)),
        )
        return losses, samples

    @torch.no_grad()
    def label_anchors(
        self,
        anchors: Tensor,
        num_anchors_per_level: List[int],
        image_sizes: List[Tuple[int, int]],
        gt_instances: List[Instances],
    ) -> Tuple[Tensor, Tensor, Tensor]:
        """ATSS assignment per image.

        Returns labels [B, A] (background = num_classes), target boxes [B, A, 4] (the
        assigned GT box; the anchor itself for background) and valid [B, A] (anchor centre
        inside the image's valid area: ``0 <= c < size``).
        """
        centers = (anchors[:, :2] + anchors[:, 2:]) / 2
        labels, targets, valids = [], [], []
        for (h, w), inst in zip(image_sizes, gt_instances):
            valid = (centers[:, 0] >= 0) & (centers[:, 0] < w) & (centers[:, 1] >= 0) & (centers[:, 1] < h)
            gt_boxes, gt_classes = self._gt_boxes_and_classes(inst, anchors)
            assignment = assign_atss(
                anchors,
                num_anchors_per_level,
                gt_boxes,
                gt_classes,
                self.num_classes,
                self.topk,
                anchor_centers=centers,
                valid=valid,
            )
            target = anchors.clone()
            pos = assignment.matched_idxs >= 0
            target[pos] = gt_boxes[assignment.matched_idxs[pos]]
            labels.append(assignment.labels)
            targets.append(target)
            valids.append(valid)
        return torch.stack(labels), torch.stack(targets), torch.stack(valids)

    @float32_region  # box decoding, GIoU and focal sums in float32 under mixed precision
    def losses(
        self,
        anchors: Tensor,
        pred_logits: Tensor,
        pred_deltas: Tensor,
        pred_centerness: Tensor,
        labels: Tensor,
        target_boxes: Tensor,
        valid: Tensor,
    ) -> Dict[str, Tensor]:
        """Weighted ATSS losses.

        Args:
            anchors: [A, 4] xyxy; pred_logits [B, A, K]; pred_deltas [B, A, 4];
            pred_centerness [B, A] (logits); labels [B, A] (background = K);
            target_boxes [B, A, 4] xyxy (read at positives only); valid [B, A] bool
            (invalid anchors get no classification loss and must not be positive).
        """
        batch, num_anchors = labels.shape
        if (
            anchors.shape != (num_anchors, 4)
            or pred_logits.shape != (batch, num_anchors, self.num_classes)
            or pred_deltas.shape != (batch, num_anchors, 4)
            or pred_centerness.shape != (batch, num_anchors)
            or target_boxes.shape != (batch, num_anchors, 4)
            or valid.shape != (batch, num_anchors)
        ):
            raise ValueError(
                f"ATSSAuxHead.losses: shapes do not line up: anchors {tuple(anchors.shape)}, logits "
                f"{tuple(pred_logits.shape)}, deltas {tuple(pred_deltas.shape)}, centerness "
                f"{tuple(pred_centerness.shape)}, labels {tuple(labels.shape)}, targets "
                f"{tuple(target_boxes.shape)}, valid {tuple(valid.shape)}"
            )
        pos = (labels >= 0) & (labels < self.num_classes)
        if (pos & ~valid).any():
            raise ValueError("ATSSAuxHead.losses: a positive anchor lies outside the valid area")

        # Losses in fp32 (as mmdet's force_fp32): focal / GIoU are fragile in half precision.
        pred_logits, pred_deltas, pred_centerness = pred_logits.float(), pred_deltas.float(), pred_centerness.float()
        pos_anchors = anchors.float()[None].expand(batch, -1, -1)[pos]
        pos_targets = target_boxes.float()[pos]
        pos_ctr_targets = centerness_targets((pos_anchors[:, :2] + pos_anchors[:, 2:]) / 2, pos_targets)

        num_pos, ctr_sum = average_over_workers(
            torch.stack([pos.sum().float(), pos_ctr_targets.sum()]).to(pred_logits.device)
        ).tolist()
        num_pos = max(num_pos, 1.0)

        onehot = F.one_hot(labels, self.num_classes + 1)[..., : self.num_classes].to(pred_logits.dtype)
        loss_cls = sigmoid_focal_loss(
            pred_logits[valid], onehot[valid], alpha=self.focal_alpha, gamma=self.focal_gamma, reduction="sum"
        ) / num_pos

        pred_boxes = self.box2box_transform.apply_deltas(pred_deltas[pos], pos_anchors)
        # Normalised by the centerness-target sum as the official ATSS code (a weighted
        # mean of the GIoU losses); mmdet / Co-DETR clamp that sum at >= 1, which shrinks
        # the loss when there are few positives. The floor only avoids 0/0 when the batch
        # has no positive at all (the numerator is then an empty sum).
        loss_giou = (giou_loss(pred_boxes, pos_targets, reduction="none") * pos_ctr_targets).sum() / max(
            ctr_sum, 1e-6
        )
        loss_ctr = (
            F.binary_cross_entropy_with_logits(pred_centerness[pos], pos_ctr_targets, reduction="sum") / num_pos
        )
        return {
            f"loss_{self.name}_cls": loss_cls * self.cls_weight,
            f"loss_{self.name}_giou": loss_giou * self.giou_weight,
            f"loss_{self.name}_centerness": loss_ctr * self.centerness_weight,
        }
