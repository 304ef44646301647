"""The ``MaskHead`` plug-in: DETR's mask head on any of the project's set-prediction
detectors (``Detr``, ``DeformableDetr`` and the methods built on them).

* ``attach``: builds the head for the model's backbone (channels of ``in_features``) and
  transformer width, adds :class:`~.losses.MaskFocalDice` to the model's criterion and,
  for the mask stage, freezes every detector parameter;
* ``after_predict``: binds the head to this batch (keys of the attended memory level,
  that level's encoder input, the finer backbone levels) in a :class:`MaskContext` and
  puts it, with the last decoder layer's states, into the output dict; the loss then
  computes masks for the matched queries only;
* ``after_inference``: masks of the kept queries -> ``"panoptic_seg"`` (DETR's rules,
  :mod:`.postprocess`), and ``pred_masks`` of the detections.
"""
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from detectron2.config import configurable
from detectron2.data import MetadataCatalog
from torch import Tensor, nn

from ...modeling.plugins import PLUGIN_REGISTRY, DetectorPlugin
from .losses import MaskFocalDice
from .mask_head import MHAttentionMap, MaskHeadSmallConv
from .postprocess import instance_masks, panoptic_segmentation, select_queries

__all__ = ["MaskContext", "MaskHead", "thing_classes_from_metadata"]


@dataclass(eq=False)
class MaskContext:
    """The mask head bound to one batch: ``predict(queries, rows)`` gives the mask logits
    [N, h, w] (at ``stride``, over the padded canvas) of N decoder states, row n
    belonging to image ``rows[n]``."""

    head: "MaskHead"
    keys: Tensor  # [B, M, d/M, H, W]
    padding_mask: Tensor  # [B, H, W]
    source: Tensor  # [B, d, H, W]
    fpns: List[Tensor]
    image_sizes: List[Tuple[int, int]]
    stride: int

    def predict(self, queries: Tensor, rows: Tensor) -> Tensor:
        attention = self.head.bbox_attention(queries, self.keys[rows], self.padding_mask[rows])
        return self.head.mask_head(self.source, attention, self.fpns, rows)


def thing_classes_from_metadata(dataset_names: Sequence[str]) -> Optional[List[int]]:
    """Contiguous thing ids of the first dataset whose metadata has them, or None."""
    for name in dataset_names:
        mapping = MetadataCatalog.get(name).get("thing_dataset_id_to_contiguous_id", None)
        if mapping:
            return sorted(mapping.values())
    return None


