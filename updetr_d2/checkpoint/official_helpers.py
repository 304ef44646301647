"""Pieces the official DETR-family converters share.

* the torchvision ResNet backbone every official file holds under ``backbone.0.body.``
  (``detr.backbone.0.body.`` inside ``DETRsegm``): :func:`convert_official_backbone`,
  :func:`is_backbone_key`, its depth (:func:`official_resnet_depth`) and the config
  overrides that give a model that depth (:func:`resnet_depth_opts`);
* class heads indexed by dataset category id: :func:`coco_detection_class_rows`,
  :func:`gather_class_rows`;
* the file's ``args.dilation`` (DC5): :func:`official_dilation`;
* the log line naming what a converter leaves out on purpose: :func:`report_dropped`.

The registry and driver of the layouts are :mod:`.official_layouts`; the layouts
themselves :mod:`.official_detr`, :mod:`.official_deformable` and the methods' converters.

Backbone keys: the official ``FrozenBatchNorm2d`` holds weight, bias, running_mean and
running_var as Detectron2's does; neither has ``num_batches_tracked`` (a torchvision
BatchNorm counter): if a file has one it is dropped, as the official class itself drops it
on load.
"""
import logging
from collections import OrderedDict
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from detectron2.data.datasets.builtin_meta import COCO_CATEGORIES
from torch import Tensor

from .resnet_conversion import ConversionReport
from .torchvision_resnet import STAGE_RE, detectron2_name

__all__ = [
    "BACKBONE_PREFIX",
    "coco_detection_class_rows",
    "convert_official_backbone",
    "expected_backbone",
    "backbone_block_counts",
    "gather_class_rows",
    "is_backbone_key",
    "official_dilation",
    "official_resnet_depth",
    "report_dropped",
    "resnet_depth_opts",
]

logger = logging.getLogger(__name__)

# Where the official Backbone keeps its torchvision ResNet (backbone.1 is the position
# embedding, which has no parameters).
BACKBONE_PREFIX = "backbone.0.body."
_BN = ("weight", "bias", "running_mean", "running_var")


def coco_detection_class_rows() -> List[int]:
    """The 80 COCO thing ids in Detectron2's contiguous order (its COCO registration
    numbers the thing ids of ``COCO_CATEGORIES`` in order): the official head rows of
    Detectron2 classes 0..79."""
    return [c["id"] for c in COCO_CATEGORIES if c["isthing"]]


def backbone_block_counts(keys) -> Tuple[Tuple[int, ...], bool]:
    """(blocks per stage, bottleneck?) of the torchvision ResNet keys (no prefix)."""
    blocks: Dict[int, set] = {}
    bottleneck = False
    for key in keys:
        m = STAGE_RE.match(key)
        if m:
            blocks.setdefault(int(m.group(1)), set()).add(int(m.group(2)))
            bottleneck |= m.group(3).startswith("conv3.")
    return tuple(len(blocks.get(i, ())) for i in range(1, 5)), bottleneck


def official_resnet_depth(state_dict: Mapping, prefix: str = "") -> Optional[int]:
    """50, 101, ... of the official backbone (None if not a standard depth)."""
    local = [k[len(prefix + BACKBONE_PREFIX):] for k in state_dict if k.startswith(prefix + BACKBONE_PREFIX)]
    blocks, bottleneck = backbone_block_counts(local)
    return ConversionReport(blocks_per_stage=blocks, bottleneck=bottleneck).depth


def expected_backbone(blocks: Sequence[int], bottleneck: bool) -> List[str]:
    """Detectron2 ResNet keys (no prefix) a complete backbone of this shape has."""
    convs = (1, 2, 3) if bottleneck else (1, 2)
    names = ["stem.conv1.weight"] + [f"stem.conv1.norm.{p}" for p in _BN]
    for stage, count in enumerate(blocks, start=2):
        for b in range(count):
            for c in convs:
                names += [f"res{stage}.{b}.conv{c}.weight"] + [f"res{stage}.{b}.conv{c}.norm.{p}" for p in _BN]
            # Detectron2's ResNet has a projection shortcut where the width or stride
            # changes: the first block of every bottleneck stage; of basic stages, res3-5.
            if b == 0 and (bottleneck or stage > 2):
                names += [f"res{stage}.0.shortcut.weight"] + [f"res{stage}.0.shortcut.norm.{p}" for p in _BN]
    return names


