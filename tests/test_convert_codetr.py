"""Official Co-Deformable-DETR checkpoints (Sense-X/Co-DETR, mmdetection 2.x) -> this
project's CoDeformableDetr: ``updetr_d2.methods.codetr.convert``.

The synthetic official state dicts are built here from the official module structure
(mmdet's ResNet / ChannelMapper / CoDeformDETRHead with mmcv's transformer layers,
RPNHead, Shared2FCBBoxHead, CoATSSHead): key names and shapes, random values; the tiny
model is 32 wide with one encoder and one decoder layer and a ResNet-18.
"""
import logging
import math
import os

import pytest
import torch
import torch.nn.functional as F

from updetr_d2 import add_updetr_config  # first: Detectron2 compatibility fixes, registrations
from detectron2.config import get_cfg
from detectron2.data.datasets.builtin_meta import COCO_CATEGORIES
from detectron2.modeling import build_model
from detectron2.modeling.anchor_generator import DefaultAnchorGenerator
from torch import nn

from updetr_d2.checkpoint import DetrCheckpointer
from updetr_d2.checkpoint.official_detr import (
    coco_detection_class_rows,
    detect_official_detr,
    official_layout_config,
)
from updetr_d2.layers.deformable_transformer import DeformableDecoderLayer
from updetr_d2.layers.ms_deform_attn import MSDeformAttn
from updetr_d2.methods.codetr.convert import (
    TRAINING_ONLY_PREFIXES,
    convert_for_model,
    convert_official_codetr,
    rpn_anchor_order,
)
from updetr_d2.methods.codetr.rcnn import rcnn_anchor_sizes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
T = "query_head.transformer."
COCO_THING_NAMES = tuple(c["name"] for c in COCO_CATEGORIES if c["isthing"])


# --- the official state dict, from the official module structure ---------------------
def _resnet(depth):
    """mmdet's ResNet (torchvision names), BatchNorm with its counter."""
    blocks = {18: (2, 2, 2, 2), 50: (3, 4, 6, 3)}[depth]
    bottleneck = depth >= 50
    keys = {"backbone.conv1.weight": (64, 3, 7, 7)}

    def bn(prefix, c):
        keys.update({f"{prefix}.{p}": (c,) for p in ("weight", "bias", "running_mean", "running_var")})
        keys[f"{prefix}.num_batches_tracked"] = ()

    bn("backbone.bn1", 64)
    in_c = 64
    for stage, count in enumerate(blocks):
        width = 64 * 2**stage
        out_c = width * (4 if bottleneck else 1)
        for b in range(count):
            p = f"backbone.layer{stage + 1}.{b}"
            convs = ([(width, in_c, 1), (width, width, 3), (out_c, width, 1)] if bottleneck
                     else [(width, in_c, 3), (width, width, 3)])
            for i, (o, c, k) in enumerate(convs, start=1):
                keys[f"{p}.conv{i}.weight"] = (o, c, k, k)
                bn(f"{p}.bn{i}", o)
            if b == 0 and in_c != out_c:
                keys[f"{p}.downsample.0.weight"] = (out_c, in_c, 1, 1)
                bn(f"{p}.downsample.1", out_c)
            in_c = out_c
    return keys, [64 * 2**s * (4 if bottleneck else 1) for s in (1, 2, 3)]


