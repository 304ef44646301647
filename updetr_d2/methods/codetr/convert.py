"""The official Co-Deformable-DETR checkpoints (Sense-X/Co-DETR, built on mmdetection 2.x
and mmcv 1.x) as this project's :class:`~.meta_arch.CoDeformableDetr`.

mmdet saves ``{"meta": {...}, "state_dict": {...}, "optimizer": {...}}`` (published
files drop the optimizer); ``meta`` holds only strings, numbers, tuples and dicts
(config text, environment, class names, epoch, hook messages), so a weights-only load
reads it. :func:`convert_official_codetr` takes that loaded dict (or a ``{"model": ...}``
dict, or the bare state dict). Official keys (``T`` = ``query_head.transformer.``) and
where they go::

    backbone.<torchvision ResNet key>        -> backbone.backbone.<Detectron2 key>
                                                (mmdet's ResNet has torchvision's names)
    neck.convs.i.conv.weight, .gn.*          -> input_proj.i.0.weight, input_proj.i.1.*
    neck.extra_convs.j.conv.weight, .gn.*    -> input_proj.(n+j).0 / .1 (n neck.convs)
    T.level_embeds                           -> transformer.level_embed
    T.encoder.layers.i.attentions.0.*        -> transformer.encoder.layers.i.self_attn.*
    T.{encoder,decoder}.layers.i.ffns.0.layers.0.0 / .layers.1  -> linear1 / linear2
    T.encoder.layers.i.norms.0 / .1          -> norm1 / norm2
    T.decoder.layers.i.attentions.0.attn.*   -> transformer.decoder.layers.i.self_attn.*
    T.decoder.layers.i.attentions.1.*        -> transformer.decoder.layers.i.cross_attn.*
    T.decoder.layers.i.norms.0 / .1 / .2     -> norm2 / norm1 / norm3
    T.{enc_output,enc_output_norm,pos_trans,pos_trans_norm}  -> transformer.* (two-stage)
    T.reference_points                       -> query_generator.reference_points (one-stage)
    query_head.query_embedding               -> query_generator.tgt_embed (two-stage: mixed selection)
                                                or query_generator.query_embed (one-stage)
    query_head.cls_branches.i                -> heads.class_embed.i
    query_head.reg_branches.i.{0,2,4}        -> heads.bbox_embed.i.layers.{0,1,2}
    query_head.downsample.{0,1}              -> pyramid_extra.{0,1}
    T.aux_pos_trans.k, T.aux_pos_trans_norm.k  -> positive_queries.box_proj.h, box_norm.h
    T.pos_feats_trans.k, T.pos_feats_norm.k  -> positive_queries.feature_proj.h, feature_norm.h
    T.head_pos_embed.weight [K, 1]           -> positive_queries.head_embed.weight [K, d]
    rpn_head.rpn_conv / rpn_cls / rpn_reg    -> aux_heads.r.rpn.rpn_head.conv /
                                                objectness_logits / anchor_deltas
    roi_head.0.bbox_head.shared_fcs.0 / .1   -> aux_heads.r.roi_heads.box_head.fc1 / fc2
    roi_head.0.bbox_head.fc_cls / fc_reg     -> aux_heads.r.roi_heads.box_predictor.cls_score / bbox_pred
    bbox_head.0.{cls,reg}_convs.j.conv / .gn -> aux_heads.a.{cls,reg}_tower.(3j) / .(3j+1)
    bbox_head.0.atss_cls / atss_reg / atss_centerness  -> aux_heads.a.cls_score / bbox_pred / centerness
    bbox_head.0.scales.l.scale               -> aux_heads.a.scales[l]

``r`` / ``a``: the model's FasterRCNNAuxHead / ATSSAuxHead. ``k``: the official co-head
(its positive-query pass): the RoI heads first, then the dense heads; ``h``: the model's
auxiliary head of that kind. Where conventions differ, and what is the same:

* mmcv's attentions keep the residual inside the module and number the norms in
  operation order; the decoder's are (self-attention, cross-attention, FFN), the
  project's ``norm2, norm1, norm3``. The self-attention is a ``nn.MultiheadAttention``
  (stacked ``in_proj``; queries and keys get the positional query, values do not), as
  here; the deformable attention's four linear layers have Deformable DETR's layouts.
* The neck's convolutions have no bias (GroupNorm follows, mmcv's ``bias="auto"``): the
  project's ``input_proj`` biases are set to zero, which computes the same.
* ``head_pos_embed`` is ``nn.Embedding(K, 1)`` in the official code (a bug its authors
  keep): one scalar per head, broadcast over the positional query. Repeated over the d
  channels of the project's ``[K, d]`` embedding it adds the same values.
* RPN anchors: mmdet orders a location's anchors ratio-major (``r * S + s``), Detectron2
  size-major (``s * R + r``): ``rpn_cls`` rows and ``rpn_reg`` row blocks of 4 are
  reordered (Co-DETR's grid: 3 octave scales x 3 ratios, as MODEL.CO_DETR.RCNN). Both
  centre anchors on ``stride * i`` and encode deltas alike (no +1).
* Box deltas: mmdet's target stds (0.1, 0.1, 0.2, 0.2) divide the deltas as Detectron2's
  weights (10, 10, 5, 5) multiply them; the RoI head's are class-specific ``[c * 4 + k]``
  in both, its classifier is a softmax over 80 classes + background last in both. The
  DETR and ATSS classifiers are sigmoid, 80 columns; mmdet's COCO labels are the
  category ids in increasing order, which is Detectron2's contiguous order.
* BatchNorm counters (``num_batches_tracked``) have no counterpart and are dropped.

A model with no auxiliary heads (a plain ``DeformableDetr``, or a Co-DETR with
``AUX_HEADS []``) takes the inference part; the training-only tensors are left out and
named by prefix and count in the report and the log. Anything else that cannot be
mapped, and any model tensor left unfilled, is a ValueError listing the keys.
"""
import logging
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Tuple

