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
import logging
import os
import pickle
import re
from collections import OrderedDict
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from detectron2.data.datasets.builtin_meta import COCO_CATEGORIES
from torch import Tensor

from .resnet_conversion import ConversionReport
from .safe_load import UnsafeCheckpointError
from .torchvision_resnet import STAGE_RE, detectron2_name

__all__ = [
    "COCO_DETECTION_NO_OBJECT_ROW",
    "convert_detection_for_model",
    "convert_official_backbone",
    "convert_official_for_model",
    "convert_official_layout",
    "gather_class_rows",
    "is_backbone_key",
    "looks_official",
    "official_dilation",
    "official_layout_opts",
    "report_dropped",
    "resnet_depth_opts",
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

logger = logging.getLogger(__name__)

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
            if local == "class_embed.weight":
                dropped = sorted(set(range(no_object_row)) - set(class_rows))
                logger.info("official DETR class head %d -> %d rows: class c = official row of its category "
                            "id (%d rows gathered), no-object = official row %d; %d rows of unused ids dropped",
                            no_object_row + 1, len(class_rows) + 1, len(class_rows), no_object_row, len(dropped))
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


# --- shared pieces of the other official layouts' converters ------------------------------
def convert_official_backbone(state_dict: Mapping, prefix: str = "") -> Tuple[Dict[str, Tensor], List[str]]:
    """The torchvision ResNet under ``prefix + "backbone.0.body."`` renamed to this
    project's ``backbone.backbone.*`` (as :func:`convert_official_detr` does), and the
    project keys a complete ResNet of its shape would have that the file lacks."""
    converted: Dict[str, Tensor] = OrderedDict()
    local_keys = []
    for key, value in state_dict.items():
        if not isinstance(key, str) or not key.startswith(prefix + _BACKBONE) or not isinstance(value, Tensor):
            continue
        rest = key[len(prefix + _BACKBONE):]
        if rest.endswith("num_batches_tracked"):
            continue  # see the module docstring
        d2 = detectron2_name(rest)
        if d2 is not None:
            converted["backbone.backbone." + d2] = value
            local_keys.append(rest)
    blocks, bottleneck = _backbone_block_counts(local_keys)
    missing = ["backbone.backbone." + k for k in _expected_backbone(blocks, bottleneck)
               if "backbone.backbone." + k not in converted]
    missing += [f"backbone.backbone.res{i + 2}.* (no {prefix}{_BACKBONE}layer{i + 1}.* keys)"
                for i, count in enumerate(blocks) if count == 0]
    return converted, missing


def is_backbone_key(key, prefix: str = "") -> bool:
    """True for a key :func:`convert_official_backbone` converts (or drops: BN counters)."""
    if not isinstance(key, str) or not key.startswith(prefix + _BACKBONE):
        return False
    rest = key[len(prefix + _BACKBONE):]
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
    """An ``opts`` function for :func:`register_official_layout`: the yaml override that
    gives the config's ResNet the depth of the file's (none for 50)."""
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


def convert_detection_for_model(state_dict: Mapping, model_shapes: Mapping[str, Tuple[int, ...]],
                                layout: str = "detection") -> Dict[str, Tensor]:
    """An official (post- or pre-norm) DETR onto a ``Detr``, its class head gathered onto
    the model's classes (logged)."""
    head = model_shapes.get("heads.class_embed.weight")
    if head is None:
        raise ValueError(f"an official DETR {layout} checkpoint loads into a Detr (the model has no "
                         "heads.class_embed)")
    rows, no_object = _model_class_rows(state_dict["class_embed.weight"].shape[0], head[0] - 1)
    converted, unmapped = convert_official_detr(state_dict, class_rows=rows, no_object_row=no_object)
    if unmapped:
        raise ValueError(f"Cannot map {len(unmapped)} keys of the official DETR state dict: " + ", ".join(map(str, unmapped)))
    return converted


def _detection_config(state_dict: Optional[Mapping] = None, args=None) -> str:
    if official_dilation(args):
        return "configs/detr/detr_r50_dc5_official.py"
    head = None if state_dict is None else state_dict.get("class_embed.weight")
    if isinstance(head, Tensor) and head.shape[0] == 251:
        # The official panoptic recipe first trains a plain DETR on the 250 panoptic ids.
        return "projects/Panoptic/configs/detr_r50_panoptic_box.yaml"
    return "configs/detr/detr_r50_official.yaml"


# layout -> convert(state_dict, model shapes by key) -> the model's state dict, and the
# keys that identify it; methods add theirs (the panoptic mask head registers "panoptic"),
# so this module imports no method.
_LAYOUTS = {}
_MARKERS: Dict[str, Tuple[str, ...]] = {"panoptic": PANOPTIC_MARKERS}
# layout -> the config (path relative to the repository root, or a function of the state
# dict and the file's args giving one) whose model the converted weights load into, with
# the preprocessing the official weights expect.
_CONFIGS: Dict[str, object] = {}
# layout -> opts(state_dict, args, config) -> the overrides that config needs for this file.
_OPTS: Dict[str, Callable] = {}


def register_official_layout(layout: str, markers: Optional[Sequence[str]] = None, config=None,
                             opts: Optional[Callable] = None):
    """Decorator: ``convert(state_dict, model_shapes) -> Dict[str, Tensor]`` for the files
    :func:`detect_official_detr` calls ``layout``. ``markers``: keys a file of this layout
    has all of (needed for a new layout; a layout extending another lists the other's
    markers plus its own, so that the more specific one wins). ``config``: the config the
    converted model runs with, a path relative to the repository root or
    ``config(state_dict, args) -> path`` (both may be None: see
    :func:`official_layout_config`). ``opts``: ``opts(state_dict, args, config) -> [KEY,
    VALUE, ...]`` (or ``["key=value"]`` for a LazyConfig ``.py``), the overrides that make
    the config's model the file's (ResNet depth, feature levels ...).

    The converter raises ValueError listing what it cannot map; whatever it leaves out on
    purpose (duplicates, training-only tensors) it names with :func:`report_dropped`."""
    if markers is None and layout not in _MARKERS:
        raise ValueError(f"official layout {layout!r} needs its marker keys")

    def register(convert):
        if markers is not None:
            _MARKERS[layout] = tuple(markers)
        if config is not None:
            _CONFIGS[layout] = config
        if opts is not None:
            _OPTS[layout] = opts
        _LAYOUTS[layout] = convert
        return convert
    return register


def official_layouts() -> Dict[str, Tuple[str, ...]]:
    """Every registered layout and its marker keys."""
    return dict(_MARKERS)


def official_layout_config(layout: str, state_dict: Optional[Mapping] = None, args=None) -> Optional[str]:
    """The config registered with ``layout`` (a path relative to the repository root) for
    this file (``state_dict``, its ``args``; the layout's usual one without them), or None."""
    config = _CONFIGS.get(layout)
    return config(state_dict, args) if callable(config) else config


def official_layout_opts(layout: str, state_dict: Mapping, args=None, config: str = "") -> List[str]:
    """The config overrides the layout registered for this file (see :func:`register_official_layout`)."""
    opts = _OPTS.get(layout)
    return list(opts(state_dict, args, config or official_layout_config(layout, state_dict, args) or "")) if opts else []


def convert_official_layout(layout: str, state_dict: Mapping, model_shapes: Mapping[str, Tuple[int, ...]]
                            ) -> Dict[str, Tensor]:
    """``state_dict`` (of the official ``layout``) converted onto the model of
    ``model_shapes``; ValueError unless it fills every model tensor with the model's shape
    and nothing else."""
    if layout not in _LAYOUTS:
        raise ValueError(f"an official DETR-family {layout} checkpoint needs its method imported (updetr_d2.methods)")
    converted = _LAYOUTS[layout](state_dict, model_shapes)
    problems = [f"unfilled: {k} {tuple(v)}" for k, v in model_shapes.items() if k not in converted]
    problems += [f"not in the model: {k}" for k in converted if k not in model_shapes]
    problems += [f"shape: {k} {tuple(v.shape)} converted, {tuple(model_shapes[k])} in the model"
                 for k, v in converted.items() if k in model_shapes and tuple(v.shape) != tuple(model_shapes[k])]
    if problems:
        raise ValueError(
            f"the official {layout} checkpoint does not fit the model ({len(problems)} differences; its config: "
            f"{official_layout_config(layout, state_dict) or 'none registered'}): " + "; ".join(problems)
        )
    return converted


def looks_official(checkpoint) -> bool:
    """True for a file of the DETR family's official code: a torchvision backbone under
    ``backbone.0.`` (``detr.backbone.0.`` in DETRsegm), or an ``argparse.Namespace`` under
    ``"args"`` beside a DETR-like state dict (self-supervised ResNet files carry args too,
    without these keys)."""
    state_dict = official_state_dict(checkpoint)
    if not isinstance(state_dict, Mapping):
        return False
    keys = [k for k in state_dict if isinstance(k, str)]
    if any(k.startswith(("backbone.0.", "detr.backbone.0.")) for k in keys):
        return True
    args = checkpoint.get("args") if isinstance(checkpoint, Mapping) else None
    return isinstance(args, argparse.Namespace) and any(
        k.startswith(("transformer.", "class_embed", "query_embed.")) for k in keys)


def unexplained_keys_message(state_dict: Mapping, model_shapes: Optional[Mapping] = None) -> str:
    """Why no registered layout fits: the nearest layouts' missing marker keys, the file's
    keys under module names no layout has and, given the model's shapes, what the nearest
    layout's converter cannot map."""
    keys = [k for k in state_dict if isinstance(k, str)]
    present = set(keys)
    known = {_module_name(m) for markers in _MARKERS.values() for m in markers}
    nearest = sorted(_MARKERS.items(), key=lambda item: -sum(m in present for m in item[1]) / len(item[1]))[:2]
    lines = [f"nearest layout {name!r} lacks " + ", ".join(m for m in markers if m not in present)
             for name, markers in nearest]
    unknown = [k for k in keys if _module_name(k) not in known]
    lines.append(f"{len(unknown)} of its {len(keys)} keys are under modules no registered layout has"
                 + (": " + ", ".join(unknown[:60]) + (f" ... and {len(unknown) - 60} more" if len(unknown) > 60 else "")
                    if unknown else ""))
    if model_shapes is not None and nearest and nearest[0][0] in _LAYOUTS:
        try:
            _LAYOUTS[nearest[0][0]](state_dict, model_shapes)
        except (ValueError, KeyError) as e:
            lines.append(f"read as {nearest[0][0]!r}: {e}")
    return "; ".join(lines) + f" (registered layouts: {', '.join(sorted(_MARKERS))})"


def _module_name(key: str) -> str:
    """The module a key belongs to, down to its second name (``transformer.decoder``,
    ``class_embed``), numbers dropped: what tells the layouts apart."""
    parts = [p for p in key.split(".")[:-1] if not p.isdigit()]
    return ".".join(parts[:2]) or key


def _check_dilation(model, args) -> None:
    """An official file says whether its last ResNet stage is dilated (DC5); the model must
    run it the same way: torchvision dilates every res5 block but the first, whose 3x3
    conv keeps dilation 1 (Detectron2's RES5_DILATION dilates all of them)."""
    dilated = official_dilation(args)
    try:
        res5 = model.get_submodule("backbone.backbone.res5")
    except AttributeError:
        return
    found = [tuple(block.conv2.dilation) for block in res5 if hasattr(block, "conv2")]
    want = [(1, 1)] + [(2, 2) if dilated else (1, 1)] * (len(found) - 1)
    if dilated is not None and found != want:
        raise ValueError(
            f"the official file was trained with{'' if dilated else 'out'} DC5 (args.dilation={dilated}): its res5 "
            f"3x3 convs have dilations {want}, the model's {found}. "
            + ("Use configs/detr/detr_r50_dc5_official.py (the yaml RES5_DILATION 2 also dilates the first block)"
               if dilated else "Use a config without RES5_DILATION")
        )


def convert_official_for_model(checkpoint, model) -> Optional[Tuple[str, Dict[str, Tensor]]]:
    """``(layout, state dict)`` of a loaded official DETR-family file for ``model``, or None
    when the file is not from the official code. Raises ValueError naming what cannot be
    mapped (a file that looks official but matches no registered layout, a class count the
    head cannot be gathered onto, a model tensor left unfilled, a DC5 mismatch)."""
    state_dict = official_state_dict(checkpoint)
    layout = detect_official_detr(state_dict)
    if layout is None:
        if looks_official(checkpoint):
            shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
            raise ValueError("an official DETR-family checkpoint of no registered layout: "
                             + unexplained_keys_message(state_dict, shapes))
        return None
    args = checkpoint.get("args") if isinstance(checkpoint, Mapping) else None
    _check_dilation(model, args)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    return layout, convert_official_layout(layout, state_dict, shapes)


register_official_layout("detection", markers=DETECTION_MARKERS, config=_detection_config,
                         opts=resnet_depth_opts())(convert_detection_for_model)