@PLUGIN_REGISTRY.register()
class MaskHead(DetectorPlugin):
    @configurable
    def __init__(
        self,
        *,
        in_features: Sequence[str] = ("res4", "res3", "res2"),
        attention_stride: int = 32,
        num_heads: int = 8,
        scale_attention_maps: bool = True,
        freeze_detector: bool = False,
        mask_weight: float = 1.0,
        dice_weight: float = 1.0,
        panoptic_on: bool = True,
        instance_masks_on: bool = True,
        object_threshold: float = 0.85,
        min_segment_area: int = 4,
        thing_classes: Optional[Sequence[int]] = None,
    ):
        """``thing_classes``: contiguous ids of the thing classes (None: all)."""
        super().__init__()
        self.in_features = list(in_features)
        self.attention_stride = attention_stride
        self.num_heads = num_heads
        self.scale_attention_maps = scale_attention_maps
        self.freeze_detector = freeze_detector
        self.weights = {"loss_mask": mask_weight, "loss_dice": dice_weight}
        self.panoptic_on = panoptic_on
        self.instance_masks_on = instance_masks_on
        self.object_threshold = object_threshold
        self.min_segment_area = min_segment_area
        self.thing_classes = None if thing_classes is None else list(thing_classes)
        self.bbox_attention: Optional[MHAttentionMap] = None  # built by attach (needs the model)
        self.mask_head: Optional[MaskHeadSmallConv] = None

    @classmethod
    def from_config(cls, cfg):
        p = cfg.MODEL.PANOPTIC
        things = list(p.THING_CLASSES) or thing_classes_from_metadata(cfg.DATASETS.TRAIN)
        return {
            "in_features": p.IN_FEATURES,
            "attention_stride": p.ATTENTION_STRIDE,
            "num_heads": p.NUM_HEADS,
            "scale_attention_maps": p.SCALE_ATTENTION_MAPS,
            "freeze_detector": p.FREEZE_DETECTOR,
            "mask_weight": p.MASK_WEIGHT,
            "dice_weight": p.DICE_WEIGHT,
            "panoptic_on": p.PANOPTIC_ON,
            "instance_masks_on": p.INSTANCE_MASKS_ON,
            "object_threshold": p.OBJECT_THRESHOLD,
            "min_segment_area": p.MIN_SEGMENT_AREA,
            "thing_classes": things,
        }

    # --- building -------------------------------------------------------------------
    def attach(self, model: nn.Module) -> None:
        shapes = model.backbone.backbone.output_shape()
        missing = [f for f in self.in_features if f not in shapes]
        if missing:
            raise ValueError(
                f"MODEL.PANOPTIC.IN_FEATURES {self.in_features}: the backbone gives no {missing} (it gives "
                f"{sorted(shapes)}); add them to its out features (e.g. MODEL.RESNETS.OUT_FEATURES)"
            )
        strides = list(model.memory_strides)
        if self.attention_stride not in strides:
            raise ValueError(
                f"MODEL.PANOPTIC.ATTENTION_STRIDE={self.attention_stride}: the encoder memory has levels of "
                f"strides {strides}; choose one of them"
            )
        self.level = strides.index(self.attention_stride)
        self.stride = shapes[self.in_features[-1]].stride
        hidden_dim = model.transformer.d_model
        self.bbox_attention = MHAttentionMap(hidden_dim, hidden_dim, self.num_heads,
                                             scale_to_positions=self.scale_attention_maps)
        self.mask_head = MaskHeadSmallConv(
            hidden_dim + self.num_heads, [shapes[f].channels for f in self.in_features], hidden_dim
        )
        self.to(model.device)
        model.criterion.add_loss_term(MaskFocalDice(), self.weights)
        if self.freeze_detector:
            own = {id(p) for p in self.parameters()}
            for param in model.parameters():
                if id(param) not in own:
                    param.requires_grad_(False)

    # --- training -------------------------------------------------------------------
    def bind(self, state) -> MaskContext:
        memory = state.memory
        if memory.sources is None:
            raise ValueError(f"{type(self).__name__} needs the encoder inputs (EncoderMemory.sources)")
        return MaskContext(
            head=self,
            keys=self.bbox_attention.keys(memory.level_maps()[self.level]),
            padding_mask=memory.level_padding_masks()[self.level],
            source=memory.sources[self.level],
            fpns=[state.backbone_outputs[f] for f in self.in_features],
            image_sizes=list(state.images.image_sizes),
            stride=self.stride,
        )

    def after_predict(self, model, state) -> None:
        state.outputs["mask_queries"] = state.decoded.hs[-1]
        state.outputs["mask_context"] = self.bind(state)

    # --- inference ------------------------------------------------------------------
    def _is_thing(self, num_classes: int, device) -> Tensor:
        if self.thing_classes is None:
            return torch.ones(num_classes, dtype=torch.bool, device=device)
        is_thing = torch.zeros(num_classes, dtype=torch.bool, device=device)
        is_thing[torch.as_tensor(self.thing_classes, dtype=torch.long, device=device)] = True
        return is_thing

    @torch.no_grad()
    def after_inference(self, model, state, results: List[Dict]) -> None:
        if not (self.panoptic_on or self.instance_masks_on):
            return
        outputs = state.outputs
        context: MaskContext = outputs["mask_context"]
        logits = outputs["pred_logits"]
        sigmoid = logits.shape[-1] == model.num_classes  # focal-loss models have no no-object column
        is_thing = self._is_thing(model.num_classes, logits.device)
        for i, result in enumerate(results):
            image_size = tuple(state.images.image_sizes[i])
            batched = state.batched_inputs[i]
            output_size = (batched.get("height", image_size[0]), batched.get("width", image_size[1]))
            wanted = {}  # output -> the queries it needs masks of
            if self.panoptic_on:
                keep, scores, labels = select_queries(logits[i], sigmoid=sigmoid, threshold=self.object_threshold)
                wanted["panoptic"] = keep.nonzero()[:, 0]
            if self.instance_masks_on and "instances" in result:
                wanted["instances"] = result["instances"].query_index
            if not wanted:
                continue
            # each query's mask once, whichever outputs need it
            queries, inverse = torch.cat(list(wanted.values())).unique(return_inverse=True)
            if len(queries):
                mask_logits = context.predict(outputs["mask_queries"][i, queries], torch.full_like(queries, i))
            else:  # nothing kept and nothing detected
                mask_logits = logits.new_zeros((0, *context.fpns[-1].shape[-2:]))
            picked = {name: mask_logits[index]
                      for name, index in zip(wanted, inverse.split([len(q) for q in wanted.values()]))}
            if "panoptic" in picked:
                kept = wanted["panoptic"]
                result["panoptic_seg"] = panoptic_segmentation(
                    picked["panoptic"], scores[kept], labels[kept], is_thing, image_size=image_size,
                    stride=context.stride, output_size=output_size, min_area=self.min_segment_area,
                )
            if "instances" in picked:
                result["instances"].pred_masks = instance_masks(
                    picked["instances"], image_size, context.stride, output_size)