def official_keys(depth=18, d=32, ffn=64, heads=4, levels=4, points=4, enc=1, dec=1, queries=10, classes=80,
                  fc=32, two_stage=True, mixed=True, refine=True):
    """Key -> shape of an official CoDETR (Co-Deformable-DETR config: RPN + one RoI head +
    one ATSS head, two co-heads, with_coord_feat)."""
    keys, channels = _resnet(depth)
    for i, c in enumerate(channels):
        keys[f"neck.convs.{i}.conv.weight"] = (d, c, 1, 1)
        keys.update({f"neck.convs.{i}.gn.{p}": (d,) for p in ("weight", "bias")})
    keys["neck.extra_convs.0.conv.weight"] = (d, channels[-1], 3, 3)
    keys.update({f"neck.extra_convs.0.gn.{p}": (d,) for p in ("weight", "bias")})

    def linear(prefix, o, i):
        keys[prefix + ".weight"], keys[prefix + ".bias"] = (o, i), (o,)

    def norm(prefix, c):
        keys[prefix + ".weight"], keys[prefix + ".bias"] = (c,), (c,)

    def deform(prefix):
        linear(prefix + ".sampling_offsets", heads * levels * points * 2, d)
        linear(prefix + ".attention_weights", heads * levels * points, d)
        linear(prefix + ".value_proj", d, d)
        linear(prefix + ".output_proj", d, d)

    def ffn_norms(prefix, count):
        linear(prefix + ".ffns.0.layers.0.0", ffn, d)
        linear(prefix + ".ffns.0.layers.1", d, ffn)
        for n in range(count):
            norm(f"{prefix}.norms.{n}", d)

    keys[T + "level_embeds"] = (levels, d)
    for i in range(enc):
        deform(f"{T}encoder.layers.{i}.attentions.0")
        ffn_norms(f"{T}encoder.layers.{i}", 2)
    for i in range(dec):
        p = f"{T}decoder.layers.{i}"
        keys[p + ".attentions.0.attn.in_proj_weight"] = (3 * d, d)
        keys[p + ".attentions.0.attn.in_proj_bias"] = (3 * d,)
        linear(p + ".attentions.0.attn.out_proj", d, d)
        deform(p + ".attentions.1")
        ffn_norms(p, 3)
    if two_stage:
        linear(T + "enc_output", d, d)
        norm(T + "enc_output_norm", d)
        linear(T + "pos_trans", 2 * d, 2 * d)
        norm(T + "pos_trans_norm", 2 * d)
        if mixed:
            keys["query_head.query_embedding.weight"] = (queries, d)
    else:
        linear(T + "reference_points", 2, d)
        keys["query_head.query_embedding.weight"] = (queries, 2 * d)
    keys[T + "head_pos_embed.weight"] = (2, 1)  # nn.Embedding(num_co_heads, 1, ...): the official bug
    for k in range(2):
        linear(f"{T}aux_pos_trans.{k}", 2 * d, 2 * d)
        norm(f"{T}aux_pos_trans_norm.{k}", 2 * d)
        linear(f"{T}pos_feats_trans.{k}", d, d)
        norm(f"{T}pos_feats_norm.{k}", d)
    # with_box_refine: a head per decoder layer (+1 for the encoder's proposals); shared
    # heads are the same module under every index, so the state dict repeats them.
    for i in range(dec + (1 if two_stage else 0)):
        linear(f"query_head.cls_branches.{i}", classes, d)
        linear(f"query_head.reg_branches.{i}.0", d, d)
        linear(f"query_head.reg_branches.{i}.2", d, d)
        linear(f"query_head.reg_branches.{i}.4", 4, d)
    keys["query_head.downsample.0.weight"], keys["query_head.downsample.0.bias"] = (d, d, 3, 3), (d,)
    norm("query_head.downsample.1", d)
    keys["rpn_head.rpn_conv.weight"], keys["rpn_head.rpn_conv.bias"] = (d, d, 3, 3), (d,)
    keys["rpn_head.rpn_cls.weight"], keys["rpn_head.rpn_cls.bias"] = (9, d, 1, 1), (9,)
    keys["rpn_head.rpn_reg.weight"], keys["rpn_head.rpn_reg.bias"] = (36, d, 1, 1), (36,)
    linear("roi_head.0.bbox_head.shared_fcs.0", fc, d * 49)
    linear("roi_head.0.bbox_head.shared_fcs.1", fc, fc)
    linear("roi_head.0.bbox_head.fc_cls", classes + 1, fc)
    linear("roi_head.0.bbox_head.fc_reg", 4 * classes, fc)
    for tower in ("cls_convs", "reg_convs"):
        keys[f"bbox_head.0.{tower}.0.conv.weight"] = (d, d, 3, 3)
        norm(f"bbox_head.0.{tower}.0.gn", d)
    for name, out in (("atss_cls", classes), ("atss_reg", 4), ("atss_centerness", 1)):
        keys[f"bbox_head.0.{name}.weight"], keys[f"bbox_head.0.{name}.bias"] = (out, d, 3, 3), (out,)
    keys.update({f"bbox_head.0.scales.{level}.scale": () for level in range(5)})
    return keys


