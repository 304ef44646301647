"""Co-DETR's Faster R-CNN auxiliary head (RPN + RoI box head) on the encoder pyramid.

Built from Detectron2's own parts with explicit arguments (no Detectron2 yaml keys are
read): ``RPN`` with ``StandardRPNHead`` and ``DefaultAnchorGenerator``, and
``StandardROIHeads`` with a ``ROIPooler`` (ROIAlignV2, torchvision's ``roi_align``, so
it runs on CPU), ``FastRCNNConvFCHead`` (2 FC of 1024) and ``FastRCNNOutputLayers``
(class-specific deltas, GIoU loss on the decoded boxes). Settings follow Co-DETR's
``co_deformable_detr_r50_1x_coco.py`` (the paper's Co-Deformable-DETR setting).

Conventions: boxes are absolute xyxy in input pixels; class labels are 0..K-1 and
``K = num_classes`` is background. Training only: the head computes losses and the
sampled RoIs with their assignment; it has no inference path.
"""
import contextlib
from typing import Dict, List, Sequence, Tuple

from torch import Tensor

from detectron2.config import CfgNode as CN
from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling.anchor_generator import DefaultAnchorGenerator
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.modeling.matcher import Matcher
from detectron2.modeling.poolers import ROIPooler
from detectron2.modeling.proposal_generator.rpn import RPN, StandardRPNHead
from detectron2.modeling.roi_heads.box_head import FastRCNNConvFCHead
from detectron2.modeling.roi_heads.fast_rcnn import FastRCNNOutputLayers
from detectron2.modeling.roi_heads.roi_heads import StandardROIHeads
from detectron2.structures import ImageList, Instances
from detectron2.utils import events

from .aux_heads import AUX_HEAD_REGISTRY, AuxHead, PositiveSamples

__all__ = ["FasterRCNNAuxHead", "LowQualityMinMatcher", "add_rcnn_config", "rcnn_anchor_sizes"]


def add_rcnn_config(cfg):
    """Add ``cfg.MODEL.CO_DETR.RCNN`` with Co-DETR's defaults (in place; ``cfg.MODEL.CO_DETR``
    must exist). The class count is ``cfg.MODEL.DETR.NUM_CLASSES``."""
    c = cfg.MODEL.CO_DETR.RCNN = CN()
    # Pyramid levels used, finest first (strides must be consecutive powers of 2).
    c.IN_FEATURES = ["p3", "p4", "p5", "p6", "p7"]
    # RPN anchors per level: OCTAVE_BASE_SCALE * 2^(k / SCALES_PER_OCTAVE) * stride,
    # k = 0..SCALES_PER_OCTAVE-1, times each aspect ratio (h / w).
    c.ANCHOR_OCTAVE_BASE_SCALE = 4.0
    c.ANCHOR_SCALES_PER_OCTAVE = 3
    c.ANCHOR_ASPECT_RATIOS = [0.5, 1.0, 2.0]
    c.ANCHOR_OFFSET = 0.0  # mmdet's anchors are centred on stride * i (offset 0)
    # RPN assignment: IoU < 0.3 negative, >= 0.7 positive, in between ignored; every GT
    # also gets its best anchors if that IoU is >= RPN_LOW_QUALITY_MIN_IOU.
    c.RPN_IOU_THRESHOLDS = [0.3, 0.7]
    c.RPN_LOW_QUALITY_MIN_IOU = 0.3
    c.RPN_BATCH_SIZE_PER_IMAGE = 256
    c.RPN_POSITIVE_FRACTION = 0.5
    c.RPN_BBOX_REG_WEIGHTS = (1.0, 1.0, 1.0, 1.0)
    # Proposals (training settings): per-level top-k before NMS, per-image top-k after.
    c.RPN_PRE_NMS_TOPK = 4000
    c.RPN_POST_NMS_TOPK = 1000
    c.RPN_NMS_THRESH = 0.7
    c.RPN_MIN_BOX_SIZE = 0.0
    # RoI head assignment and sampling.
    c.ROI_IOU_THRESHOLD = 0.5  # >= positive, < negative
    c.ROI_BATCH_SIZE_PER_IMAGE = 512
    c.ROI_POSITIVE_FRACTION = 0.25
    c.PROPOSAL_APPEND_GT = True
    # RoI pooling. Canonical box 112 at level 4 reproduces mmdet's level mapping
    # (finest_scale 56: sqrt(area) < 112 -> p3, [112, 224) -> p4, ...).
    c.POOLER_RESOLUTION = 7
    c.POOLER_SAMPLING_RATIO = 0
    c.POOLER_TYPE = "ROIAlignV2"
    c.POOLER_CANONICAL_BOX_SIZE = 112
    c.POOLER_CANONICAL_LEVEL = 4
    # Box head: Shared2FC.
    c.NUM_FC = 2
    c.FC_DIM = 1024
    c.BBOX_REG_WEIGHTS = (10.0, 10.0, 5.0, 5.0)  # mmdet's target stds 0.1/0.1/0.2/0.2
    # Relative loss weights (Co-DETR's global 6 layers x lambda2 is applied by the meta-arch).
    c.RPN_CLS_WEIGHT = 1.0
    c.RPN_LOC_WEIGHT = 1.0
    c.CLS_WEIGHT = 1.0
    c.GIOU_WEIGHT = 10.0
    return cfg