import torch
from torch import Tensor

from ...checkpoint.official_detr import register_official_layout
from ...checkpoint.torchvision_resnet import detectron2_name

__all__ = [
    "CODETR_MARKERS",
    "CoDetrConversionReport",
    "OFFICIAL_CONFIG",
    "TRAINING_ONLY_PREFIXES",
    "codetr_state_dict",
    "convert_official_codetr",
    "rpn_anchor_order",
]

logger = logging.getLogger(__name__)

_T = "query_head.transformer."
# Keys every official Co-Deformable-DETR has, whatever its backbone (a Swin one is then
# refused naming its backbone keys rather than loaded as an unknown file).
CODETR_MARKERS = (
    "neck.convs.0.conv.weight",
    _T + "level_embeds",
    _T + "encoder.layers.0.attentions.0.sampling_offsets.weight",
    _T + "decoder.layers.0.attentions.1.sampling_offsets.weight",
    "query_head.cls_branches.0.weight",
    "query_head.downsample.0.weight",
)
OFFICIAL_CONFIG = "projects/CoDETR/configs/co_deformable_detr_r50_official.yaml"
# What only training uses: the auxiliary heads, their positive queries' projections and
# the pyramid's extra level.
TRAINING_ONLY_PREFIXES = (
    "rpn_head.", "roi_head.", "bbox_head.", "query_head.downsample.",
    _T + "aux_pos_trans.", _T + "aux_pos_trans_norm.", _T + "pos_feats_trans.", _T + "pos_feats_norm.",
    _T + "head_pos_embed.",
)
# The official RPN's anchors per location: 3 octave scales x 3 aspect ratios.
_RPN_SCALES, _RPN_RATIOS = 3, 3

