"""The official DETR checkpoints (facebookresearch/detr) under this project's names.

The official files are ``torch.save`` dicts ``{"model": state_dict, "optimizer": ...,
"lr_scheduler": ..., "epoch": ..., "args": argparse.Namespace}`` (the released model-zoo
files may hold less). :func:`load_official_checkpoint` reads them with
``torch.load(weights_only=True)`` and an allow-list of that one class, so nothing else
in the file can run code. :func:`convert_official_detr` renames the detector part of the
state dict; the panoptic mask head is converted by
:mod:`updetr_d2.methods.panoptic.convert`, which calls it with ``prefix="detr."``.

Official detector keys (``P`` = the prefix: "" for DETR, "detr." inside ``DETRsegm``) and
where they go::

    P backbone.0.body.<torchvision ResNet key>   -> backbone.backbone.<Detectron2 ResNet key>
                                                    (torchvision_resnet.detectron2_name:
                                                    conv1 -> stem.conv1, bn1 -> stem.conv1.norm,
                                                    layerN.B.bnK -> res(N+1).B.convK.norm,
                                                    downsample.0/1 -> shortcut / shortcut.norm)
    P input_proj.{weight,bias}                   -> input_proj.*
    P query_embed.weight                         -> query_generator.query_embed.weight
    P transformer.{encoder,decoder}.*            -> transformer.* (same names; attention
                                                    keeps nn.MultiheadAttention's stacked
                                                    in_proj_weight [3d, d] / in_proj_bias)
    P class_embed.{weight,bias}                  -> heads.class_embed.* (rows gathered)
    P bbox_embed.layers.{0,1,2}.{weight,bias}    -> heads.bbox_embed.layers.*

The backbone's position embedding (``backbone.1``, sine) has no parameters. The official
``FrozenBatchNorm2d`` holds weight, bias, running_mean and running_var as Detectron2's
does; neither has ``num_batches_tracked`` (a torchvision BatchNorm counter): if a file
has one it is dropped, as the official class itself drops it on load.

Class head: the official head has one row per dataset category id (0 .. max id) plus a
last no-object row: 92 rows for COCO detection (ids 0..90, no-object 91), 251 for COCO
panoptic (ids 0..249, no-object 250). Detectron2 numbers classes contiguously: row ``c``
of the converted head is official row ``class_rows[c]`` and its last row is official row
``no_object_row``. Rows of ids no class uses (COCO's unused ids) are dropped.
"""
import argparse
import contextlib
import os
import pickle
import re
from collections import OrderedDict
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from detectron2.data.datasets.builtin_meta import COCO_CATEGORIES
from torch import Tensor

from .resnet_conversion import ConversionReport
from .safe_load import UnsafeCheckpointError
from .torchvision_resnet import STAGE_RE, detectron2_name

__all__ = [
    "COCO_DETECTION_NO_OBJECT_ROW",
    "convert_official_for_model",
    "register_official_layout",
    "DETECTION_MARKERS",
    "PANOPTIC_MARKERS",
    "coco_detection_class_rows",
    "convert_official_detr",
    "detect_official_detr",
    "load_official_checkpoint",
    "official_resnet_depth",
    "official_layout_config",
    "official_layouts",
    "official_state_dict",
]

# Keys only a full official DETR state dict has together (a panoptic one under "detr.",
# beside its mask head). Other DETR-family files (Deformable DETR has per-layer
# class_embed.N and no transformer.decoder.norm) do not match.
DETECTION_MARKERS = (
    "backbone.0.body.conv1.weight",
    "input_proj.weight",
    "query_embed.weight",
    "transformer.decoder.norm.weight",
    "class_embed.weight",
    "bbox_embed.layers.0.weight",
)
PANOPTIC_MARKERS = tuple("detr." + k for k in DETECTION_MARKERS) + (
    "bbox_attention.q_linear.weight",
    "mask_head.lay1.weight",
)
# The official COCO detection head: class ids 0..90 (num_classes=91), then no-object.
COCO_DETECTION_NO_OBJECT_ROW = 91