def rcnn_anchor_sizes(strides: Sequence[int], octave_base_scale: float, scales_per_octave: int):
    """Anchor sizes (sqrt of area) per level: ``octave_base_scale * 2^(k/n) * stride``."""
    return [
        [octave_base_scale * 2 ** (k / scales_per_octave) * s for k in range(scales_per_octave)]
        for s in strides
    ]


class LowQualityMinMatcher(Matcher):
    """Detectron2's ``Matcher`` whose low-quality matches (each GT's best predictions made
    positive) only apply to GTs whose best IoU is at least ``low_quality_min``.

    This is mmdet's ``MaxIoUAssigner(min_pos_iou=...)`` used by Co-DETR's RPN (0.3).
    Detectron2's matcher has no minimum: a GT overlapping no anchor well (or at all: every
    anchor ties at IoU 0) would turn arbitrary anchors positive.
    """

    def __init__(self, thresholds, labels, *, low_quality_min: float = 0.0):
        super().__init__(thresholds, labels, allow_low_quality_matches=True)
        self.low_quality_min = float(low_quality_min)

    def set_low_quality_matches_(self, match_labels, match_quality_matrix):
        best_per_gt = match_quality_matrix.max(dim=1).values
        # Never promote IoU-0 ties, even with a minimum of 0.
        keep = (best_per_gt >= self.low_quality_min) & (best_per_gt > 0)
        super().set_low_quality_matches_(match_labels, match_quality_matrix[keep])


@contextlib.contextmanager
def _event_storage():
    """Detectron2's RPN and RoI heads log statistics to the current ``EventStorage``; the
    trainer opens one, a bare call (tests, scripts) gets a throw-away one."""
    if events._CURRENT_STORAGE_STACK:
        yield
    else:
        with events.EventStorage():
            yield


