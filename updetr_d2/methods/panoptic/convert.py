"""The official DETR panoptic checkpoints (``DETRsegm``) as this project's ``Detr`` with
the ``MaskHead`` plug-in.

Official keys and where they go (``i`` = the plug-in's index in ``model.plugins``)::

    detr.<detector key>                          -> as a plain DETR (checkpoint.official_detr),
                                                    class head gathered to the 133 classes
    bbox_attention.{q_linear,k_linear}.*         -> plugins.i.bbox_attention.*
    mask_head.{lay1..5,gn1..5,out_lay,adapter1..3}.*  -> plugins.i.mask_head.*

The mask head's modules have the official names (:mod:`.mask_head`), so past the prefix
it is a pure rename. Class head: the official one has 251 rows indexed by COCO panoptic
category id (1..200 with gaps; row 250 is no-object). Detectron2's "standard" COCO
panoptic registration numbers the 133 categories of ``COCO_CATEGORIES`` in order (things
then stuff), so contiguous class ``c`` is official row ``COCO_CATEGORIES[c]["id"]``.
"""
from typing import Dict, List, Mapping

from detectron2.data.datasets.builtin_meta import COCO_CATEGORIES
from torch import Tensor

from ...checkpoint.official_detr import convert_official_detr
from ...checkpoint.official_helpers import resnet_depth_opts
from ...checkpoint.official_layouts import register_official_layout

__all__ = [
    "COCO_PANOPTIC_CLASS_ROWS",
    "COCO_PANOPTIC_NO_OBJECT_ROW",
    "MASK_HEAD_KEYS",
    "convert_official_detr_panoptic",
]

COCO_PANOPTIC_CLASS_ROWS = tuple(c["id"] for c in COCO_CATEGORIES)
# The official panoptic head: num_classes=250 "large enough to hold max_obj_id + 1", so
# 251 rows with no-object last.
COCO_PANOPTIC_NO_OBJECT_ROW = 250
# Every parameter of the official bbox_attention and mask_head (and of MHAttentionMap /
# MaskHeadSmallConv here): the whole list is required, and nothing else is accepted.
MASK_HEAD_KEYS = tuple(
    [f"bbox_attention.{m}.{p}" for m in ("q_linear", "k_linear") for p in ("weight", "bias")]
    + [f"mask_head.{m}.{p}"
       for m in [f"lay{i}" for i in range(1, 6)] + [f"gn{i}" for i in range(1, 6)] + ["out_lay"]
       + [f"adapter{i}" for i in range(1, 4)]
       for p in ("weight", "bias")]
)


def convert_official_detr_panoptic(state_dict: Mapping, plugin_index: int = 0) -> Dict[str, Tensor]:
    """An official ``DETRsegm`` state dict -> this project's ``Detr`` + ``MaskHead`` at
    ``model.plugins[plugin_index]`` (133 contiguous classes + no-object).

    Raises ValueError listing every key it cannot map, or every project key the file
    leaves unfilled (the detector's, via :func:`convert_official_detr`, and the mask
    head's)."""
    if not isinstance(plugin_index, int) or plugin_index < 0:
        raise ValueError(f"plugin_index must be an index into model.plugins (>= 0), got {plugin_index!r}")
    converted, rest = convert_official_detr(
        state_dict, class_rows=COCO_PANOPTIC_CLASS_ROWS, no_object_row=COCO_PANOPTIC_NO_OBJECT_ROW,
        prefix="detr.",
    )
    allowed = set(MASK_HEAD_KEYS)
    unmapped: List[str] = []
    for key in rest:
        if key in allowed and isinstance(state_dict[key], Tensor):
            converted[f"plugins.{plugin_index}.{key}"] = state_dict[key]
        else:
            unmapped.append(key)
    if unmapped:
        raise ValueError(
            f"Cannot map {len(unmapped)} keys of the official DETR panoptic state dict onto Detr + "
            f"MaskHead: " + ", ".join(map(str, unmapped))
        )
    missing = [k for k in MASK_HEAD_KEYS if k not in state_dict]
    if missing:
        raise ValueError(
            f"Incomplete official DETR panoptic state dict: the mask head lacks {len(missing)} keys, so "
            + ", ".join(f"plugins.{plugin_index}.{k}" for k in missing) + " would stay unfilled"
        )
    return converted


@register_official_layout("panoptic", config="projects/Panoptic/configs/detr_r50_panoptic_mask_official.yaml",
                          opts=resnet_depth_opts("detr."))
def convert_for_model(state_dict: Mapping, model_shapes: Mapping) -> Dict[str, Tensor]:
    """The DetrCheckpointer's automatic conversion: the mask head goes to the model's
    ``MaskHead`` plug-in, whatever its index; the model must have the 133 classes."""
    indices = sorted({int(k.split(".")[1]) for k in model_shapes if k.startswith("plugins.") and ".mask_head." in k})
    if len(indices) != 1:
        raise ValueError("an official DETR panoptic checkpoint loads into a Detr with one MaskHead plug-in "
                         "(MODEL.DETR.PLUGINS: [\"MaskHead\"]); the model has " + str(len(indices)))
    classes = model_shapes.get("heads.class_embed.weight", (0,))[0] - 1
    if classes != len(COCO_PANOPTIC_CLASS_ROWS):
        raise ValueError(f"an official DETR panoptic checkpoint has the 133 COCO panoptic classes; the model has "
                         f"{classes} (MODEL.DETR.NUM_CLASSES 133)")
    return convert_official_detr_panoptic(state_dict, plugin_index=indices[0])