_BACKBONE = "backbone.0.body."
_BN = ("weight", "bias", "running_mean", "running_var")
# Official transformer key (after "transformer.") -> the same name here: anything else
# under transformer. is a layout this project does not have, hence an unmapped key.
_TRANSFORMER_RE = re.compile(
    r"^(?:encoder\.layers\.\d+\.(?:self_attn\.(?:in_proj_weight|in_proj_bias|out_proj\.weight|out_proj\.bias)"
    r"|linear[12]\.(?:weight|bias)|norm[12]\.(?:weight|bias))"
    r"|decoder\.layers\.\d+\.(?:(?:self_attn|multihead_attn)\.(?:in_proj_weight|in_proj_bias|out_proj\.weight"
    r"|out_proj\.bias)|linear[12]\.(?:weight|bias)|norm[123]\.(?:weight|bias))"
    r"|(?:encoder|decoder)\.norm\.(?:weight|bias))$"
)
# Everything one transformer layer has (relative to its "layers.N.").
_ATTENTION = ("in_proj_weight", "in_proj_bias", "out_proj.weight", "out_proj.bias")
_FFN = ("linear1.weight", "linear1.bias", "linear2.weight", "linear2.bias")
_ENCODER_LAYER = tuple(f"self_attn.{a}" for a in _ATTENTION) + _FFN + tuple(
    f"norm{i}.{p}" for i in (1, 2) for p in ("weight", "bias"))
_DECODER_LAYER = tuple(f"{m}.{a}" for m in ("self_attn", "multihead_attn") for a in _ATTENTION) + _FFN + tuple(
    f"norm{i}.{p}" for i in (1, 2, 3) for p in ("weight", "bias"))
# Renames outside the backbone and the transformer (official, without prefix -> here).
_RENAMES = {
    "input_proj.weight": "input_proj.weight",
    "input_proj.bias": "input_proj.bias",
    "query_embed.weight": "query_generator.query_embed.weight",
    **{f"bbox_embed.layers.{i}.{p}": f"heads.bbox_embed.layers.{i}.{p}" for i in range(3) for p in ("weight", "bias")},
}
_CLASS_HEAD = {"class_embed.weight": "heads.class_embed.weight", "class_embed.bias": "heads.class_embed.bias"}


def coco_detection_class_rows() -> List[int]:
    """The 80 COCO thing ids in Detectron2's contiguous order (its COCO registration
    numbers the thing ids of ``COCO_CATEGORIES`` in order): the official head rows of
    Detectron2 classes 0..79."""
    return [c["id"] for c in COCO_CATEGORIES if c["isthing"]]


def detect_official_detr(state_dict: Mapping) -> Optional[str]:
    """The official layout of ``state_dict``, from its keys alone: the registered layout
    (:func:`register_official_layout`) whose marker keys are all there, the most specific
    one (most markers) when several are, or None (another model, or an incomplete one).
    Built in: "panoptic" (``DETRsegm``: the detector under ``detr.`` beside its mask head)
    and "detection" (plain ``DETR``). The layout says nothing of the class head's size (a
    panoptic box-stage DETR is "detection" with 251 rows)."""
    if not isinstance(state_dict, Mapping):
        return None
    keys = set(state_dict.keys())
    found = sorted(((len(m), layout) for layout, m in _MARKERS.items() if all(k in keys for k in m)), reverse=True)
    if len(found) > 1 and found[0][0] == found[1][0]:
        raise ValueError(f"the keys match the official layouts {found[0][1]!r} and {found[1][1]!r} equally well")
    return found[0][1] if found else None


def official_state_dict(checkpoint) -> Mapping:
    """The state dict of a loaded official file: its ``"model"`` entry, or the file
    itself when it is a bare state dict."""
    if isinstance(checkpoint, Mapping) and isinstance(checkpoint.get("model"), Mapping):
        return checkpoint["model"]
    return checkpoint


def _backbone_block_counts(keys) -> Tuple[Tuple[int, ...], bool]:
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
    local = [k[len(prefix + _BACKBONE):] for k in state_dict if k.startswith(prefix + _BACKBONE)]
    blocks, bottleneck = _backbone_block_counts(local)
    return ConversionReport(blocks_per_stage=blocks, bottleneck=bottleneck).depth


def _expected_backbone(blocks: Sequence[int], bottleneck: bool) -> List[str]:
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


def _expected_transformer(converted: Mapping) -> List[str]:
    """Keys a complete transformer has, given the layers that are there."""
    names = []
    for part, layer_keys in (("encoder", _ENCODER_LAYER), ("decoder", _DECODER_LAYER)):
        found = [int(m.group(1)) for k in converted
                 for m in [re.match(rf"^transformer\.{part}\.layers\.(\d+)\.", k)] if m]
        count = max(found) + 1 if found else 0
        names += [f"transformer.{part}.layers.{i}.{s}" for i in range(count) for s in layer_keys]
    # The decoder's final norm is always there; the encoder's only in pre-norm models,
    # so its absence is no gap (its halves must come together, though).
    names += ["transformer.decoder.norm.weight", "transformer.decoder.norm.bias"]
    if any(k.startswith("transformer.encoder.norm.") for k in converted):
        names += ["transformer.encoder.norm.weight", "transformer.encoder.norm.bias"]
    return names


