"""Co-DETR's auxiliary heads: conventional detectors with one-to-many label assignment,
trained on a feature pyramid built from the DETR encoder's output (training only).

A head is registered in ``AUX_HEAD_REGISTRY`` and built by
``build_aux_head(name, cfg, input_shape)`` (``input_shape``: pyramid level name ->
``ShapeSpec``; levels are named ``p3``..``p7`` for strides 8..128). Its ``forward``:

    losses, samples = head(features, images, gt_instances)

* ``features``: level name -> [B, C, H, W], the pyramid;
* ``images``: the model's padded ``ImageList`` (``image_sizes`` are the valid sizes);
* ``gt_instances``: per image ``Instances`` with ``gt_boxes`` (absolute xyxy in input
  pixels) and ``gt_classes`` (0..C-1);
* ``losses``: ``loss_{head.name}_*`` scalars, each already multiplied by the head's
  own relative weight (e.g. ATSS: classification 1, GIoU 2, centerness 1); the
  meta-architecture scales all of them by Co-DETR's ``lambda2`` times the decoder depth;
* ``samples``: :class:`PositiveSamples`, every candidate (anchor, point, sampled RoI) of
  the head with its assignment, from which the customized positive queries are made.
"""
from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple

import torch
from detectron2.layers import ShapeSpec
from detectron2.structures import Boxes, ImageList, Instances
from detectron2.utils.registry import Registry
from torch import Tensor, nn

__all__ = ["AUX_HEAD_REGISTRY", "AuxHead", "PositiveSamples", "build_aux_head"]

AUX_HEAD_REGISTRY = Registry("CODETR_AUX_HEAD")
AUX_HEAD_REGISTRY.__doc__ = """Co-DETR auxiliary heads (one-to-many assignment on the encoder pyramid);
built with ``build_aux_head(name, cfg, input_shape)``."""


@dataclass(eq=False)
class PositiveSamples:
    """A head's candidates and their assignment, per image (lists of length B).

    boxes: [n_b, 4] the candidate boxes, absolute xyxy in input pixels (an anchor, a
        point's box, a sampled RoI).
    labels: [n_b] long, the assigned class, ``num_classes`` for background.
    target_boxes: [n_b, 4] absolute xyxy, the ground-truth box each candidate is
        assigned to (meaningless for background).
    features: [n_b, C] the candidate's feature (the pyramid feature at an anchor's
        location, a pooled RoI feature).
    """

    boxes: List[Tensor]
    labels: List[Tensor]
    target_boxes: List[Tensor]
    features: List[Tensor]

    def __post_init__(self):
        lengths = {len(self.boxes), len(self.labels), len(self.target_boxes), len(self.features)}
        if len(lengths) != 1:
            raise ValueError(f"PositiveSamples: per-image lists of different lengths {sorted(lengths)}")
        for b, (box, lab, tgt, feat) in enumerate(zip(self.boxes, self.labels, self.target_boxes, self.features)):
            n = box.shape[0]
            if box.shape != (n, 4) or tgt.shape != (n, 4) or lab.shape != (n,) or feat.dim() != 2 or feat.shape[0] != n:
                raise ValueError(
                    f"PositiveSamples image {b}: boxes {tuple(box.shape)}, labels {tuple(lab.shape)}, "
                    f"target_boxes {tuple(tgt.shape)}, features {tuple(feat.shape)} do not line up"
                )


