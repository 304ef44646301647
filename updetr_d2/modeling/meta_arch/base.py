"""What every DETR-family meta-architecture here shares: the named phases of the forward
pass, input normalisation and batching, the ground truth in the criterion's format,
loss routing, plug-ins, checkpoint hand-off rules and one detection per kept query.

Phases (each an overridable method; :class:`DetectorState` carries their results)::

    preprocess_image -> backbone_features -> encode -> [plugins.after_encode]
      -> build_queries -> decode -> predict -> [plugins.after_predict]
      -> losses (training: routed set losses + plug-in losses) | inference

* ``backbone_features`` fills ``state.backbone_outputs`` (every output of the
  Detectron2 backbone, e.g. ``res2``..``res5``, for a mask head) and ``state.features``
  (the levels the transformer reads, with padding masks);
* ``encode`` returns an :class:`~updetr_d2.layers.EncoderMemory` (memory, per-level
  spatial shapes and padding masks) for encoder-side losses;
* ``build_queries`` returns a :class:`~updetr_d2.modeling.queries.QueryBundle`; its
  ``meta["loss_routes"]`` says which part of the outputs is supervised how (denoising
  groups, two-stage proposals, positive queries), so no meta-architecture needs to know
  which generator made the queries;
* ``decode`` returns :class:`DecoderStates` (every decoder layer's output);
* ``predict`` turns them into DETR's output dict (``pred_logits``, ``pred_boxes``,
  ``aux_outputs``).

An encoder-only detector (``encoder_only=True``: encoder pretraining) keeps the backbone,
input projection and encoder, drops the decoder side (``drop_decoder_side``), and trains
only its plug-ins' losses; the plug-ins run the encoder themselves on whatever view they
need (``encode_images``), so its checkpoint keys are exactly the detector's.
"""
import functools
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from detectron2.modeling import detector_postprocess
from detectron2.structures import Boxes, ImageList, Instances
from torch import Tensor, nn
from torchvision.ops import box_convert

from ...layers.encoder_memory import EncoderMemory
from ...layers.precision import float32_region
from ..criterion import SetCriterion
from ..queries import QueryBundle

__all__ = [
    "DecoderStates",
    "DetectorState",
    "SetPredictionDetector",
    "register_checkpoint_rule",
]


@dataclass(eq=False)
class DecoderStates:
    """hs: [L, B, Q, d], every decoder layer's output; references: [L, B, Q, 2|4], the
    reference each layer started from (deformable decoders; None for DETR)."""

    hs: Tensor
    references: Optional[Tensor] = None


@dataclass(eq=False)
class DetectorState:
    """What the phases of one forward pass produce, in order; plug-ins read it."""

    batched_inputs: List[Dict]
    images: ImageList
    make_targets: Callable[[], List[Dict]] = field(repr=False, default=None)
    backbone_outputs: Dict[str, Tensor] = None
    features: List[Tuple[Tensor, Tensor]] = None
    memory: EncoderMemory = None
    queries: QueryBundle = None
    decoded: DecoderStates = None
    outputs: Dict = None
    extras: Dict = field(default_factory=dict)
    _targets: Optional[List[Dict]] = field(default=None, repr=False)

    @property
    def targets(self) -> List[Dict]:
        """The ground truth in the criterion's format, computed once on first use (an
        unlabeled pretraining batch never asks for it)."""
        if self._targets is None:
            self._targets = self.make_targets()
        return self._targets


# Checkpoint hand-off rules: functions ``rule(model, state_dict, prefix)`` that edit a
# checkpoint's state dict in place before it loads into a set-prediction detector (e.g.
# fine-tuning from a pretraining checkpoint drops the pretext's heads). Methods register
# their own, so the base class need not know any method.
_CHECKPOINT_RULES: List[Callable] = []


def register_checkpoint_rule(rule: Callable) -> Callable:
    """Register ``rule(model, state_dict, prefix)``; usable as a decorator."""
    if rule not in _CHECKPOINT_RULES:
        _CHECKPOINT_RULES.append(rule)
    return rule