_W = r"(weight|bias)"
_DEFORM = r"((?:sampling_offsets|attention_weights|value_proj|output_proj)\.(?:weight|bias))"
_FFN = {"ffns.0.layers.0.0": "linear1", "ffns.0.layers.1": "linear2"}
_DIRECT = {
    _T + "level_embeds": "transformer.level_embed",
    **{f"{_T}{m}.{p}": f"transformer.{m}.{p}" for m in ("enc_output", "enc_output_norm", "pos_trans", "pos_trans_norm")
       for p in ("weight", "bias")},
    **{f"{_T}reference_points.{p}": f"query_generator.reference_points.{p}" for p in ("weight", "bias")},
    **{f"query_head.downsample.{i}.{p}": f"pyramid_extra.{i}.{p}" for i in (0, 1) for p in ("weight", "bias")},
}
# Why an official tensor has no place in the model (model key part -> the option).
_HOMELESS_HINTS = (
    ("query_generator.tgt_embed.", "the official model uses mixed query selection: MODEL.DEFORMABLE_DETR.MIXED_SELECTION True "
                         "(a CoDeformableDetr; AUX_HEADS [] for inference only)"),
    ("transformer.enc_output", "the official model is two-stage: MODEL.DEFORMABLE_DETR.TWO_STAGE True"),
    ("transformer.pos_trans", "the official model is two-stage: MODEL.DEFORMABLE_DETR.TWO_STAGE True"),
    ("query_generator.", "the official model is one-stage: MODEL.DEFORMABLE_DETR.TWO_STAGE False"),
    ("positive_queries.", "the official model has a positive-query projection per head: "
                          "MODEL.CO_DETR.POSITIVE_QUERIES True"),
    ("<FasterRCNNAuxHead>", "the model has no FasterRCNNAuxHead (MODEL.CO_DETR.AUX_HEADS)"),
    ("<ATSSAuxHead>", "the model has no ATSSAuxHead (MODEL.CO_DETR.AUX_HEADS)"),
    ("<co-head>", "the official model has more auxiliary heads than Co-Deformable-DETR's RoI and ATSS heads"),
)
# Why a model tensor finds nothing in the file.
_MISSING_HINTS = (
    ("query_generator.tgt_embed.", "the official model has no mixed query selection: MODEL.DEFORMABLE_DETR.MIXED_SELECTION False"),
    ("transformer.enc_output", "the official model is one-stage: MODEL.DEFORMABLE_DETR.TWO_STAGE False"),
    ("transformer.pos_trans", "the official model is one-stage: MODEL.DEFORMABLE_DETR.TWO_STAGE False"),
    ("query_generator.", "the official model is two-stage: MODEL.DEFORMABLE_DETR.TWO_STAGE True"),
    ("aux_heads.", "the file has no such auxiliary head: MODEL.CO_DETR.AUX_HEADS as the official model "
                   "(FasterRCNNAuxHead, ATSSAuxHead), or [] for inference"),
    ("positive_queries.", "the file has no such positive-query projections"),
)


def rpn_anchor_order(num_scales: int, num_ratios: int) -> List[int]:
    """``order[i]``: the mmdet anchor index of Detectron2's anchor ``i`` at one location
    (Detectron2: size-major ``s * R + r``; mmdet: ratio-major ``r * S + s``)."""
    return [r * num_scales + s for s in range(num_scales) for r in range(num_ratios)]


def codetr_state_dict(checkpoint) -> Tuple[Mapping, Mapping]:
    """``(state_dict, meta)`` of a loaded official file: mmdet's ``{"meta", "state_dict"}``,
    a ``{"model": ...}`` dict, or a bare state dict (meta ``{}``)."""
    if isinstance(checkpoint, Mapping):
        meta = checkpoint.get("meta")
        meta = meta if isinstance(meta, Mapping) else {}
        for entry in ("state_dict", "model"):
            if isinstance(checkpoint.get(entry), Mapping):
                return checkpoint[entry], meta
    return checkpoint, {}


@dataclass
class CoDetrConversionReport:
    """What :func:`convert_official_codetr` did besides renaming."""

    converted: int = 0  # model tensors filled
    dropped: Dict[str, int] = field(default_factory=dict)  # training-only official prefix -> tensors left out
    zero_filled: List[str] = field(default_factory=list)  # model tensors the official model lacks (set to 0)
    counters_dropped: int = 0  # BatchNorm num_batches_tracked
    head_embed_broadcast: bool = False  # the [K, 1] head embedding repeated over the channels

    def summary(self) -> str:
        parts = [f"{self.converted} tensors converted"]
        if self.dropped:
            parts.append(f"{sum(self.dropped.values())} training-only tensors left out (the model has no "
                         "auxiliary heads): " + ", ".join(f"{p}* ({n})" for p, n in self.dropped.items()))
        if self.zero_filled:
            parts.append(f"{len(self.zero_filled)} biases the official model does not have set to 0: "
                         + ", ".join(self.zero_filled))
        if self.head_embed_broadcast:
            parts.append("head_pos_embed [K, 1] repeated over the channels")
        if self.counters_dropped:
            parts.append(f"{self.counters_dropped} BatchNorm counters dropped")
        return "; ".join(parts)


@dataclass
class _AuxLayout:
    """Where the official auxiliary parts go in the model."""

    rcnn: Optional[int]  # the model's FasterRCNNAuxHead index
    atss: Optional[int]  # the model's ATSSAuxHead index
    co_heads: Dict[int, str]  # official co-head k -> "positive_queries.<part>.{index}" or why not
    neck_levels: int