def official_state_dict_of(keys, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {k: (torch.randint(0, 1000, (), generator=g) if k.endswith("num_batches_tracked")
                else torch.randn(shape, generator=g)) for k, shape in keys.items()}


def tiny_cfg(meta="CoDeformableDetr", heads=("FasterRCNNAuxHead", "ATSSAuxHead"), mixed=True, two_stage=True):
    cfg = get_cfg()
    add_updetr_config(cfg)
    cfg.merge_from_file(os.path.join(ROOT, "projects", "CoDETR", "configs", "co_deformable_detr_R18_demo.yaml"))
    cfg.MODEL.META_ARCHITECTURE = meta
    cfg.MODEL.RESNETS.NORM = "FrozenBN"  # the official ResNet's BatchNorm
    d, dd = cfg.MODEL.DETR, cfg.MODEL.DEFORMABLE_DETR
    d.HIDDEN_DIM, d.NHEADS, d.DIM_FEEDFORWARD, d.NUM_CLASSES = 32, 4, 64, 80
    d.ENC_LAYERS, d.DEC_LAYERS, d.NUM_OBJECT_QUERIES, d.DROPOUT = 1, 1, 10, 0.0
    dd.TWO_STAGE, dd.WITH_BOX_REFINE = two_stage, True
    cfg.MODEL.CO_DETR.AUX_HEADS = list(heads)
    cfg.MODEL.DEFORMABLE_DETR.MIXED_SELECTION = mixed
    cfg.MODEL.CO_DETR.RCNN.FC_DIM = 32
    cfg.MODEL.DEVICE = "cpu"
    return cfg


def shapes_of(model):
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def co_model():
    torch.manual_seed(0)
    return build_model(tiny_cfg()).eval()


@pytest.fixture(scope="module")
def official():
    return official_state_dict_of(official_keys())


# --- the full model -----------------------------------------------------------------
def test_every_official_tensor_fills_the_co_detr_model(co_model, official):
    assert detect_official_detr(official) == "co_deformable_detr"
    converted, report = convert_official_codetr({"meta": {"CLASSES": COCO_THING_NAMES}, "state_dict": official},
                                                shapes_of(co_model))
    assert set(converted) == set(co_model.state_dict())
    co_model.load_state_dict(converted, strict=True)  # every model tensor filled, shapes equal
    counters = [k for k in official if k.endswith("num_batches_tracked")]
    # Nothing dropped but the BatchNorm counters; the neck's missing conv biases are zeros.
    assert report.dropped == {} and report.counters_dropped == len(counters)
    assert report.zero_filled == [f"input_proj.{i}.0.bias" for i in range(4)]
    assert all(not converted[k].any() for k in report.zero_filled)
    assert report.converted == len(converted)
    # Every other official tensor went somewhere (converted or stacked into the ATSS scales).
    used = len(converted) - len(report.zero_filled) + 5 - 1
    assert used == len(official) - len(counters)

    torch.testing.assert_close(converted["query_generator.tgt_embed.weight"], official["query_head.query_embedding.weight"])
    torch.testing.assert_close(converted["input_proj.3.0.weight"], official["neck.extra_convs.0.conv.weight"])
    torch.testing.assert_close(converted["heads.bbox_embed.1.layers.2.weight"],
                               official["query_head.reg_branches.1.4.weight"])
    torch.testing.assert_close(converted["pyramid_extra.1.weight"], official["query_head.downsample.1.weight"])
    torch.testing.assert_close(converted["aux_heads.1.scales"],
                               torch.stack([official[f"bbox_head.0.scales.{i}.scale"] for i in range(5)]))
    torch.testing.assert_close(converted["aux_heads.1.cls_tower.1.bias"], official["bbox_head.0.cls_convs.0.gn.bias"])
    torch.testing.assert_close(converted["aux_heads.0.roi_heads.box_predictor.bbox_pred.weight"],
                               official["roi_head.0.bbox_head.fc_reg.weight"])
    # Co-heads: roi_head (official pass 0) -> the model's FasterRCNNAuxHead (aux_heads.0),
    # bbox_head (pass 1) -> its ATSSAuxHead (aux_heads.1).
    torch.testing.assert_close(converted["positive_queries.box_proj.1.weight"], official[T + "aux_pos_trans.1.weight"])
    torch.testing.assert_close(converted["positive_queries.feature_norm.0.bias"], official[T + "pos_feats_norm.0.bias"])


def test_heads_in_the_other_order_get_their_own_co_head_tensors(official):
    model = build_model(tiny_cfg(heads=("ATSSAuxHead", "FasterRCNNAuxHead")))
    converted, _ = convert_official_codetr(official, shapes_of(model))
    torch.testing.assert_close(converted["positive_queries.box_proj.0.weight"], official[T + "aux_pos_trans.1.weight"])
    torch.testing.assert_close(converted["positive_queries.box_proj.1.weight"], official[T + "aux_pos_trans.0.weight"])
    torch.testing.assert_close(converted["aux_heads.0.centerness.bias"], official["bbox_head.0.atss_centerness.bias"])


def test_head_embedding_scalar_adds_the_same_as_the_official_one(co_model, official):
    converted, report = convert_official_codetr(official, shapes_of(co_model))
    assert report.head_embed_broadcast
    query_pos = torch.randn(3, 32)
    for k in range(2):  # official: query_pos + head_pos_embed.weight[k] ([1], broadcast)
        expected = query_pos + official[T + "head_pos_embed.weight"][k]
        torch.testing.assert_close(query_pos + converted["positive_queries.head_embed.weight"][k], expected)


# --- equalities with the official computation ------------------------------------------
def test_decoder_layer_computes_what_the_mmcv_layer_computes(co_model, official):
    """mmcv's DetrTransformerDecoderLayer, (self_attn, norm, cross_attn, norm, ffn, norm)
    with residuals inside the attentions and the FFN, written out with the official tensors
    (self-attention: torch's nn.MultiheadAttention; cross-attention: a deformable attention
    holding the official ``attentions.1`` tensors under their own names) == the converted
    project layer."""
    converted, _ = convert_official_codetr(official, shapes_of(co_model))
    p = T + "decoder.layers.0."
    torch.manual_seed(1)
    mha = nn.MultiheadAttention(32, 4)
    mha.load_state_dict({k: official[p + "attentions.0.attn." + k] for k in mha.state_dict()})
    cross = MSDeformAttn(32, 4, 4, 4)
    cross.load_state_dict({k: official[p + "attentions.1." + k] for k in cross.state_dict()})

    def layer_norm(x, n):
        return F.layer_norm(x, (32,), official[f"{p}norms.{n}.weight"], official[f"{p}norms.{n}.bias"])

    shapes = torch.tensor([[4, 4], [2, 2], [1, 1], [1, 1]])
    start = torch.cat([shapes.new_zeros(1), shapes.prod(1).cumsum(0)[:-1]])
    memory = torch.randn(2, int(shapes.prod(1).sum()), 32)
    tgt, pos = torch.randn(2, 5, 32), torch.randn(2, 5, 32)
    reference = torch.rand(2, 5, 4, 4) * 0.5 + 0.25
    with torch.no_grad():
        q = (tgt + pos).transpose(0, 1)
        x = layer_norm(tgt + mha(q, q, tgt.transpose(0, 1))[0].transpose(0, 1), 0)
        x = layer_norm(x + cross(x + pos, reference, memory, shapes, start), 1)
        hidden = F.relu(F.linear(x, official[p + "ffns.0.layers.0.0.weight"], official[p + "ffns.0.layers.0.0.bias"]))
        expected = layer_norm(x + F.linear(hidden, official[p + "ffns.0.layers.1.weight"],
                                           official[p + "ffns.0.layers.1.bias"]), 2)
        ours = DeformableDecoderLayer(32, 64, 0.0, n_levels=4, n_heads=4, n_points=4).eval()
        prefix = "transformer.decoder.layers.0."
        ours.load_state_dict({k[len(prefix):]: v for k, v in converted.items() if k.startswith(prefix)})
        got = ours(tgt, pos, reference, memory, shapes, start)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_rpn_anchor_rows_follow_their_anchors(co_model, official):
    """The converted objectness row and delta block of Detectron2's anchor i are the
    official ones of the mmdet anchor with the same width and height (mmdet's base anchors
    of one location: ratio-major, w = size / sqrt(r), h = size * sqrt(r))."""
    converted, _ = convert_official_codetr(official, shapes_of(co_model))
    sizes = rcnn_anchor_sizes([8], 4.0, 3)
    ratios = [0.5, 1.0, 2.0]
    d2 = DefaultAnchorGenerator(sizes=sizes, aspect_ratios=[ratios], strides=[8], offset=0.0)
    d2 = list(d2.cell_anchors.buffers())[0]
    d2_wh = torch.stack([d2[:, 2] - d2[:, 0], d2[:, 3] - d2[:, 1]], 1)
    mm_wh = torch.tensor([[s / math.sqrt(r), s * math.sqrt(r)] for r in ratios for s in sizes[0]])
    cls_old = official["rpn_head.rpn_cls.weight"]
    cls_new = converted["aux_heads.0.rpn.rpn_head.objectness_logits.weight"]
    reg_old, reg_new = official["rpn_head.rpn_reg.bias"], converted["aux_heads.0.rpn.rpn_head.anchor_deltas.bias"]
    for i in range(9):
        j = int((mm_wh - d2_wh[i]).abs().sum(1).argmin())
        torch.testing.assert_close(mm_wh[j], d2_wh[i])
        assert rpn_anchor_order(3, 3)[i] == j
        torch.testing.assert_close(cls_new[i], cls_old[j])
        torch.testing.assert_close(reg_new[4 * i: 4 * i + 4], reg_old[4 * j: 4 * j + 4])


def test_mmdet_coco_labels_are_detectron2_classes():
    # mmdet numbers COCO's categories by increasing id (cat2label over the sorted ids), as
    # Detectron2's contiguous ids: the 80 columns need no reordering.
    rows = coco_detection_class_rows()
    assert len(rows) == 80 and rows == sorted(rows)


# --- models without auxiliary heads ---------------------------------------------------------
def test_plain_deformable_detr_takes_the_inference_part_and_reports_the_rest(caplog):
    model = build_model(tiny_cfg(meta="DeformableDetr", mixed=False))
    official = official_state_dict_of(official_keys(mixed=False))
    with caplog.at_level(logging.INFO, logger="updetr_d2.methods.codetr.convert"):
        converted = convert_for_model(official, shapes_of(model))
    model.load_state_dict(converted, strict=True)
    _, report = convert_official_codetr(official, shapes_of(model))
    training_only = [k for k in official if k.startswith(TRAINING_ONLY_PREFIXES)]
    assert sum(report.dropped.values()) == len(training_only) == 6 + 8 + 17 + 4 + 1 + 4 * 2 * 2
    assert report.dropped["rpn_head."] == 6 and report.dropped["bbox_head."] == 17
    assert report.dropped[T + "head_pos_embed."] == 1 and report.dropped["query_head.downsample."] == 4
    line = caplog.records[-1].getMessage()
    assert f"{len(training_only)} training-only tensors left out" in line and "rpn_head.* (6)" in line


def test_co_detr_without_aux_heads_keeps_mixed_selection(official):
    model = build_model(tiny_cfg(heads=()))
    converted, report = convert_official_codetr(official, shapes_of(model))
    model.load_state_dict(converted, strict=True)
    assert "query_head.downsample." not in report.dropped  # the model keeps its pyramid level
    assert report.dropped["roi_head."] == 8


def test_mixed_selection_file_refuses_a_plain_deformable_detr(official):
    model = build_model(tiny_cfg(meta="DeformableDetr", mixed=False))
    with pytest.raises(ValueError, match=r"query_head\.query_embedding\.weight -> query_generator\.tgt_embed.*") as e:
        convert_official_codetr(official, shapes_of(model))
    assert "MIXED_SELECTION True" in str(e.value)


def test_one_stage_file_fills_the_learned_point_queries():
    model = build_model(tiny_cfg(meta="DeformableDetr", mixed=False, two_stage=False))
    official = official_state_dict_of(official_keys(two_stage=False))
    converted, _ = convert_official_codetr(official, shapes_of(model))
    model.load_state_dict(converted, strict=True)
    torch.testing.assert_close(converted["query_generator.query_embed.weight"],
                               official["query_head.query_embedding.weight"])


# --- errors --------------------------------------------------------------------------
def test_missing_tensor_is_named(co_model, official):
    broken = {k: v for k, v in official.items() if k != T + "decoder.layers.0.norms.1.weight"}
    with pytest.raises(ValueError, match=r"1 model tensors the file does not fill: transformer\.decoder\.layers\.0"
                                         r"\.norm1\.weight"):
        convert_official_codetr(broken, shapes_of(co_model))


def test_unknown_key_is_named(co_model, official):
    with pytest.raises(ValueError, match=r"1 official keys of no known Co-Deformable-DETR part: query_head\.extra"):
        convert_official_codetr({**official, "query_head.extra.weight": torch.zeros(1)}, shapes_of(co_model))


def test_aux_head_the_model_lacks_is_named(official):
    model = build_model(tiny_cfg(heads=("ATSSAuxHead",)))
    with pytest.raises(ValueError, match="no FasterRCNNAuxHead") as e:
        convert_official_codetr(official, shapes_of(model))
    assert "rpn_head.rpn_cls.weight" in str(e.value) and f"{T}aux_pos_trans.0.weight" in str(e.value)


def test_wrong_feedforward_width_is_a_shape_error(official):
    cfg = tiny_cfg()
    cfg.MODEL.DETR.DIM_FEEDFORWARD = 48
    with pytest.raises(ValueError, match=r"shapes differ .*linear1\.weight \(64, 32\)"):
        convert_official_codetr(official, shapes_of(build_model(cfg)))


# --- files --------------------------------------------------------------------------
META = {  # what mmcv/mmdet write (tools/train.py, runner, CheckpointHook)
    "env_info": "sys.platform: linux\nPyTorch: 1.11.0", "config": "model = dict(type='CoDETR')", "seed": 1234,
    "exp_name": "co_deformable_detr_r50_1x_coco.py", "mmdet_version": "2.25.3", "CLASSES": COCO_THING_NAMES,
    "epoch": 12, "iter": 88704, "mmcv_version": "1.7.0", "time": "Thu Jan  5 10:00:00 2023",
    "hook_msgs": {"last_ckpt": "work_dirs/epoch_12.pth"},
}


@pytest.mark.parametrize("entry, legacy", [
    ("model", False),
    ("model", True),  # mmdet's publish_model writes the legacy (non-zip) format
    ("state_dict", False),  # mmdet's own layout
])
def test_official_file_loads_through_the_checkpointer(co_model, official, entry, legacy, tmp_path):
    path = str(tmp_path / "co_deformable_detr_r50_1x_coco.pth")
    torch.save({"meta": META, entry: official}, path, _use_new_zipfile_serialization=not legacy)
    model = build_model(tiny_cfg())
    DetrCheckpointer(model).load(path)  # no allow_unsafe
    expected, _ = convert_official_codetr(official, shapes_of(co_model))
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, expected[key], msg=key)


