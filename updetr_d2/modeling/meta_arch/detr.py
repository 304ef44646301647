"""DETR (Carion et al., 2020) as a Detectron2 meta-architecture.

The forward pass is split into phases that later methods override one at a time:
``preprocess_image`` -> ``build_queries`` -> ``decode`` (``extract_features`` and the
transformer) -> ``predict`` (heads) -> ``losses`` (training) or ``inference``. UP-DETR replaces
``build_queries`` and adds an output and a loss; DN-DETR and Co-DETR add query groups.
"""
import logging
import math
from typing import Dict, List, Sequence

import torch
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, build_backbone, detector_postprocess
from detectron2.structures import Boxes, ImageList, Instances
from torch import nn
from torchvision.ops import box_convert

from ...layers.position_encoding import PositionEmbeddingLearned, PositionEmbeddingSine
from ...layers.transformer import Transformer
from ..backbone import MaskedBackbone
from ..criterion import BoxL1GIoU, LabelCrossEntropy, SetCriterion
from ..heads import DetrPredictionHeads
from ..matcher import HungarianMatcher
from ..queries import LearnedQueries, QueryBundle

__all__ = ["Detr", "build_position_embedding", "build_transformer", "build_detr_criterion"]


def build_position_embedding(cfg):
    hidden_dim = cfg.MODEL.DETR.HIDDEN_DIM
    kind = cfg.MODEL.DETR.POSITION_EMBEDDING
    if kind == "sine":
        return PositionEmbeddingSine(hidden_dim // 2, normalize=True, scale=2 * math.pi)
    if kind == "learned":
        return PositionEmbeddingLearned(hidden_dim // 2)
    raise ValueError(f"MODEL.DETR.POSITION_EMBEDDING must be 'sine' or 'learned', got {kind!r}")


def build_transformer(cfg):
    d = cfg.MODEL.DETR
    return Transformer(
        d_model=d.HIDDEN_DIM,
        nhead=d.NHEADS,
        num_encoder_layers=d.ENC_LAYERS,
        num_decoder_layers=d.DEC_LAYERS,
        dim_feedforward=d.DIM_FEEDFORWARD,
        dropout=d.DROPOUT,
        normalize_before=d.PRE_NORM,
        return_intermediate_dec=True,
    )


def build_detr_criterion(cfg, num_classes: int = None, extra_terms=(), extra_weights=None):
    """DETR's matcher and losses from ``MODEL.DETR``; methods append their own terms."""
    d = cfg.MODEL.DETR
    num_classes = d.NUM_CLASSES if num_classes is None else num_classes
    matcher = HungarianMatcher(cost_class=d.CLASS_WEIGHT, cost_bbox=d.L1_WEIGHT, cost_giou=d.GIOU_WEIGHT)
    weights = {"loss_ce": d.CLASS_WEIGHT, "loss_bbox": d.L1_WEIGHT, "loss_giou": d.GIOU_WEIGHT}
    weights.update(extra_weights or {})
    return SetCriterion(
        matcher,
        loss_terms=[LabelCrossEntropy(num_classes, eos_coef=d.NO_OBJECT_WEIGHT), BoxL1GIoU(), *extra_terms],
        weight_dict=weights,
        aux_loss=d.DEEP_SUPERVISION,
    )


@META_ARCH_REGISTRY.register()
class Detr(nn.Module):
    """DETR: a CNN backbone, a transformer encoder-decoder over its last feature map, and
    set prediction trained with Hungarian matching."""

    @configurable
    def __init__(
        self,
        *,
        backbone: MaskedBackbone,
        position_embedding: nn.Module,
        transformer: Transformer,
        query_generator: nn.Module,
        criterion: SetCriterion,
        num_classes: int,
        hidden_dim: int,
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        aux_loss: bool = True,
        size_divisibility: int = 32,
    ):
        super().__init__()
        self.backbone = backbone
        self.position_embedding = position_embedding
        self.input_proj = nn.Conv2d(backbone.num_channels[-1], hidden_dim, kernel_size=1)
        self.transformer = transformer
        self.query_generator = query_generator
        self.heads = DetrPredictionHeads(hidden_dim, num_classes, aux_loss=aux_loss)
        self.criterion = criterion
        self.num_classes = num_classes
        self.size_divisibility = max(size_divisibility, backbone.size_divisibility)
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)

    @classmethod
    def from_config(cls, cfg):
        d = cfg.MODEL.DETR
        return {
            "backbone": MaskedBackbone(build_backbone(cfg), [d.IN_FEATURE]),
            "position_embedding": build_position_embedding(cfg),
            "transformer": build_transformer(cfg),
            "query_generator": LearnedQueries(d.NUM_OBJECT_QUERIES, d.HIDDEN_DIM),
            "criterion": build_detr_criterion(cfg),
            "num_classes": d.NUM_CLASSES,
            "hidden_dim": d.HIDDEN_DIM,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "aux_loss": d.DEEP_SUPERVISION,
            "size_divisibility": d.SIZE_DIVISIBILITY,
        }

    @property
    def device(self):
        return self.pixel_mean.device

    # --- phases -------------------------------------------------------------------
    def preprocess_image(self, batched_inputs: List[Dict]) -> ImageList:
        images = [(x["image"].to(self.device) - self.pixel_mean) / self.pixel_std for x in batched_inputs]
        return ImageList.from_tensors(images, self.size_divisibility)

    def extract_features(self, images: ImageList):
        """The last backbone level, projected to the transformer width, its padding
        mask and its position embedding."""
        feature, mask = self.backbone(images)[-1]
        pos = self.position_embedding(mask).to(feature.dtype)
        return self.input_proj(feature), mask, pos

    def build_queries(self, batched_inputs: List[Dict], images: ImageList) -> QueryBundle:
        return self.query_generator(len(images))

    def decode(self, images: ImageList, queries: QueryBundle) -> torch.Tensor:
        """Decoder states of every layer, ``[L, B, Q, d]``."""
        src, mask, pos = self.extract_features(images)
        hs, _ = self.transformer(
            src, mask, queries.query_pos, pos, tgt=queries.tgt, self_attn_mask=queries.self_attn_mask
        )
        return hs

    def predict(self, hs: torch.Tensor, queries: QueryBundle) -> Dict:
        """DETR's output dict (``pred_logits``, ``pred_boxes``, ``aux_outputs``) from decoder states."""
        return self.heads(hs)

    def forward_outputs(self, batched_inputs: List[Dict], images: ImageList) -> Dict:
        queries = self.build_queries(batched_inputs, images)
        return self.predict(self.decode(images, queries), queries)

    def forward(self, batched_inputs: List[Dict]):
        images = self.preprocess_image(batched_inputs)
        outputs = self.forward_outputs(batched_inputs, images)
        if self.training:
            return self.losses(outputs, batched_inputs, images)
        return self.inference(outputs, batched_inputs, images)

    # --- training -----------------------------------------------------------------
    def prepare_targets(self, batched_inputs: List[Dict], images: ImageList) -> List[Dict]:
        """Ground truth as the criterion wants it: labels and cxcywh boxes normalised by
        the (unpadded) image size."""
        targets = []
        for x, (h, w) in zip(batched_inputs, images.image_sizes):
            instances = x["instances"].to(self.device)
            scale = torch.tensor([w, h, w, h], dtype=torch.float32, device=self.device)
            boxes = box_convert(instances.gt_boxes.tensor / scale, "xyxy", "cxcywh")
            targets.append({"labels": instances.gt_classes, "boxes": boxes})
        return targets

    def losses(self, outputs: Dict, batched_inputs: List[Dict], images: ImageList) -> Dict:
        if any("instances" not in x for x in batched_inputs):
            raise ValueError(
                f"{type(self).__name__} needs 'instances' in every training input; is the "
                "dataset labelled and the mapper in training mode?"
            )
        return self.criterion(outputs, self.prepare_targets(batched_inputs, images))

    # --- inference ----------------------------------------------------------------
    def inference(self, outputs: Dict, batched_inputs: List[Dict], images: ImageList) -> List[Dict]:
        """One detection per query: its most likely real class (no-object excluded)."""
        scores, labels = outputs["pred_logits"].softmax(-1)[..., :-1].max(-1)
        return self.detections(outputs["pred_boxes"], scores, labels, batched_inputs, images)

    def detections(self, pred_boxes, scores, classes, batched_inputs, images: ImageList) -> List[Dict]:
        """``Instances`` per image, one per query (``pred_boxes`` normalised cxcywh, ``scores``
        and ``classes`` [B, Q]), in the size each input asks for."""
        results = []
        for i, (h, w) in enumerate(images.image_sizes):
            result = Instances((h, w))
            boxes = box_convert(pred_boxes[i], "cxcywh", "xyxy")
            result.pred_boxes = Boxes(boxes * torch.tensor([w, h, w, h], device=boxes.device))
            result.pred_boxes.clip((h, w))
            result.scores = scores[i]
            result.pred_classes = classes[i]
            results.append({"instances": self._to_input_size(result, batched_inputs[i])})
        return results

    @staticmethod
    def _to_input_size(result: Instances, batched_input: Dict) -> Instances:
        """Rescale to the size the input asks for (its original image size)."""
        h, w = result.image_size
        return detector_postprocess(result, batched_input.get("height", h), batched_input.get("width", w))

    # --- checkpoints ----------------------------------------------------------------
    # Keys only an UP-DETR pretraining checkpoint has, and the pretext's class head.
    PRETRAINING_ONLY_KEYS = ("query_generator.patch2query.", "feature_align.", "heads.class_embed.")

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        """Fine-tuning from an UP-DETR pretraining checkpoint: as the paper, everything
        loads except the patch projection, the feature head and the class head (the
        pretext's "patch" class means nothing to the detector); what was dropped is logged."""
        is_pretraining = any(k.startswith(prefix + "query_generator.patch2query.") for k in state_dict)
        if is_pretraining and not hasattr(self.query_generator, "patch2query"):
            dropped = [k for k in list(state_dict) if k[len(prefix):].startswith(self.PRETRAINING_ONLY_KEYS)]
            for key in dropped:
                del state_dict[key]
            logging.getLogger(__name__).info(
                "Initialising %s from an UP-DETR pretraining checkpoint; not loaded: %s",
                type(self).__name__, ", ".join(k[len(prefix):] for k in dropped),
            )
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