class AuxHead(nn.Module):
    """Base class of auxiliary heads; see the module docstring for the contract.

    Its constructor checks the pyramid and sets ``in_features``, ``in_channels`` (the
    common width of the levels), ``strides`` and ``num_classes``; error messages name the
    concrete head.
    """

    name: str = ""

    def __init__(self, *, input_shape: Dict[str, ShapeSpec], num_classes: int, in_features: Sequence[str]):
        super().__init__()
        head = type(self).__name__
        self.in_features = list(in_features)
        if not self.in_features:
            raise ValueError(f"{head}: in_features is empty")
        missing = [f for f in self.in_features if f not in input_shape]
        if missing:
            raise ValueError(f"{head}: levels {missing} not in the pyramid {sorted(input_shape)}")
        shapes = [input_shape[f] for f in self.in_features]
        channels = {s.channels for s in shapes}
        if len(channels) != 1:
            raise ValueError(f"{head}: all levels need the same channels, got {channels}")
        self.in_channels = channels.pop()
        self.strides = [int(s.stride) for s in shapes]
        self.num_classes = int(num_classes)

    @staticmethod
    def _pyramid_config(cfg, head_cfg, input_shape: Dict[str, ShapeSpec]) -> Dict:
        """The base constructor's arguments for a head's ``from_config``: its levels from
        its own node ``head_cfg``, the class count from the detector's."""
        return {
            "input_shape": input_shape,
            "num_classes": cfg.MODEL.DETR.NUM_CLASSES,
            "in_features": list(head_cfg.IN_FEATURES),
        }

    def _select_features(
        self, features: Dict[str, Tensor], images: ImageList, gt_instances: List[Instances]
    ) -> List[Tensor]:
        """The ``in_features`` maps, checked to be [B, in_channels, H, W] with one image and
        one ``Instances`` per batch entry."""
        head = type(self).__name__
        missing = [f for f in self.in_features if f not in features]
        if missing:
            raise KeyError(f"{head}: features lack levels {missing}; got {sorted(features)}")
        feats = [features[f] for f in self.in_features]
        batch = feats[0].shape[0]
        for name, x in zip(self.in_features, feats):
            if x.dim() != 4 or x.shape[0] != batch or x.shape[1] != self.in_channels:
                raise ValueError(
                    f"{head}: feature {name!r} has shape {tuple(x.shape)}, expected [{batch}, {self.in_channels}, H, W]"
                )
        if len(images.image_sizes) != batch or len(gt_instances) != batch:
            raise ValueError(
                f"{head}: {batch} feature maps, {len(images.image_sizes)} images, {len(gt_instances)} gt_instances"
            )
        return feats

    def _gt_boxes_and_classes(self, inst: Instances, like: Tensor) -> Tuple[Tensor, Tensor]:
        """An image's GT boxes [G, 4] (dtype and device of ``like``) and classes [G].

        An ``Instances`` without any field is an image without annotations (G = 0). The
        classes must lie in ``0..num_classes-1``: ``num_classes`` would silently become
        background.
        """
        head = type(self).__name__
        if not inst.get_fields():
            return like.new_zeros((0, 4)), torch.zeros(0, dtype=torch.long, device=like.device)
        if not (inst.has("gt_boxes") and inst.has("gt_classes")):
            raise ValueError(f"{head}: gt_instances need gt_boxes and gt_classes, got {list(inst.get_fields())}")
        boxes = inst.gt_boxes.tensor if isinstance(inst.gt_boxes, Boxes) else inst.gt_boxes
        classes = inst.gt_classes.to(like.device)
        if classes.numel() and (int(classes.min()) < 0 or int(classes.max()) >= self.num_classes):
            raise ValueError(
                f"{head}: gt_classes must lie in [0, {self.num_classes}), got "
                f"[{int(classes.min())}, {int(classes.max())}]"
            )
        return boxes.to(like), classes

    def forward(
        self, features: Dict[str, Tensor], images: ImageList, gt_instances: List[Instances]
    ) -> Tuple[Dict[str, Tensor], PositiveSamples]:
        raise NotImplementedError


def build_aux_head(name: str, cfg, input_shape: Dict[str, ShapeSpec]) -> AuxHead:
    """The head registered as ``name``, configured from ``cfg`` for the given pyramid."""
    head = AUX_HEAD_REGISTRY.get(name)(cfg, input_shape)
    if not isinstance(head, AuxHead):
        raise TypeError(f"auxiliary head {name!r} must be an AuxHead, got {type(head).__name__}")
    return head
