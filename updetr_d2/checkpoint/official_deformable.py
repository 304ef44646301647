"""The official Deformable DETR checkpoints (fundamentalvision/Deformable-DETR) under this
project's names: plain, with iterative box refinement, two-stage (with or without
refinement), onto :class:`~updetr_d2.modeling.meta_arch.deformable_detr.DeformableDetr`.

Official keys and where they go::

    backbone.0.body.<torchvision ResNet key>     -> backbone.backbone.<Detectron2 key> (as DETR)
    input_proj.N.{0,1}.{weight,bias}              -> the same (1x1 or 3x3 conv, GroupNorm)
    transformer.level_embed                       -> the same
    transformer.{encoder,decoder}.layers.*        -> the same (module names kept here)
    transformer.{enc_output,enc_output_norm,pos_trans,pos_trans_norm}.*  (two-stage) -> the same
    query_embed.weight [Q, 2d]                    -> query_generator.query_embed.weight
    transformer.reference_points.*                -> query_generator.reference_points.*
    class_embed.N.*  (91 rows)                    -> heads.class_embed.N.* (80 rows gathered)
    bbox_embed.N.layers.K.*                       -> heads.bbox_embed.N.layers.K.*
    transformer.decoder.bbox_embed.N.*  (refine)  -> dropped: the same modules as bbox_embed.N
    transformer.decoder.class_embed.N.* (two-stage) -> dropped: the same modules as class_embed.N

``query_embed``: both codes split it ``[positional | content]`` (official
``torch.split(query_embed, c, dim=1)`` -> ``query_embed, tgt``; here
``LearnedPointQueries``: ``query_pos, tgt``), and both predict the reference point from
the positional half, so the tensor is copied as it is.

Shared heads: without box refinement the official model puts one class and one box head
in every slot (``nn.ModuleList([head] * n)``), so its state dict repeats them under every
index; here too (``BoxRefinementHeads(share=True)``). The copies must be equal; a file
whose copies differ was not made by a shared-head model and is refused (a shared model
would keep only one of them). Duplicates the official decoder holds for its own use
(``transformer.decoder.bbox_embed`` / ``class_embed``, the same modules as the heads)
must equal the heads and are dropped, named in the log.

Class head: sigmoid focal classification with one row per COCO category id 0..90 (91
rows, no no-object row); Detectron2's class ``c`` is official row
``coco_detection_class_rows()[c]``; the 11 rows of unused ids are dropped.

The shared pieces (anchor-query decoders, label embeddings) serve DN-Deformable-DETR's
converter, :mod:`updetr_d2.methods.dn.convert`.
"""
import re
from collections import OrderedDict
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import Tensor

from .official_helpers import (
    coco_detection_class_rows,
    convert_official_backbone,
    gather_class_rows,
    is_backbone_key,
    report_dropped,
    resnet_depth_opts,
)
from .official_layouts import register_official_layout

__all__ = [
    "COCO_FOCAL_ROWS",
    "COMMON_MARKERS",
    "REFINE_MARKERS",
    "TWO_STAGE_MARKERS",
    "DEFORMABLE_MARKERS",
    "convert_official_deformable",
    "deformable_level_opts",
    "focal_class_rows",
]

# The official COCO focal head: one row per category id 0..90.
COCO_FOCAL_ROWS = 91
# What every official multi-scale deformable model has (the plain model's queries and
# reference points are added by its layout; two-stage has neither).
COMMON_MARKERS = (
    "backbone.0.body.conv1.weight",
    "input_proj.0.0.weight",
    "transformer.level_embed",
    "transformer.encoder.layers.0.self_attn.sampling_offsets.weight",
    "class_embed.0.weight",
    "bbox_embed.0.layers.0.weight",
)
DEFORMABLE_MARKERS = COMMON_MARKERS + ("query_embed.weight", "transformer.reference_points.weight")
REFINE_MARKERS = ("transformer.decoder.bbox_embed.0.layers.0.weight",)
TWO_STAGE_MARKERS = ("transformer.enc_output.weight", "transformer.decoder.class_embed.0.weight")