def _gather_rows(name: str, value: Tensor, class_rows: Sequence[int], no_object_row: int) -> Tensor:
    rows = list(class_rows) + [no_object_row]
    # The no-object logit is the official head's last row: a head of another size was
    # trained on another dataset, whose ids the COCO rows would silently mislabel.
    if value.shape[0] != no_object_row + 1:
        raise ValueError(
            f"'{name}' has {value.shape[0]} rows; the class mapping expects {no_object_row + 1} "
            f"(category ids 0..{no_object_row - 1} and the no-object row {no_object_row}): "
            f"a head trained on another dataset cannot be mapped onto these classes"
        )
    bad = [r for r in rows[:-1] if not 0 <= r < no_object_row]
    if bad or len(set(rows)) != len(rows):
        raise ValueError(f"class_rows must be distinct category ids below {no_object_row}; got {bad or 'duplicates'}")
    return value.index_select(0, torch.as_tensor(rows, dtype=torch.long)).contiguous()


def convert_official_detr(
    state_dict: Mapping,
    *,
    class_rows: Sequence[int],
    no_object_row: int,
    prefix: str = "",
) -> Tuple[Dict[str, Tensor], List[str]]:
    """The official DETR detector keys under ``prefix`` renamed to this project's ``Detr``
    (layout in the module docstring), class head rows gathered.

    Returns ``(converted, unmapped)``: ``unmapped`` lists every key of ``state_dict`` this
    function did not convert (keys outside ``prefix`` included), in file order, for the
    caller to map (the mask head) or report; nothing is dropped silently except
    ``num_batches_tracked`` counters (see the module docstring).

    Raises ValueError when the detector is incomplete (listing the missing project keys
    with their official names) or its class head does not have ``no_object_row + 1``
    rows.
    """
    converted: Dict[str, Tensor] = OrderedDict()
    source: Dict[str, str] = {}  # project key -> official key, for the messages
    unmapped: List[str] = []
    backbone_keys: List[str] = []
    for key, value in state_dict.items():
        if not isinstance(key, str) or not key.startswith(prefix) or not isinstance(value, Tensor):
            unmapped.append(key)
            continue
        local = key[len(prefix):]
        new = None
        if local.startswith(_BACKBONE):
            rest = local[len(_BACKBONE):]
            if rest.endswith("num_batches_tracked"):
                continue  # see the module docstring
            d2 = detectron2_name(rest)
            if d2 is not None:
                new = "backbone.backbone." + d2
                backbone_keys.append(rest)
        elif local.startswith("transformer.") and _TRANSFORMER_RE.match(local[len("transformer."):]):
            new = local
        elif local in _RENAMES:
            new = _RENAMES[local]
        elif local in _CLASS_HEAD:
            new = _CLASS_HEAD[local]
            value = _gather_rows(key, value, class_rows, no_object_row)
        if new is None:
            unmapped.append(key)
            continue
        converted[new] = value
        source[new] = key

    blocks, bottleneck = _backbone_block_counts(backbone_keys)
    expected = ["backbone.backbone." + k for k in _expected_backbone(blocks, bottleneck)]
    expected += list(_RENAMES.values()) + list(_CLASS_HEAD.values()) + _expected_transformer(converted)
    missing = [k for k in expected if k not in converted]
    missing += [f"backbone.backbone.res{i + 2}.* (no {prefix}{_BACKBONE}layer{i + 1}.* keys)"
                for i, count in enumerate(blocks) if count == 0]
    if missing:
        raise ValueError(
            f"Incomplete official DETR state dict (prefix {prefix!r}): {len(missing)} project keys would "
            f"stay unfilled: " + ", ".join(missing)
        )
    return converted, unmapped


@contextlib.contextmanager
def _namespace_allowed():
    """``argparse.Namespace`` allowed in weights-only loads within the block."""
    serialization = torch.serialization
    if hasattr(serialization, "safe_globals"):  # torch >= 2.5: scoped to the block
        with serialization.safe_globals([argparse.Namespace]):
            yield
    elif hasattr(serialization, "add_safe_globals"):  # torch 2.4: process-wide, and only this class
        serialization.add_safe_globals([argparse.Namespace])
        yield
    else:
        raise RuntimeError(
            f"torch {torch.__version__} cannot allow argparse.Namespace in weights-only loads "
            "(needs torch >= 2.4)"
        )


