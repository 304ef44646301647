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
from typing import Dict, List, Tuple

from detectron2.layers import ShapeSpec
from detectron2.structures import ImageList, Instances
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
    """Base class of auxiliary heads; see the module docstring for the contract."""

    name: str = ""

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