def _aux_layout(state_dict: Mapping, model_shapes: Mapping) -> _AuxLayout:
    def model_index(suffix: str) -> Optional[int]:
        found = [int(m.group(1)) for k in model_shapes for m in [re.fullmatch(r"aux_heads\.(\d+)\." + suffix, k)] if m]
        return found[0] if found else None

    def official(prefix: str) -> List[int]:
        pattern = re.escape(prefix) + r"\.(\d+)\."
        return sorted({int(m.group(1)) for k in state_dict for m in [re.match(pattern, str(k))] if m})

    def place(index: Optional[int], kind: str) -> str:
        return f"positive_queries.{{}}.{index}" if index is not None else f"<{kind}>"

    rcnn, atss = model_index(r"rpn\.rpn_head\.conv\.weight"), model_index(r"centerness\.weight")
    # Official positive-query passes: every RoI head, then every dense head; Co-Deformable-DETR
    # has one of each (the project's FasterRCNNAuxHead and ATSSAuxHead).
    kinds = ([place(rcnn, "FasterRCNNAuxHead") if i == 0 else "<co-head>" for i in official("roi_head")]
             + [place(atss, "ATSSAuxHead") if j == 0 else "<co-head>" for j in official("bbox_head")])
    return _AuxLayout(rcnn, atss, dict(enumerate(kinds)), len(official("neck.convs")))


def _layer_key(part: str, rest: str) -> Optional[str]:
    """A transformer layer's official key (after ``layers.i.``) -> the project's."""
    m = re.fullmatch(r"(ffns\.0\.layers\.(?:0\.0|1))\." + _W, rest)
    if m:
        return f"{_FFN[m.group(1)]}.{m.group(2)}"
    m = re.fullmatch(r"norms\.(\d)\." + _W, rest)
    if m:
        order = ("norm1", "norm2") if part == "encoder" else ("norm2", "norm1", "norm3")
        i = int(m.group(1))
        return f"{order[i]}.{m.group(2)}" if i < len(order) else None
    if part == "encoder":
        m = re.fullmatch(r"attentions\.0\." + _DEFORM, rest)
        return f"self_attn.{m.group(1)}" if m else None
    m = re.fullmatch(r"attentions\.0\.attn\.(in_proj_weight|in_proj_bias|out_proj\.weight|out_proj\.bias)", rest)
    if m:
        return f"self_attn.{m.group(1)}"
    m = re.fullmatch(r"attentions\.1\." + _DEFORM, rest)
    return f"cross_attn.{m.group(1)}" if m else None


def _aux_key(key: str, aux: _AuxLayout) -> Optional[str]:
    """An auxiliary head's official key -> the project's (``<...>`` when the model lacks
    the head it belongs to)."""
    r = f"aux_heads.{aux.rcnn}." if aux.rcnn is not None else "<FasterRCNNAuxHead>."
    a = f"aux_heads.{aux.atss}." if aux.atss is not None else "<ATSSAuxHead>."
    rpn = {"rpn_conv": "conv", "rpn_cls": "objectness_logits", "rpn_reg": "anchor_deltas"}
    m = re.fullmatch(r"rpn_head\.(rpn_conv|rpn_cls|rpn_reg)\." + _W, key)
    if m:
        return f"{r}rpn.rpn_head.{rpn[m.group(1)]}.{m.group(2)}"
    roi = {"shared_fcs.0": "box_head.fc1", "shared_fcs.1": "box_head.fc2",
           "fc_cls": "box_predictor.cls_score", "fc_reg": "box_predictor.bbox_pred"}
    m = re.fullmatch(r"roi_head\.0\.bbox_head\.(shared_fcs\.[01]|fc_cls|fc_reg)\." + _W, key)
    if m:
        return f"{r}roi_heads.{roi[m.group(1)]}.{m.group(2)}"
    m = re.fullmatch(r"bbox_head\.0\.(cls|reg)_convs\.(\d+)\.(conv|gn)\." + _W, key)
    if m:
        index = 3 * int(m.group(2)) + (0 if m.group(3) == "conv" else 1)
        return f"{a}{m.group(1)}_tower.{index}.{m.group(4)}"
    dense = {"atss_cls": "cls_score", "atss_reg": "bbox_pred", "atss_centerness": "centerness"}
    m = re.fullmatch(r"bbox_head\.0\.(atss_cls|atss_reg|atss_centerness)\." + _W, key)
    if m:
        return f"{a}{dense[m.group(1)]}.{m.group(2)}"
    if re.fullmatch(r"bbox_head\.0\.scales\.\d+\.scale", key):
        return f"{a}scales"
    queries = {"aux_pos_trans": "box_proj", "aux_pos_trans_norm": "box_norm",
               "pos_feats_trans": "feature_proj", "pos_feats_norm": "feature_norm"}
    m = re.fullmatch(re.escape(_T) + r"(aux_pos_trans|aux_pos_trans_norm|pos_feats_trans|pos_feats_norm)\.(\d+)\."
                     + _W, key)
    if m:
        where = aux.co_heads.get(int(m.group(2)), "<co-head>").replace("{}", queries[m.group(1)])
        return f"{where}.{m.group(3)}"
    if key == _T + "head_pos_embed.weight":
        return "positive_queries.head_embed.weight"
    return None