def _refused_global(error: Exception) -> str:
    """The line of torch's weights-only error that names the refused global (its first
    lines are generic advice)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    named = [line for line in lines if "Unsupported global" in line or "GLOBAL" in line]
    line = (named or lines or [""])[0]
    return line.split("WeightsUnpickler error:")[-1].split(" Please use")[0].strip()


def load_official_checkpoint(path: str):
    """Read an official DETR file with ``torch.load(weights_only=True)`` (on CPU),
    allowing ``argparse.Namespace`` (its ``"args"``) and nothing else: tensors,
    containers and that one class. Not the unsafe switch: a file pickling any other
    object raises :class:`~updetr_d2.checkpoint.safe_load.UnsafeCheckpointError`."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Checkpoint '{path}' not found")
    try:
        with _namespace_allowed():
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise UnsafeCheckpointError(
            f"Refusing to load '{path}': beyond tensors, containers and argparse.Namespace it "
            f"pickles other Python objects ({_refused_global(e)}); an official DETR file does not. "
            f"Only for a file you trust, load it with torch.load(weights_only=False) yourself."
        ) from e


# --- automatic conversion on load (DetrCheckpointer) -------------------------------------
def _model_class_rows(official_rows: int, model_classes: int) -> Tuple[List[int], int]:
    """(class_rows, no_object_row) putting an official head of ``official_rows`` rows onto a
    model with ``model_classes`` classes: Detectron2's COCO detection (80) or panoptic (133)
    classes, or the official numbering itself (one class per official row)."""
    no_object = official_rows - 1
    if model_classes == no_object:
        return list(range(no_object)), no_object
    if model_classes == 80 and no_object == COCO_DETECTION_NO_OBJECT_ROW:
        return coco_detection_class_rows(), no_object
    if model_classes == len(COCO_CATEGORIES) and no_object == 250:
        return [c["id"] for c in COCO_CATEGORIES], no_object
    raise ValueError(
        f"the official class head has {official_rows} rows ({no_object} category ids + no-object) but the "
        f"model has {model_classes} classes: set the class count to 80 (COCO detection), 133 (COCO panoptic) "
        f"or {no_object} (the official numbering)"
    )


def _convert_detection(state_dict: Mapping, model_keys: Mapping[str, Tuple[int, ...]]) -> Dict[str, Tensor]:
    head = model_keys.get("heads.class_embed.weight")
    if head is None:
        raise ValueError("an official DETR checkpoint loads into a Detr (the model has no heads.class_embed)")
    rows, no_object = _model_class_rows(state_dict["class_embed.weight"].shape[0], head[0] - 1)
    converted, unmapped = convert_official_detr(state_dict, class_rows=rows, no_object_row=no_object)
    if unmapped:
        raise ValueError(f"Cannot map {len(unmapped)} keys of the official DETR state dict: " + ", ".join(map(str, unmapped)))
    return converted


# layout -> convert(state_dict, model shapes by key) -> the model's state dict, and the
# keys that identify it; methods add theirs (the panoptic mask head registers "panoptic"),
# so this module imports no method.
_LAYOUTS = {"detection": _convert_detection}
_MARKERS: Dict[str, Tuple[str, ...]] = {"detection": DETECTION_MARKERS, "panoptic": PANOPTIC_MARKERS}
# layout -> the config (path relative to the repository root) whose model the converted
# weights load into, with the preprocessing the official weights expect.
_CONFIGS: Dict[str, str] = {}


def register_official_layout(layout: str, markers: Optional[Sequence[str]] = None, config: Optional[str] = None):
    """Decorator: ``convert(state_dict, model_shapes) -> Dict[str, Tensor]`` for the files
    :func:`detect_official_detr` calls ``layout``. ``markers``: keys a file of this layout
    has all of (needed for a new layout; a layout extending another lists the other's
    markers plus its own, so that the more specific one wins). ``config``: the config the
    converted model runs with (:func:`official_layout_config`)."""
    if markers is None and layout not in _MARKERS:
        raise ValueError(f"official layout {layout!r} needs its marker keys")

    def register(convert):
        if markers is not None:
            _MARKERS[layout] = tuple(markers)
        if config is not None:
            _CONFIGS[layout] = config
        _LAYOUTS[layout] = convert
        return convert
    return register


def official_layouts() -> Dict[str, Tuple[str, ...]]:
    """Every registered layout and its marker keys."""
    return dict(_MARKERS)


def official_layout_config(layout: str) -> Optional[str]:
    """The config registered with ``layout`` (a path relative to the repository root), or None."""
    return _CONFIGS.get(layout)


def convert_official_for_model(checkpoint, model) -> Optional[Tuple[str, Dict[str, Tensor]]]:
    """``(layout, state dict)`` of a loaded official DETR file for ``model``, or None when
    the file is not an official DETR layout. Raises ValueError naming what cannot be mapped
    (an unknown layout variant, a class count the head cannot be gathered onto)."""
    state_dict = official_state_dict(checkpoint)
    layout = detect_official_detr(state_dict)
    if layout is None:
        return None
    if layout not in _LAYOUTS:
        raise ValueError(f"an official DETR {layout} checkpoint needs its method imported (updetr_d2.methods)")
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    return layout, _LAYOUTS[layout](state_dict, shapes)