_DEFORM_ATTN = r"(?:sampling_offsets|attention_weights|value_proj|output_proj)\.(?:weight|bias)"
# Official keys kept under the same name here; anything else is mapped explicitly or unmapped.
_SAME_NAME = re.compile(
    r"^(?:input_proj\.\d+\.[01]\.(?:weight|bias)"
    r"|transformer\.level_embed"
    rf"|transformer\.encoder\.layers\.\d+\.(?:self_attn\.{_DEFORM_ATTN}|linear[12]\.(?:weight|bias)"
    r"|norm[12]\.(?:weight|bias))"
    rf"|transformer\.decoder\.layers\.\d+\.(?:cross_attn\.{_DEFORM_ATTN}"
    r"|self_attn\.(?:in_proj_weight|in_proj_bias|out_proj\.weight|out_proj\.bias)"
    r"|linear[12]\.(?:weight|bias)|norm[123]\.(?:weight|bias)))$"
)
_TWO_STAGE_KEYS = re.compile(r"^transformer\.(?:enc_output|enc_output_norm|pos_trans|pos_trans_norm)\.(?:weight|bias)$")
_HEAD = re.compile(r"^(class_embed|bbox_embed)\.(\d+)\.(.+)$")
_DECODER_COPY = re.compile(r"^transformer\.decoder\.(class_embed|bbox_embed)\.(\d+)\.(.+)$")


def focal_class_rows(official_rows: int, model_classes: int, what: str) -> List[int]:
    """Official focal-head rows of the model's classes: COCO's 80 (Detectron2's order) from
    the 91 ids, or the official numbering itself."""
    if model_classes == official_rows:
        return list(range(official_rows))
    if model_classes == 80 and official_rows == COCO_FOCAL_ROWS:
        return coco_detection_class_rows()
    raise ValueError(f"{what}: the official class head has {official_rows} rows (category ids) but the model "
                     f"has {model_classes} classes: set MODEL.DETR.NUM_CLASSES to 80 (COCO) or {official_rows}")


def convert_official_deformable(
    state_dict: Mapping,
    model_shapes: Mapping[str, Tuple[int, ...]],
    *,
    layout: str,
    shared_heads: bool,
    extra: Optional[Dict[str, object]] = None,
) -> Tuple[Dict[str, Tensor], List[str]]:
    """The parts every official deformable layout shares, converted; returns
    ``(converted, unmapped)`` (keys left for the caller: queries of other kinds).
    ``extra``: official key -> project key (or a function of the tensor giving
    ``(project key, tensor)``) for the layout's own keys. Raises ValueError for
    shared-head copies that differ, decoder copies that differ from the heads, or an
    incomplete backbone."""
    extra = dict(extra or {})
    converted, missing = convert_official_backbone(state_dict)
    if missing:
        raise ValueError(f"Incomplete official {layout} backbone: {len(missing)} project keys would stay "
                         "unfilled: " + ", ".join(missing))
    head = model_shapes.get("heads.class_embed.0.weight")
    if head is None:
        raise ValueError(f"an official {layout} checkpoint loads into a DeformableDetr (the model has no "
                         "heads.class_embed.0)")
    rows = None
    unmapped: List[str] = []
    dropped: List[str] = []
    heads: Dict[Tuple[str, str], Dict[int, Tensor]] = {}
    for key, value in state_dict.items():
        if is_backbone_key(key):
            continue
        if not isinstance(key, str) or not isinstance(value, Tensor):
            unmapped.append(key)
            continue
        if key in extra:
            target = extra[key]
            name, value = target(value) if callable(target) else (target, value)
            converted[name] = value
        elif _SAME_NAME.match(key) or _TWO_STAGE_KEYS.match(key):
            converted[key] = value
        elif _HEAD.match(key):
            kind, index, rest = _HEAD.match(key).groups()
            heads.setdefault((kind, rest), {})[int(index)] = value
            if kind == "class_embed":
                if rows is None:
                    rows = focal_class_rows(value.shape[0], head[0], layout)
                value = gather_class_rows(key, value, rows, value.shape[0])
            converted[f"heads.{kind}.{index}.{rest}"] = value
        elif _DECODER_COPY.match(key):
            dropped.append(key)
        else:
            unmapped.append(key)
    for key in dropped:
        kind, index, rest = _DECODER_COPY.match(key).groups()
        own = state_dict.get(f"{kind}.{index}.{rest}")
        if not isinstance(own, Tensor) or not torch.equal(own, state_dict[key]):
            raise ValueError(f"'{key}' should be the same module as '{kind}.{index}.{rest}' (the official decoder "
                             "holds the heads for refinement / proposals) but "
                             + ("the file has no such head" if own is None else "their values differ"))
    if shared_heads:
        differ = [f"{kind}.{i}.{rest}" for (kind, rest), copies in heads.items() for i, v in sorted(copies.items())
                  if not torch.equal(v, copies[min(copies)])]
        if differ:
            raise ValueError(
                f"the official {layout} model shares one class and one box head across its decoder layers, but "
                f"these copies differ from layer 0's: {', '.join(differ)}; a file with per-layer heads is a "
                "box-refinement model (it also has transformer.decoder.bbox_embed.*)"
            )
    report_dropped(layout, dropped, "copies of the prediction heads the official decoder holds for refinement "
                                    "or proposals; equal to them")
    return converted, unmapped


