"""The official DN-DETR checkpoints (IDEA-Research/DN-DETR) under this project's names.

"dn_deformable" (``--modelname dn_dab_deformable_detr``: DN-DAB-Deformable-DETR, box
refinement always on) loads into DN-Deformable-DETR
(``projects/DNDETR/configs/dn_deformable_detr_r50_official.yaml``) or, denoising off, the
anchor-query Deformable DETR it evaluates as. Besides the Deformable DETR keys
(:mod:`updetr_d2.checkpoint.official_deformable`; per-layer heads, the decoder's
``transformer.decoder.bbox_embed`` copies dropped)::

    tgt_embed.weight [Q, d-1]                 -> query_generator[.base].tgt_embed.weight
    refpoint_embed.weight [Q, 4] (box logits) -> query_generator[.base].anchor_embed.weight
    label_enc.weight [92, d-1]                -> query_generator.label_enc.weight, rows of
                                                 the 80 COCO ids + the "unknown" row 91
                                                 (dropped, logged, without denoising)
    transformer.decoder.ref_point_head.*      -> the same; layers.0.weight's input
                                                 columns reordered (below)
    transformer.decoder.query_scale.*         -> the same

The positional query of an anchor is ``ref_point_head(sine(box))``. The official sine
embedding concatenates the coordinates' blocks as (y, x, w, h)
(``gen_sineembed_for_position``); this project's ``sine_embed_coordinates`` keeps the
box's order (x, y, w, h). The same function needs the first two column blocks of
``ref_point_head.layers.0.weight`` swapped (each block ``d / 2`` wide: the official code
hard-codes 128 for d = 256).

Official variants without a model here are registered so that loading them is a clear
error: "dn_dab_detr" (``DN_DAB_DETR``: single-scale DAB-DETR with conditional
cross-attention, ``ca_*`` / ``sa_*`` projections and ``ref_anchor_head``) and
"dn_dab_deformable_encoder_only" (a deformable encoder with that same DAB-DETR decoder).
"""
from collections import OrderedDict
from typing import Dict, Mapping

import torch
from torch import Tensor

from ...checkpoint.official_deformable import (
    COMMON_MARKERS,
    REFINE_MARKERS,
    convert_official_deformable,
    deformable_level_opts,
    focal_class_rows,
)
from ...checkpoint.official_helpers import gather_class_rows, report_dropped
from ...checkpoint.official_layouts import register_official_layout

__all__ = ["DN_DEFORMABLE_MARKERS", "convert_official_dn_deformable", "official_ref_point_head_weight"]

DN_DEFORMABLE_MARKERS = COMMON_MARKERS + REFINE_MARKERS + (
    "tgt_embed.weight", "refpoint_embed.weight", "label_enc.weight", "transformer.decoder.ref_point_head.layers.0.weight",
)
_DAB_DECODER = ("backbone.0.body.conv1.weight", "refpoint_embed.weight", "label_enc.weight",
                "transformer.decoder.layers.0.ca_qcontent_proj.weight")


def _swap_first_blocks(weight: Tensor) -> Tensor:
    """Input columns (y, x, w, h) <-> (x, y, w, h): its own inverse."""
    half = weight.shape[1] // 4 if weight.shape[1] % 4 == 0 else None
    if half is None:
        raise ValueError(f"ref_point_head.layers.0.weight {tuple(weight.shape)}: expected 4 sine blocks of input")
    y, x, rest = weight[:, :half], weight[:, half:2 * half], weight[:, 2 * half:]
    return torch.cat([x, y, rest], dim=1).contiguous()


def official_ref_point_head_weight(weight: Tensor) -> Tensor:
    """This project's ``ref_point_head.layers.0.weight`` in the official column order (and
    back: the swap is its own inverse)."""
    return _swap_first_blocks(weight)


@register_official_layout("dn_deformable", markers=DN_DEFORMABLE_MARKERS,
                          config="projects/DNDETR/configs/dn_deformable_detr_r50_official.yaml",
                          opts=deformable_level_opts)