def convert_official_backbone(state_dict: Mapping, prefix: str = "") -> Tuple[Dict[str, Tensor], List[str]]:
    """The torchvision ResNet under ``prefix + "backbone.0.body."`` renamed to this
    project's ``backbone.backbone.*`` (as :func:`~.official_detr.convert_official_detr`
    does), and the project keys a complete ResNet of its shape would have that the file
    lacks."""
    converted: Dict[str, Tensor] = OrderedDict()
    local_keys = []
    for key, value in state_dict.items():
        if not isinstance(key, str) or not key.startswith(prefix + BACKBONE_PREFIX) or not isinstance(value, Tensor):
            continue
        rest = key[len(prefix + BACKBONE_PREFIX):]
        if rest.endswith("num_batches_tracked"):
            continue  # see the module docstring
        d2 = detectron2_name(rest)
        if d2 is not None:
            converted["backbone.backbone." + d2] = value
            local_keys.append(rest)
    blocks, bottleneck = backbone_block_counts(local_keys)
    missing = ["backbone.backbone." + k for k in expected_backbone(blocks, bottleneck)
               if "backbone.backbone." + k not in converted]
    missing += [f"backbone.backbone.res{i + 2}.* (no {prefix}{BACKBONE_PREFIX}layer{i + 1}.* keys)"
                for i, count in enumerate(blocks) if count == 0]
    return converted, missing


def is_backbone_key(key, prefix: str = "") -> bool:
    """True for a key :func:`convert_official_backbone` converts (or drops: BN counters)."""
    if not isinstance(key, str) or not key.startswith(prefix + BACKBONE_PREFIX):
        return False
    rest = key[len(prefix + BACKBONE_PREFIX):]
    return rest.endswith("num_batches_tracked") or detectron2_name(rest) is not None


def report_dropped(layout: str, keys: Sequence[str], reason: str) -> None:
    """The log line that names official tensors a converter leaves out, and why."""
    if keys:
        logger.info("official %s checkpoint: %d tensors not converted (%s): %s", layout, len(keys), reason,
                    ", ".join(map(str, keys)))


def gather_class_rows(name: str, value: Tensor, rows: Sequence[int], expected_rows: int) -> Tensor:
    """Rows ``rows`` of a class head (or label embedding) with ``expected_rows`` rows, in that order."""
    if value.shape[0] != expected_rows:
        raise ValueError(f"'{name}' has {value.shape[0]} rows; the class mapping expects {expected_rows}: "
                         "a head trained on another dataset cannot be mapped onto these classes")
    return value.index_select(0, torch.as_tensor(list(rows), dtype=torch.long)).contiguous()


def resnet_depth_opts(prefix: str = ""):
    """An ``opts`` function for :func:`~.official_layouts.register_official_layout`: the
    yaml override that gives the config's ResNet the depth of the file's (none for 50)."""
    def opts(state_dict: Mapping, args=None, config: str = "") -> List[str]:
        depth = official_resnet_depth(state_dict, prefix)
        if depth is None or depth == 50:
            return []
        if config.endswith(".py"):
            # The LazyConfig DC5 model lists its stages: ResNet-101 has 23 res4 blocks.
            return {101: ["model.backbone.backbone.stages.2.num_blocks=23"],
                    152: ["model.backbone.backbone.stages.1.num_blocks=8",
                          "model.backbone.backbone.stages.2.num_blocks=36"]}.get(depth, [])
        return ["MODEL.RESNETS.DEPTH", str(depth)]
    return opts


def official_dilation(args) -> Optional[bool]:
    """The official files' ``args.dilation`` (DC5: the last ResNet stage dilated), or None
    when the file does not say (a bare state dict: the keys cannot tell)."""
    value = getattr(args, "dilation", None)
    return None if value is None else bool(value)
