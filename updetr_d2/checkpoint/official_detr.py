"""The official DETR checkpoints (facebookresearch/detr) under this project's names: the
"detection" layout (plain ``DETR``), and the marker keys of the "panoptic" one
(``DETRsegm``, whose mask head :mod:`updetr_d2.methods.panoptic.convert` converts, calling
:func:`convert_official_detr` with ``prefix="detr."`` for the detector).

The official files are ``torch.save`` dicts ``{"model": state_dict, "optimizer": ...,
"lr_scheduler": ..., "epoch": ..., "args": argparse.Namespace}`` (the released model-zoo
files may hold less), read by
:func:`~updetr_d2.checkpoint.official_layouts.load_official_checkpoint`. The registry,
detection and loading of every official layout are :mod:`.official_layouts`, the pieces
the converters share :mod:`.official_helpers`; their public names are importable from
here too.

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
import logging
import re
from collections import OrderedDict
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from detectron2.data.datasets.builtin_meta import COCO_CATEGORIES
from torch import Tensor

# The generic names are re-exported: converters and tools import them from here.
from .official_helpers import (
    BACKBONE_PREFIX,
    backbone_block_counts,
    coco_detection_class_rows,
    convert_official_backbone,
    expected_backbone,
    gather_class_rows,
    is_backbone_key,
    official_dilation,
    official_resnet_depth,
    report_dropped,
    resnet_depth_opts,
)
from .official_layouts import (
    convert_official_for_model,
    convert_official_layout,
    detect_official_detr,
    load_official_checkpoint,
    looks_official,
    official_layout_config,
    official_layout_opts,
    official_layouts,
    official_state_dict,
    register_official_layout,
    register_official_markers,
    unexplained_keys_message,
)
from .torchvision_resnet import detectron2_name

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
    "register_official_markers",
    "unexplained_keys_message",
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
        if local.startswith(BACKBONE_PREFIX):
            rest = local[len(BACKBONE_PREFIX):]
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

    blocks, bottleneck = backbone_block_counts(backbone_keys)
    expected = ["backbone.backbone." + k for k in expected_backbone(blocks, bottleneck)]
    expected += list(_RENAMES.values()) + list(_CLASS_HEAD.values()) + _expected_transformer(converted)
    missing = [k for k in expected if k not in converted]
    missing += [f"backbone.backbone.res{i + 2}.* (no {prefix}{BACKBONE_PREFIX}layer{i + 1}.* keys)"
                for i, count in enumerate(blocks) if count == 0]
    if missing:
        raise ValueError(
            f"Incomplete official DETR state dict (prefix {prefix!r}): {len(missing)} project keys would "
            f"stay unfilled: " + ", ".join(missing)
        )
    return converted, unmapped


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
        return "projects/Panoptic/configs/detr_r50_panoptic_box_official.yaml"
    return "configs/detr/detr_r50_official.yaml"


# Panoptic files are told apart here; their converter is the panoptic method's.
register_official_markers("panoptic", PANOPTIC_MARKERS)
register_official_layout("detection", markers=DETECTION_MARKERS, config=_detection_config,
                         opts=resnet_depth_opts())(convert_detection_for_model)