def convert_official_dn_deformable(state_dict: Mapping, model_shapes: Mapping) -> Dict[str, Tensor]:
    """An official DN-DAB-Deformable-DETR state dict onto DN-Deformable-DETR (or, with
    denoising off, the anchor-query Deformable DETR of ``model_shapes``)."""
    with_dn = "query_generator.base.tgt_embed.weight" in model_shapes
    prefix = "query_generator.base." if with_dn else "query_generator."
    if prefix + "anchor_embed.weight" not in model_shapes:
        raise ValueError("an official DN-Deformable-DETR checkpoint loads into an anchor-query Deformable DETR "
                         "(MODEL.DEFORMABLE_DETR.ANCHOR_QUERIES True); the model has no "
                         f"{prefix}anchor_embed")
    classes = model_shapes.get("heads.class_embed.0.weight", (0,))[0]

    def label_enc(value: Tensor):
        # Row C of the official embedding is its "unknown" class, last here too.
        rows = focal_class_rows(value.shape[0] - 1, classes, "dn_deformable") + [value.shape[0] - 1]
        return "query_generator.label_enc.weight", gather_class_rows("label_enc.weight", value, rows, value.shape[0])

    extra = {
        "tgt_embed.weight": prefix + "tgt_embed.weight",
        "refpoint_embed.weight": prefix + "anchor_embed.weight",
        "transformer.decoder.ref_point_head.layers.0.weight":
            lambda v: ("transformer.decoder.ref_point_head.layers.0.weight", _swap_first_blocks(v)),
    }
    extra.update({k: k for k in state_dict if isinstance(k, str) and k.startswith(
        ("transformer.decoder.ref_point_head.", "transformer.decoder.query_scale.")) and k not in extra})
    if with_dn:
        extra["label_enc.weight"] = label_enc
    converted, unmapped = convert_official_deformable(
        state_dict, model_shapes, layout="dn_deformable", shared_heads=False, extra=extra)
    if not with_dn:
        report_dropped("dn_deformable", ["label_enc.weight"],
                       "denoising's label embedding, used in training only; the model has no denoising")
        unmapped = [k for k in unmapped if k != "label_enc.weight"]
    if unmapped:
        raise ValueError(f"Cannot map {len(unmapped)} keys of the official dn_deformable state dict onto the model: "
                         + ", ".join(map(str, unmapped)))
    return OrderedDict(converted)


def _no_counterpart(layout: str, missing_model: str):
    def convert(state_dict: Mapping, model_shapes: Mapping) -> Dict[str, Tensor]:
        keys = sorted({".".join("N" if p.isdigit() else p for p in k.split("."))
                       for k in state_dict if isinstance(k, str) and any(
                           part.startswith(("ca_", "sa_")) or part in ("ref_anchor_head", "cross_attn_list", "lvl_attn")
                           for part in k.split("."))})
        raise ValueError(
            f"the official DN-DETR layout {layout!r} has no counterpart model in this project: {missing_model}. "
            f"Its keys without a counterpart ({len(keys)} patterns, N = layer): " + ", ".join(keys)
        )
    return convert


register_official_layout("dn_dab_detr", markers=_DAB_DECODER + ("input_proj.weight",))(_no_counterpart(
    "dn_dab_detr", "DAB-DETR's decoder (conditional cross-attention with width/height-modulated attention) is not "
                   "implemented; only the DN-Deformable-DETR variant (dn_dab_deformable_detr) converts"))
register_official_layout("dn_dab_deformable_encoder_only", markers=_DAB_DECODER + ("input_proj.0.0.weight",))(
    _no_counterpart("dn_dab_deformable_encoder_only",
                    "a deformable encoder under DAB-DETR's multi-scale conditional decoder is not implemented; only "
                    "the DN-Deformable-DETR variant (dn_dab_deformable_detr) converts"))