def test_meta_classes_must_match_the_model(co_model, official):
    with pytest.raises(ValueError, match="trained on 3 classes"):
        convert_official_codetr({"meta": {"CLASSES": ("a", "b", "c")}, "state_dict": official}, shapes_of(co_model))


def test_official_config_holds_the_r50_checkpoint():
    """The registered config's model has every official R50 tensor with its shape."""
    path = official_layout_config("co_deformable_detr")
    cfg = get_cfg()
    add_updetr_config(cfg)
    cfg.merge_from_file(os.path.join(ROOT, path))
    cfg.MODEL.DEVICE = "cpu"
    assert cfg.MODEL.DETR.SIZE_DIVISIBILITY in (0, 1) and cfg.INPUT.FORMAT == "RGB"
    model = build_model(cfg)
    keys = official_keys(depth=50, d=256, ffn=2048, heads=8, enc=6, dec=6, queries=300, fc=1024)
    official = {k: torch.empty(s) for k, s in keys.items()}  # shapes only
    converted, report = convert_official_codetr(official, shapes_of(model))
    assert set(converted) == set(shapes_of(model)) and not report.dropped


def test_official_yaml_and_lazy_build_the_same_model():
    from detectron2.config import LazyConfig, instantiate

    path = os.path.join(ROOT, official_layout_config("co_deformable_detr"))
    cfg = get_cfg()
    add_updetr_config(cfg)
    cfg.merge_from_file(path)
    cfg.MODEL.DEVICE = "cpu"
    lazy = LazyConfig.load(path.replace(".yaml", ".py"))
    models = [build_model(cfg), instantiate(lazy.model)]
    assert shapes_of(models[0]) == shapes_of(models[1])
    for m in models:
        assert type(m.query_generator).__name__ == "ProposalQueries" and m.size_divisibility == 0
        assert m.transformer.encoder.layers[0].linear1.out_features == 2048
        assert m.aux_heads[0].roi_heads.box_pooler.canonical_box_size == 224
        assert m.pixel_mean.flatten().tolist() == pytest.approx([123.675, 116.28, 103.53])
    resize = lazy.dataloader.test.mapper.augmentations[0]
    assert (resize.short_edge_length, resize.max_size) == (800, 1333)
    assert (cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST) == (800, 1333)
    assert lazy.dataloader.test.mapper.image_format == cfg.INPUT.FORMAT == "RGB"


def test_mixed_selection_feeds_the_learned_content_to_the_decoder():
    """Inference with MIXED_SELECTION: the decoder's content queries are the learned ones,
    so changing them changes the detections; without it the model has none."""
    from helpers import fake_input

    torch.manual_seed(0)
    model = build_model(tiny_cfg()).eval()
    image = [fake_input(96, 128, [[10, 10, 50, 60]], [0], seed=1)]
    with torch.no_grad():
        before = model(image)[0]["instances"].scores
        model.query_generator.tgt_embed.weight.add_(1.0)
        after = model(image)[0]["instances"].scores
    assert not torch.allclose(before, after)
    assert build_model(tiny_cfg(mixed=False)).query_generator is None
    cfg = tiny_cfg(two_stage=False)
    with pytest.raises(ValueError, match="MIXED_SELECTION.*TWO_STAGE"):
        build_model(cfg)