def _project_key(key: str, state_dict: Mapping, aux: _AuxLayout) -> Optional[str]:
    if key.startswith("backbone."):
        d2 = detectron2_name(key[len("backbone."):])
        return None if d2 is None else "backbone.backbone." + d2
    m = re.fullmatch(r"neck\.(convs|extra_convs)\.(\d+)\.(conv|gn)\." + _W, key)
    if m:
        level = int(m.group(2)) + (aux.neck_levels if m.group(1) == "extra_convs" else 0)
        return f"input_proj.{level}.{0 if m.group(3) == 'conv' else 1}.{m.group(4)}"
    m = re.fullmatch(re.escape(_T) + r"(encoder|decoder)\.layers\.(\d+)\.(.+)", key)
    if m:
        rest = _layer_key(m.group(1), m.group(3))
        return None if rest is None else f"transformer.{m.group(1)}.layers.{m.group(2)}.{rest}"
    if key in _DIRECT:
        return _DIRECT[key]
    if key == "query_head.query_embedding.weight":
        two_stage = _T + "enc_output.weight" in state_dict
        return "query_generator.tgt_embed.weight" if two_stage else "query_generator.query_embed.weight"
    m = re.fullmatch(r"query_head\.cls_branches\.(\d+)\." + _W, key)
    if m:
        return f"heads.class_embed.{m.group(1)}.{m.group(2)}"
    m = re.fullmatch(r"query_head\.reg_branches\.(\d+)\.([024])\." + _W, key)
    if m:
        return f"heads.bbox_embed.{m.group(1)}.layers.{int(m.group(2)) // 2}.{m.group(3)}"
    return _aux_key(key, aux)


def _hint(keys, table) -> str:
    hints = sorted({h for k in keys for p, h in table if p in k})
    return (" (" + "; ".join(hints) + ")") if hints else ""


def _converted_value(official: str, value: Tensor, target: str, model_shapes: Mapping) -> Tensor:
    """The few tensors whose layout differs (see the module docstring)."""
    if target.endswith(("objectness_logits.weight", "objectness_logits.bias",
                        "anchor_deltas.weight", "anchor_deltas.bias")):
        order = torch.as_tensor(rpn_anchor_order(_RPN_SCALES, _RPN_RATIOS))
        per_anchor = value.shape[0] // len(order)
        if value.shape[0] != per_anchor * len(order) or per_anchor not in (1, 4):
            raise ValueError(f"'{official}' has {value.shape[0]} rows; Co-DETR's RPN has "
                             f"{len(order)} anchors per location ({_RPN_SCALES} scales x {_RPN_RATIOS} ratios)")
        return value.reshape(len(order), per_anchor, *value.shape[1:]).index_select(0, order).flatten(0, 1)
    if target == "positive_queries.head_embed.weight" and value.dim() == 2 and value.shape[1] == 1:
        width = model_shapes.get(target, (0, 1))[1]
        return value.expand(-1, width).clone()
    return value