class SetPredictionDetector(nn.Module):
    def __init_subclass__(cls, **kwargs):
        # Plug-ins are attached (``plugin.attach(model)``: loss terms added to the
        # criterion, parameters frozen, ...) once the *whole* model exists, i.e. after the
        # most derived ``__init__`` returns, whichever route built it (yaml, LazyConfig,
        # direct construction); a subclass's modules exist only after its ``__init__``.
        super().__init_subclass__(**kwargs)
        init = cls.__init__

        @functools.wraps(init)
        def __init__(self, *args, **kw):
            init(self, *args, **kw)
            if type(self) is cls:
                for plugin in self.plugins:
                    if hasattr(plugin, "attach"):
                        plugin.attach(self)

        cls.__init__ = __init__

    def __init__(
        self,
        *,
        backbone: nn.Module,
        criterion: SetCriterion,
        num_classes: int,
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        size_divisibility: int = 32,
        plugins: Sequence[nn.Module] = (),
        encoder_only: bool = False,
    ):
        super().__init__()
        self.backbone = backbone
        self.criterion = criterion
        self.num_classes = num_classes
        self.size_divisibility = max(size_divisibility, getattr(backbone, "size_divisibility", 0))
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)
        self.plugins = nn.ModuleList(plugins)
        self.encoder_only = encoder_only
        if encoder_only and not self.plugins:
            raise ValueError(
                "an encoder-only model (MODEL.DETR.ENCODER_ONLY) trains only plug-in losses; give it a "
                "plug-in that trains the encoder, e.g. MODEL.DETR.PLUGINS: [\"EncoderPretext\"]"
            )

    @property
    def device(self):
        return self.pixel_mean.device

    @property
    def memory_strides(self) -> List[int]:
        """Input pixels per token of every level of the encoder memory."""
        raise NotImplementedError

    def drop_decoder_side(self, names: Sequence[str]) -> None:
        """Remove the modules (dotted names) that only the decoder side uses, so an
        encoder-only model neither holds nor checkpoints them."""
        for name in names:
            parent, _, attr = name.rpartition(".")
            owner = self.get_submodule(parent) if parent else self
            if getattr(owner, attr, None) is not None:
                setattr(owner, attr, None)

    # --- the phases -----------------------------------------------------------------
    def forward(self, batched_inputs: List[Dict]):
        if self.encoder_only:
            return self.encoder_only_losses(batched_inputs)
        state = self.run_phases(batched_inputs)
        if self.training:
            return self.losses(state)
        results = self.inference(state)
        for plugin in self.plugins:
            if hasattr(plugin, "after_inference"):
                plugin.after_inference(self, state, results)
        return results

    def run_phases(self, batched_inputs: List[Dict]) -> DetectorState:
        """Every phase up to the output dict; returns the state (``state.outputs``)."""
        images = self.preprocess_image(batched_inputs)
        state = DetectorState(batched_inputs, images, lambda: self.prepare_targets(batched_inputs, images))
        state.backbone_outputs, state.features = self.backbone_features(state)
        state.memory = self.encode(state)
        for plugin in self.plugins:
            plugin.after_encode(self, state)
        state.queries = self.build_queries(state)
        state.decoded = self.decode(state, state.queries)
        state.outputs = self.predict(state, state.decoded, state.queries)
        for plugin in self.plugins:
            plugin.after_predict(self, state)
        return state

    def encode_images(self, images: Sequence[Tensor]) -> DetectorState:
        """preprocess -> backbone -> encode for other images than the inputs' (e.g. a
        corrupted view of them, CHW in pixel units); no plug-in, no query."""
        batched = [{"image": image} for image in images]
        state = DetectorState(batched, self.preprocess_image(batched))
        state.backbone_outputs, state.features = self.backbone_features(state)
        state.memory = self.encode(state)
        return state

    def encoder_only_losses(self, batched_inputs: List[Dict]) -> Dict[str, Tensor]:
        """An encoder-only model's forward: its plug-ins' losses; each runs the encoder on
        the view it needs in ``after_encode`` (``state.memory`` is None here)."""
        if not self.training:
            raise RuntimeError(
                f"this {type(self).__name__} is encoder-only (pretraining): it has no decoder and gives no "
                "detections; load its checkpoint into the detector (MODEL.WEIGHTS) to detect"
            )
        state = DetectorState(batched_inputs, None)
        for plugin in self.plugins:
            plugin.after_encode(self, state)
        losses: Dict[str, Tensor] = {}
        for plugin in self.plugins:
            add_losses(losses, plugin.losses(self, state), type(plugin).__name__)
        return losses

    def preprocess_image(self, batched_inputs: List[Dict]) -> ImageList:
        images = [(x["image"].to(self.device) - self.pixel_mean) / self.pixel_std for x in batched_inputs]
        return ImageList.from_tensors(images, self.size_divisibility)

    def backbone_features(self, state: DetectorState):
        """(every backbone output by name, the transformer's levels as (feature, mask))."""
        return self.backbone.forward_all(state.images)

    def encode(self, state: DetectorState) -> EncoderMemory:
        raise NotImplementedError

    def build_queries(self, state: DetectorState, **context) -> QueryBundle:
        """The query generator's bundle, given ``context`` (e.g. the encoder's selected
        proposals) and, in training, the targets (denoising queries are made from them)."""
        if self.training:
            context["targets"] = state.targets
        return self.query_generator(len(state.images), **context)

    def decode(self, state: DetectorState, queries: QueryBundle) -> DecoderStates:
        raise NotImplementedError

    def predict(self, state: DetectorState, decoded: DecoderStates, queries: QueryBundle) -> Dict:
        raise NotImplementedError

    def decode_and_predict(self, state: DetectorState, queries: QueryBundle) -> Dict:
        """An extra decoder pass over the same memory (e.g. Co-DETR's positive queries):
        the output dict of ``queries``."""
        return self.predict(state, self.decode(state, queries), queries)

    # --- training -------------------------------------------------------------------
    def prepare_targets(self, batched_inputs: List[Dict], images: ImageList) -> List[Dict]:
        """Ground truth as the criterion wants it: labels and cxcywh boxes normalised by
        the (unpadded) image size, and the instances' ``gt_masks`` (Detectron2's
        ``BitMasks`` or ``PolygonMasks``, as they come) under ``masks`` when they have
        them (mask losses rasterise only the matched ones)."""
        if any("instances" not in x for x in batched_inputs):
            raise ValueError(
                f"{type(self).__name__} needs 'instances' in every training input; is the "
                "dataset labelled and the mapper in training mode?"
            )
        targets = []
        for x, (h, w) in zip(batched_inputs, images.image_sizes):
            instances = x["instances"].to(self.device)
            scale = torch.tensor([w, h, w, h], dtype=torch.float32, device=self.device)
            boxes = box_convert(instances.gt_boxes.tensor / scale, "xyxy", "cxcywh")
            target = {"labels": instances.gt_classes, "boxes": boxes}
            if instances.has("gt_masks"):
                target["masks"] = instances.gt_masks
            targets.append(target)
        return targets

    def losses(self, state: DetectorState) -> Dict[str, Tensor]:
        losses = self.set_losses(state.outputs, state.targets, state.queries)
        for plugin in self.plugins:
            add_losses(losses, plugin.losses(self, state), type(plugin).__name__)
        return losses

    @float32_region  # matching and losses of every route in float32 under mixed precision
    def set_losses(self, outputs: Dict, targets: List[Dict], queries: QueryBundle) -> Dict[str, Tensor]:
        """The criterion's losses, routed by ``queries.meta["loss_routes"]``: each route
        takes its part of the outputs (``split``) and supervises it its own way
        (``losses``); what is left is matched to the targets as usual."""
        routed = []
        for route in queries.meta.get("loss_routes", ()):
            own, outputs = route.split(outputs)
            routed.append((route, own))
        losses = {} if outputs is None else self.criterion(outputs, targets)
        for route, own in routed:
            add_losses(losses, route.losses(self.criterion, own, targets), type(route).__name__)
        return losses

    def training_hooks(self) -> List:
        """Detectron2 hooks the training loops register for this model (its plug-ins')."""
        return [hook for plugin in self.plugins for hook in plugin.training_hooks()]

    # --- inference ------------------------------------------------------------------
    def inference(self, state: DetectorState) -> List[Dict]:
        raise NotImplementedError

    def detections(
        self, pred_boxes, scores, classes, batched_inputs, images: ImageList, query_index: Tensor = None
    ) -> List[Dict]:
        """``Instances`` per image, one per kept query (``pred_boxes`` normalised cxcywh
        [B, K, 4], ``scores`` and ``classes`` [B, K]), in the size each input asks for.
        ``query_index`` [B, K]: the query each detection came from (default: detection k
        is query k), kept as the field ``query_index`` for heads that add per-query
        outputs (masks)."""
        if query_index is None:
            query_index = torch.arange(scores.shape[1], device=scores.device).expand_as(scores)
        results = []
        for i, (h, w) in enumerate(images.image_sizes):
            result = Instances((h, w))
            boxes = box_convert(pred_boxes[i], "cxcywh", "xyxy")
            result.pred_boxes = Boxes(boxes * torch.tensor([w, h, w, h], device=boxes.device))
            result.pred_boxes.clip((h, w))
            result.scores = scores[i]
            result.pred_classes = classes[i]
            result.query_index = query_index[i]
            results.append({"instances": self._to_input_size(result, batched_inputs[i])})
        return results

    @staticmethod
    def _to_input_size(result: Instances, batched_input: Dict) -> Instances:
        """Rescale to the size the input asks for (its original image size)."""
        h, w = result.image_size
        return detector_postprocess(result, batched_input.get("height", h), batched_input.get("width", w))

    # --- checkpoints ----------------------------------------------------------------
    def apply_checkpoint_rules(self, state_dict, prefix: str = "") -> None:
        """Edit ``state_dict`` in place with every registered hand-off rule (idempotent:
        the checkpointer applies them before its shape checks, ``load_state_dict`` again)."""
        for rule in _CHECKPOINT_RULES:
            rule(self, state_dict, prefix)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        self.apply_checkpoint_rules(state_dict, prefix)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def add_losses(losses: Dict[str, Tensor], extra: Dict[str, Tensor], source: str) -> None:
    """Merge ``extra`` into ``losses``; two contributions of one key are a bug, not a sum."""
    clash = sorted(set(losses) & set(extra))
    if clash:
        raise ValueError(f"{source} returned loss keys the model already has: {clash}")
    losses.update(extra)