@AUX_HEAD_REGISTRY.register()
class FasterRCNNAuxHead(AuxHead):
    """RPN + Faster R-CNN box head with one-to-many assignment (Co-DETR auxiliary head).

    ``forward(features, images, gt_instances) -> (losses, samples)``:

    * losses: ``loss_rcnn_rpn_cls`` (objectness BCE), ``loss_rcnn_rpn_loc`` (L1 on anchor
      deltas), ``loss_rcnn_cls`` (RoI cross-entropy over K+1 classes), ``loss_rcnn_giou``
      (GIoU of the decoded class-specific box of positive RoIs), each times its weight;
      normalized as Detectron2 does (RPN: by 256 x #images, RoI: by the #sampled RoIs).
    * samples: per image the RoIs sampled for the box head, positives first then
      negatives (at most ``roi_batch_size_per_image``; GT boxes are among the proposals):
      ``boxes`` the RoI (absolute xyxy), ``labels`` its class (``num_classes`` =
      background), ``target_boxes`` its matched GT box (for an image without GT, the RoI
      itself: meaningless, all are background), ``features`` the 7x7 RoIAlign feature of
      the RoI averaged over the 7x7 cells, [n, C], not detached (as in Co-DETR).

    Unlike Co-DETR, the RoIs of each image are NOT truncated to the batch-minimum count:
    the query builder caps and pads per image.

    Differences from mmdet kept as Detectron2 does them: anchors in the batch padding are
    valid candidates (mmdet excludes anchors outside each image's padded shape); a
    low-quality-matched anchor keeps its best-IoU GT (mmdet reassigns it to the GT it is
    best for); the RPN loss normalizer is 256 x #images (mmdet: #sampled anchors).
    """

    name = "rcnn"

    @configurable
    def __init__(
        self,
        *,
        input_shape: Dict[str, ShapeSpec],
        num_classes: int,
        in_features: Sequence[str] = ("p3", "p4", "p5", "p6", "p7"),
        anchor_octave_base_scale: float = 4.0,
        anchor_scales_per_octave: int = 3,
        anchor_aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0),
        anchor_offset: float = 0.0,
        rpn_iou_thresholds: Sequence[float] = (0.3, 0.7),
        rpn_low_quality_min_iou: float = 0.3,
        rpn_batch_size_per_image: int = 256,
        rpn_positive_fraction: float = 0.5,
        rpn_bbox_reg_weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0),
        rpn_pre_nms_topk: int = 4000,
        rpn_post_nms_topk: int = 1000,
        rpn_nms_thresh: float = 0.7,
        rpn_min_box_size: float = 0.0,
        roi_iou_threshold: float = 0.5,
        roi_batch_size_per_image: int = 512,
        roi_positive_fraction: float = 0.25,
        proposal_append_gt: bool = True,
        pooler_resolution: int = 7,
        pooler_sampling_ratio: int = 0,
        pooler_type: str = "ROIAlignV2",
        pooler_canonical_box_size: int = 112,
        pooler_canonical_level: int = 4,
        num_fc: int = 2,
        fc_dim: int = 1024,
        bbox_reg_weights: Sequence[float] = (10.0, 10.0, 5.0, 5.0),
        rpn_cls_weight: float = 1.0,
        rpn_loc_weight: float = 1.0,
        cls_weight: float = 1.0,
        giou_weight: float = 10.0,
    ):
        """
        Args:
            input_shape: pyramid level name -> ShapeSpec(channels=C, stride=s).
            num_classes: K foreground classes (K is the background label).
            in_features: levels used, finest first; strides must be consecutive powers of 2
                (Detectron2's ROIPooler requirement) and channels equal.
            the rest: see :func:`add_rcnn_config` (same names, upper case).
        """
        super().__init__(input_shape=input_shape, num_classes=num_classes, in_features=in_features)
        channels, strides = self.in_channels, self.strides
        for a, b in zip(strides[:-1], strides[1:]):
            if b != 2 * a:
                raise ValueError(f"FasterRCNNAuxHead: strides {strides} must double from level to level")

        anchor_generator = DefaultAnchorGenerator(
            sizes=rcnn_anchor_sizes(strides, anchor_octave_base_scale, anchor_scales_per_octave),
            aspect_ratios=[list(anchor_aspect_ratios)],
            strides=strides,
            offset=anchor_offset,
        )
        rpn_head = StandardRPNHead(
            in_channels=channels, num_anchors=anchor_generator.num_anchors[0], box_dim=4
        )
        self.rpn = RPN(
            in_features=self.in_features,
            head=rpn_head,
            anchor_generator=anchor_generator,
            anchor_matcher=LowQualityMinMatcher(
                list(rpn_iou_thresholds), [0, -1, 1], low_quality_min=rpn_low_quality_min_iou
            ),
            box2box_transform=Box2BoxTransform(weights=tuple(rpn_bbox_reg_weights)),
            batch_size_per_image=rpn_batch_size_per_image,
            positive_fraction=rpn_positive_fraction,
            # The head only runs in training; both entries hold the training settings so
            # that Detectron2's train/test switch cannot change them.
            pre_nms_topk=(rpn_pre_nms_topk, rpn_pre_nms_topk),
            post_nms_topk=(rpn_post_nms_topk, rpn_post_nms_topk),
            nms_thresh=rpn_nms_thresh,
            min_box_size=rpn_min_box_size,
            loss_weight={"loss_rpn_cls": float(rpn_cls_weight), "loss_rpn_loc": float(rpn_loc_weight)},
            box_reg_loss_type="smooth_l1",
            smooth_l1_beta=0.0,  # beta 0 = L1, as Co-DETR's RPN
        )

        pooler = ROIPooler(
            output_size=pooler_resolution,
            scales=[1.0 / s for s in strides],
            sampling_ratio=pooler_sampling_ratio,
            pooler_type=pooler_type,
            canonical_box_size=pooler_canonical_box_size,
            canonical_level=pooler_canonical_level,
        )
        box_head = FastRCNNConvFCHead(
            ShapeSpec(channels=channels, height=pooler_resolution, width=pooler_resolution),
            conv_dims=[],
            fc_dims=[fc_dim] * num_fc,
        )
        box_predictor = FastRCNNOutputLayers(
            box_head.output_shape,
            box2box_transform=Box2BoxTransform(weights=tuple(bbox_reg_weights)),
            num_classes=num_classes,
            cls_agnostic_bbox_reg=False,
            # Co-DETR regresses decoded boxes (reg_decoded_bbox) with a GIoU loss.
            box_reg_loss_type="giou",
            loss_weight={"loss_cls": float(cls_weight), "loss_box_reg": float(giou_weight)},
        )
        self.roi_heads = StandardROIHeads(
            num_classes=num_classes,
            batch_size_per_image=roi_batch_size_per_image,
            positive_fraction=roi_positive_fraction,
            proposal_matcher=Matcher([roi_iou_threshold], [0, 1], allow_low_quality_matches=False),
            proposal_append_gt=proposal_append_gt,
            box_in_features=self.in_features,
            box_pooler=pooler,
            box_head=box_head,
            box_predictor=box_predictor,
        )

    @classmethod
    def from_config(cls, cfg, input_shape):
        c = cfg.MODEL.CO_DETR.RCNN
        return {
            **cls._pyramid_config(cfg, c, input_shape),
            "anchor_octave_base_scale": c.ANCHOR_OCTAVE_BASE_SCALE,
            "anchor_scales_per_octave": c.ANCHOR_SCALES_PER_OCTAVE,
            "anchor_aspect_ratios": list(c.ANCHOR_ASPECT_RATIOS),
            "anchor_offset": c.ANCHOR_OFFSET,
            "rpn_iou_thresholds": list(c.RPN_IOU_THRESHOLDS),
            "rpn_low_quality_min_iou": c.RPN_LOW_QUALITY_MIN_IOU,
            "rpn_batch_size_per_image": c.RPN_BATCH_SIZE_PER_IMAGE,
            "rpn_positive_fraction": c.RPN_POSITIVE_FRACTION,
            "rpn_bbox_reg_weights": tuple(c.RPN_BBOX_REG_WEIGHTS),
            "rpn_pre_nms_topk": c.RPN_PRE_NMS_TOPK,
            "rpn_post_nms_topk": c.RPN_POST_NMS_TOPK,
            "rpn_nms_thresh": c.RPN_NMS_THRESH,
            "rpn_min_box_size": c.RPN_MIN_BOX_SIZE,
            "roi_iou_threshold": c.ROI_IOU_THRESHOLD,
            "roi_batch_size_per_image": c.ROI_BATCH_SIZE_PER_IMAGE,
            "roi_positive_fraction": c.ROI_POSITIVE_FRACTION,
            "proposal_append_gt": c.PROPOSAL_APPEND_GT,
            "pooler_resolution": c.POOLER_RESOLUTION,
            "pooler_sampling_ratio": c.POOLER_SAMPLING_RATIO,
            "pooler_type": c.POOLER_TYPE,
            "pooler_canonical_box_size": c.POOLER_CANONICAL_BOX_SIZE,
            "pooler_canonical_level": c.POOLER_CANONICAL_LEVEL,
            "num_fc": c.NUM_FC,
            "fc_dim": c.FC_DIM,
            "bbox_reg_weights": tuple(c.BBOX_REG_WEIGHTS),
            "rpn_cls_weight": c.RPN_CLS_WEIGHT,
            "rpn_loc_weight": c.RPN_LOC_WEIGHT,
            "cls_weight": c.CLS_WEIGHT,
            "giou_weight": c.GIOU_WEIGHT,
        }

    def forward(
        self, features: Dict[str, Tensor], images: ImageList, gt_instances: List[Instances]
    ) -> Tuple[Dict[str, Tensor], PositiveSamples]:
        # Detectron2's RPN only computes losses, and StandardROIHeads only samples, when
        # their own ``training`` flag is set; a head (or sub-module) left in eval mode
        # would silently skip supervision, so refuse it.
        if not (self.training and self.rpn.training and self.roi_heads.training):
            raise RuntimeError(
                "FasterRCNNAuxHead is training-only: call it with the head (and its rpn / "
                "roi_heads) in training mode"
            )
        feats = self._select_features(features, images, gt_instances)
        with _event_storage():
            proposals, rpn_losses = self.rpn(images, features, gt_instances)
            # Match / sample (positives first), GT boxes appended as proposals.
            proposals = self.roi_heads.label_and_sample_proposals(proposals, gt_instances)
            roi_feats = self.roi_heads.box_pooler(feats, [p.proposal_boxes for p in proposals])  # [sum n_b, C, 7, 7]
            predictions = self.roi_heads.box_predictor(self.roi_heads.box_head(roi_feats))
            roi_losses = self.roi_heads.box_predictor.losses(predictions, proposals)

        losses = {
            f"loss_{self.name}_rpn_cls": rpn_losses["loss_rpn_cls"],
            f"loss_{self.name}_rpn_loc": rpn_losses["loss_rpn_loc"],
            f"loss_{self.name}_cls": roi_losses["loss_cls"],
            f"loss_{self.name}_giou": roi_losses["loss_box_reg"],
        }

        pooled = roi_feats.mean(dim=(2, 3)).split([len(p) for p in proposals])
        boxes, labels, targets = [], [], []
        for p in proposals:
            rois = p.proposal_boxes.tensor
            boxes.append(rois)
            labels.append(p.gt_classes)
            # No gt_boxes field when the image has no GT (every RoI is background).
            targets.append(p.gt_boxes.tensor if p.has("gt_boxes") else rois.clone())
        samples = PositiveSamples(boxes=boxes, labels=labels, target_boxes=targets, features=list(pooled))
        return losses, samples