def convert_official_codetr(checkpoint, model_shapes: Mapping[str, Tuple[int, ...]]
                            ) -> Tuple[Dict[str, Tensor], CoDetrConversionReport]:
    """An official Co-Deformable-DETR (a loaded file or its state dict) onto the model whose
    state dict has ``model_shapes``; returns the model's state dict and what was done.

    Raises ValueError listing every official key with no counterpart in the model (with
    the config option that adds it, where one does), every model tensor left unfilled and
    every shape that differs."""
    state_dict, meta = codetr_state_dict(checkpoint)
    shapes = {k: tuple(v) for k, v in model_shapes.items()}
    aux = _aux_layout(state_dict, shapes)
    has_aux = any(k.startswith("aux_heads.") for k in shapes)
    report = CoDetrConversionReport()
    converted: Dict[str, Tensor] = OrderedDict()
    source: Dict[str, str] = {}
    scales: Dict[str, Dict[int, Tensor]] = {}
    unknown, homeless = [], []
    for key, value in state_dict.items():
        if not isinstance(key, str) or not isinstance(value, Tensor):
            unknown.append(str(key))
            continue
        if key.startswith("backbone.") and key.endswith(".num_batches_tracked"):
            report.counters_dropped += 1
            continue
        target = _project_key(key, state_dict, aux)
        if target is None:
            unknown.append(key)
        elif target not in shapes:
            prefix = next((p for p in TRAINING_ONLY_PREFIXES if key.startswith(p)), None)
            if prefix is not None and not has_aux:
                report.dropped[prefix] = report.dropped.get(prefix, 0) + 1
            else:
                homeless.append(f"{key} -> {target}")
        elif target.endswith(".scales"):  # ATSS: one scalar per level, stacked here
            scales.setdefault(target, {})[int(key.split(".")[-2])] = value.reshape(())
            source[target] = key
        elif target in converted:
            homeless.append(f"{key} -> {target} (already filled from {source[target]})")
        else:
            converted[target] = _converted_value(key, value, target, shapes)
            source[target] = key
            report.head_embed_broadcast |= target.endswith("head_embed.weight") and value.shape[-1:] == (1,)
    for target, levels in scales.items():
        if sorted(levels) != list(range(len(levels))):
            raise ValueError(f"official ATSS scales of levels {sorted(levels)}: expected 0..{len(levels) - 1}")
        converted[target] = torch.stack([levels[i] for i in range(len(levels))])
    for target in list(shapes):  # neck convolutions without bias: zero, as the official ones compute
        m = re.fullmatch(r"input_proj\.(\d+)\.0\.bias", target)
        if m and target not in converted and f"input_proj.{m.group(1)}.0.weight" in converted:
            converted[target] = torch.zeros(shapes[target], dtype=converted[f"input_proj.{m.group(1)}.0.weight"].dtype)
            report.zero_filled.append(target)

    problems = []
    if unknown:
        hint = " (a Co-DINO checkpoint: not supported)" if "query_head.label_embedding.weight" in state_dict else ""
        problems.append(f"{len(unknown)} official keys of no known Co-Deformable-DETR part{hint}: "
                        + ", ".join(unknown))
    if homeless:
        problems.append(f"{len(homeless)} official tensors with no counterpart in the model"
                        f"{_hint(homeless, _HOMELESS_HINTS)}: " + ", ".join(homeless))
    missing = [k for k in shapes if k not in converted]
    if missing:
        problems.append(f"{len(missing)} model tensors the file does not fill{_hint(missing, _MISSING_HINTS)}: "
                        + ", ".join(missing))
    wrong = [f"{k} {tuple(v.shape)} from {source.get(k, '?')}, model {shapes[k]}"
             for k, v in converted.items() if tuple(v.shape) != shapes[k]]
    if wrong:
        problems.append(f"{len(wrong)} shapes differ (MODEL.DETR.HIDDEN_DIM / DIM_FEEDFORWARD / NUM_CLASSES / "
                        f"NUM_OBJECT_QUERIES, MODEL.DEFORMABLE_DETR levels and points?): " + "; ".join(wrong))
    classes = meta.get("CLASSES")
    head = shapes.get("heads.class_embed.0.weight")
    if classes is not None and head is not None and len(classes) != head[0]:
        problems.append(f"the file was trained on {len(classes)} classes (meta CLASSES), the model has {head[0]}")
    if problems:
        raise ValueError("Cannot convert the official Co-Deformable-DETR checkpoint: " + " | ".join(problems))
    report.converted = len(converted)
    return converted, report


@register_official_layout("co_deformable_detr", markers=CODETR_MARKERS, config=OFFICIAL_CONFIG)
def convert_for_model(state_dict: Mapping, model_shapes: Mapping) -> Dict[str, Tensor]:
    """The DetrCheckpointer's automatic conversion (what was left out is logged)."""
    converted, report = convert_official_codetr(state_dict, model_shapes)
    logger.info("official Co-Deformable-DETR checkpoint: %s", report.summary())
    return converted
