"""The official UP-DETR checkpoints (dddzg/up-detr) under this project's names.

"updetr_pretraining" (``UPDETR``, the ImageNet pretraining) -> :class:`UpDetr`
(``projects/UPDETR/configs/updetr_r50_pretrain_official.yaml``): a pre-norm DETR (keys
as :mod:`updetr_d2.checkpoint.official_detr`, plus ``transformer.encoder.norm``) and::

    patch2query.{weight,bias}                  -> query_generator.patch2query.*
    feature_align.layers.{0,1}.{weight,bias}   -> feature_align.layers.*
    class_embed.* [num_classes + 1 rows]       -> heads.class_embed.* [2 rows]:
                                                  (patch, no-object) = official rows (1, last)

The official pretraining builds DETR's head with ``num_classes=2`` (3 rows) and labels
every patch 1: row 0 is a class no target ever has and is dropped (named in the log).
Dropping it leaves the softmax over (patch, no-object) that the project's one-class
head computes; the official softmax also gives row 0 a little probability (trained
towards none, as no target has it), so patch scores can differ slightly.

"updetr_finetuned" (a pre-norm DETR, e.g. UP-DETR fine-tuned on COCO with ``--pre_norm``;
``transformer.encoder.norm`` present) -> :class:`Detr` with ``PRE_NORM``
(``projects/UPDETR/configs/detr_r50_finetune_official.yaml``), converted as the official
DETR detector.
"""
from typing import Dict, Mapping

from torch import Tensor

from ...checkpoint.official_detr import DETECTION_MARKERS, convert_detection_for_model, convert_official_detr
from ...checkpoint.official_helpers import report_dropped, resnet_depth_opts
from ...checkpoint.official_layouts import register_official_layout

__all__ = ["FINETUNED_MARKERS", "PRETRAINING_MARKERS", "convert_official_updetr_pretraining"]

FINETUNED_MARKERS = DETECTION_MARKERS + ("transformer.encoder.norm.weight",)
PRETRAINING_MARKERS = FINETUNED_MARKERS + ("patch2query.weight",)
# The official pretraining's patch label: every target is class 1 (datasets/selfdet.py).
PATCH_ROW = 1
_PATCH_KEYS = {"patch2query.weight": "query_generator.patch2query.weight",
               "patch2query.bias": "query_generator.patch2query.bias",
               **{f"feature_align.layers.{i}.{p}": f"feature_align.layers.{i}.{p}" for i in (0, 1)
                  for p in ("weight", "bias")}}


@register_official_layout("updetr_pretraining", markers=PRETRAINING_MARKERS,
                          config="projects/UPDETR/configs/updetr_r50_pretrain_official.yaml", opts=resnet_depth_opts())
def convert_official_updetr_pretraining(state_dict: Mapping, model_shapes: Mapping) -> Dict[str, Tensor]:
    """An official UP-DETR pretraining state dict onto ``UpDetr`` (one patch class)."""
    head = model_shapes.get("heads.class_embed.weight")
    if head is None or head[0] != 2 or "query_generator.patch2query.weight" not in model_shapes:
        raise ValueError("an official UP-DETR pretraining checkpoint loads into UpDetr (one patch class, patch "
                         "queries); use projects/UPDETR/configs/updetr_r50_pretrain_official.yaml")
    rows = state_dict["class_embed.weight"].shape[0]
    if rows < 3:
        raise ValueError(f"class_embed.weight has {rows} rows; the official pretraining labels patches 1, so its "
                         "head has at least 3 (num_classes >= 2, plus no-object)")
    converted, rest = convert_official_detr(state_dict, class_rows=[PATCH_ROW], no_object_row=rows - 1)
    unmapped = []
    for key in rest:
        if key in _PATCH_KEYS and isinstance(state_dict[key], Tensor):
            converted[_PATCH_KEYS[key]] = state_dict[key]
        else:
            unmapped.append(key)
    if unmapped:
        raise ValueError(f"Cannot map {len(unmapped)} keys of the official UP-DETR pretraining state dict onto "
                         "UpDetr: " + ", ".join(map(str, unmapped)))
    report_dropped("updetr_pretraining", [f"class_embed.{{weight,bias}} rows {sorted(set(range(rows - 1)) - {PATCH_ROW})}"],
                   "class ids no pretraining target has (every patch is labelled 1)")
    return converted


@register_official_layout("updetr_finetuned", markers=FINETUNED_MARKERS,
                          config="projects/UPDETR/configs/detr_r50_finetune_official.yaml", opts=resnet_depth_opts())
def convert_official_updetr_finetuned(state_dict: Mapping, model_shapes: Mapping) -> Dict[str, Tensor]:
    """A pre-norm official DETR (UP-DETR fine-tuned) onto a pre-norm ``Detr``."""
    return convert_detection_for_model(state_dict, model_shapes, layout="updetr_finetuned")