def deformable_level_opts(state_dict: Mapping, args=None, config: str = "") -> List[str]:
    """Config overrides for the file's feature levels (single-scale models read res5 only),
    query count and ResNet depth."""
    convs = {int(m.group(1)): state_dict[k] for k in state_dict
             for m in [re.match(r"^input_proj\.(\d+)\.0\.weight$", str(k))] if m}
    backbone_levels = sum(1 for v in convs.values() if v.shape[-1] == 1)
    opts = []
    if backbone_levels == 1:
        opts += ["MODEL.RESNETS.OUT_FEATURES", "['res5']", "MODEL.DEFORMABLE_DETR.IN_FEATURES", "['res5']"]
    if len(convs) != 4:
        opts += ["MODEL.DEFORMABLE_DETR.NUM_FEATURE_LEVELS", str(len(convs))]
    queries = state_dict.get("query_embed.weight", state_dict.get("tgt_embed.weight"))
    if isinstance(queries, Tensor) and queries.shape[0] != 300:
        opts += ["MODEL.DETR.NUM_OBJECT_QUERIES", str(queries.shape[0])]
    return opts + resnet_depth_opts()(state_dict, args, config)


def _unmapped_error(layout: str, unmapped: Sequence) -> ValueError:
    return ValueError(f"Cannot map {len(unmapped)} keys of the official {layout} state dict onto the model: "
                      + ", ".join(map(str, unmapped)))


def _register(layout: str, markers: Sequence[str], shared: bool, config: str, opts=deformable_level_opts):
    queries = {} if "transformer.enc_output.weight" in markers else {
        "query_embed.weight": "query_generator.query_embed.weight",
        "transformer.reference_points.weight": "query_generator.reference_points.weight",
        "transformer.reference_points.bias": "query_generator.reference_points.bias",
    }

    @register_official_layout(layout, markers=markers, config=config, opts=opts)
    def convert(state_dict: Mapping, model_shapes: Mapping) -> Dict[str, Tensor]:
        converted, unmapped = convert_official_deformable(
            state_dict, model_shapes, layout=layout, shared_heads=shared, extra=queries)
        if unmapped:
            raise _unmapped_error(layout, unmapped)
        return OrderedDict(converted)
    return convert


def _two_stage_opts(refine: bool):
    def opts(state_dict, args=None, config=""):
        extra = [] if refine else ["MODEL.DEFORMABLE_DETR.WITH_BOX_REFINE", "False"]
        # Two-stage keeps args.num_queries proposals; the state dict cannot tell.
        proposals = getattr(args, "num_queries", None)
        if proposals is not None and proposals != 300:
            extra += ["MODEL.DETR.NUM_OBJECT_QUERIES", str(proposals)]
        return extra + deformable_level_opts(state_dict, args, config)
    return opts


_CONFIG_DIR = "projects/DeformableDETR/configs/"
_register("deformable", DEFORMABLE_MARKERS, True, _CONFIG_DIR + "deformable_detr_r50_official.yaml")
_register("deformable_refine", DEFORMABLE_MARKERS + REFINE_MARKERS, False,
          _CONFIG_DIR + "deformable_detr_r50_refine_official.yaml")
_register("deformable_two_stage", COMMON_MARKERS + TWO_STAGE_MARKERS, True, _CONFIG_DIR + "deformable_detr_r50_two_stage_official.yaml",
          opts=_two_stage_opts(refine=False))
_register("deformable_two_stage_refine", COMMON_MARKERS + TWO_STAGE_MARKERS + REFINE_MARKERS, False,
          _CONFIG_DIR + "deformable_detr_r50_two_stage_official.yaml", opts=_two_stage_opts(refine=True))
