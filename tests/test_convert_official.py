"""Official DETR-family checkpoints other than DETR's own -> this project's models:
Deformable DETR (checkpoint.official_deformable), DN-Deformable-DETR (methods.dn.convert),
UP-DETR (methods.updetr.convert), through the registry, the checkpointer and the tool.

The synthetic official state dicts are built from the tiny project models' key lists
renamed to the official names by rules written out here independently of the
converters (ResNet-18, width 32, 1 encoder and 2 decoder layers), with random values;
the class heads get the official row counts.
"""
import argparse
import importlib
import math
import os
import re

import pytest
import torch

import updetr_d2  # noqa: F401  (compat fixes and registrations first)
from detectron2.modeling import build_model
from updetr_d2.checkpoint import DetrCheckpointer
from updetr_d2.checkpoint.official_detr import (
    coco_detection_class_rows,
    convert_official_layout,
    detect_official_detr,
    official_layout_config,
    official_layout_opts,
)
from updetr_d2.config import load_yaml_config
from updetr_d2.methods.dn.convert import official_ref_point_head_weight

from helpers import ROOT, load_tool

TINY = ["MODEL.DEVICE", "cpu", "MODEL.RESNETS.DEPTH", "18", "MODEL.RESNETS.RES2_OUT_CHANNELS", "64",
        "MODEL.DETR.HIDDEN_DIM", "32", "MODEL.DETR.NHEADS", "2", "MODEL.DETR.DIM_FEEDFORWARD", "64",
        "MODEL.DETR.ENC_LAYERS", "1", "MODEL.DETR.DEC_LAYERS", "2", "MODEL.DETR.NUM_OBJECT_QUERIES", "10",
        "INPUT.QUERY_PATCH.NUM_PATCHES", "2"]
LAYOUTS = ["deformable", "deformable_refine", "deformable_two_stage", "deformable_two_stage_refine",
           "dn_deformable", "updetr_pretraining", "updetr_finetuned", "detection"]


def tiny_model(layout):
    config = official_layout_config(layout)
    opts = ["MODEL.DEFORMABLE_DETR.WITH_BOX_REFINE", "False"] if layout == "deformable_two_stage" else []
    torch.manual_seed(0)
    return build_model(load_yaml_config(os.path.join(ROOT, config), TINY + opts)).eval()


def official_name(key: str, layout: str) -> str:
    """Project key -> official key (the inverse renaming, written out again)."""
    if key.startswith("backbone.backbone."):
        key = key[len("backbone.backbone."):]
        key = re.sub(r"^stem\.conv1\.norm\.", "bn1.", key).replace("stem.conv1.", "conv1.")
        key = re.sub(r"^res(\d)\.", lambda m: f"layer{int(m.group(1)) - 1}.", key)
        key = re.sub(r"conv(\d)\.norm\.", r"bn\1.", key)
        key = key.replace("shortcut.norm.", "downsample.1.").replace("shortcut.", "downsample.0.")
        return "backbone.0.body." + key
    renames = {"query_generator.reference_points.": "transformer.reference_points.",
               "query_generator.base.tgt_embed.": "tgt_embed.", "query_generator.base.anchor_embed.": "refpoint_embed.",
               "query_generator.label_enc.": "label_enc.", "query_generator.patch2query.": "patch2query.",
               "query_generator.": "", "heads.": ""}
    for old, new in renames.items():
        if key.startswith(old):
            return new + key[len(old):]
    return key


def synthetic_official(model, layout, seed=0):
    """The official state dict of ``layout`` matching ``model``'s sizes (random values)."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, value in model.state_dict().items():
        shape = list(value.shape)
        if key.startswith("heads.class_embed") or key == "query_generator.label_enc.weight":
            shape[0] = {"updetr_pretraining": 3, "updetr_finetuned": 92, "detection": 92}.get(layout, 91)
            shape[0] += key == "query_generator.label_enc.weight"
        state[official_name(key, layout)] = torch.randn(shape, generator=g)
    if layout in ("deformable", "deformable_two_stage"):  # one shared head in every slot
        for key in list(state):
            m = re.match(r"^(class_embed|bbox_embed)\.(\d+)\.(.+)$", key)
            if m:
                state[key] = state[f"{m.group(1)}.0.{m.group(3)}"]
    for key in list(state):  # the official decoder's own references to the heads
        m = re.match(r"^(class_embed|bbox_embed)\.(\d+)\.(.+)$", key)
        refine = layout in ("deformable_refine", "deformable_two_stage_refine", "dn_deformable")
        if m and ((m.group(1) == "bbox_embed" and refine) or (m.group(1) == "class_embed" and "two_stage" in layout)):
            state["transformer.decoder." + key] = state[key].clone()
    return state


@pytest.fixture(scope="module")
def cases():
    out = {}
    for layout in LAYOUTS:
        model = tiny_model(layout)
        out[layout] = (model, synthetic_official(model, layout, seed=len(out)))
    return out


def shapes(model):
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_official_tensor_lands_and_every_project_tensor_is_filled(cases, layout):
    model, state = cases[layout]
    assert detect_official_detr(state) == layout
    converted = convert_official_layout(layout, state, shapes(model))  # raises on any gap
    assert set(converted) == set(model.state_dict())
    used = set()
    for key, value in converted.items():
        name = official_name(key, layout)
        used.add(name)
        if "class_embed" in key or "label_enc" in key:
            continue
        expected = state[name]
        if key == "transformer.decoder.ref_point_head.layers.0.weight":
            expected = official_ref_point_head_weight(expected)
        assert torch.equal(value, expected), key
        # Round trip: back under the official name, the official tensor again.
        back = official_ref_point_head_weight(value) if "ref_point_head.layers.0.weight" in key else value
        assert torch.equal(back, state[name])
    leftovers = set(state) - used
    assert all(k.startswith("transformer.decoder.") and "_embed." in k for k in leftovers), leftovers
    model.load_state_dict(converted, strict=True)


@pytest.mark.parametrize("layout", ["deformable", "deformable_refine", "dn_deformable", "updetr_pretraining"])
def test_class_rows(cases, layout):
    model, state = cases[layout]
    converted = convert_official_layout(layout, state, shapes(model))
    if layout == "updetr_pretraining":  # (patch, no-object) = official rows (1, 2)
        assert torch.equal(converted["heads.class_embed.weight"], state["class_embed.weight"][[1, 2]])
        return
    rows = coco_detection_class_rows()
    for i in range(2):
        assert torch.equal(converted[f"heads.class_embed.{i}.weight"], state[f"class_embed.{i}.weight"][rows])
    if layout == "dn_deformable":
        assert torch.equal(converted["query_generator.label_enc.weight"], state["label_enc.weight"][rows + [91]])


def test_plain_deformable_heads_are_shared_and_give_the_official_outputs(cases):
    model, state = cases["deformable"]
    model.load_state_dict(convert_official_layout("deformable", state, shapes(model)))
    heads = model.heads
    assert heads.share and all(h is heads.class_embed[0] for h in heads.class_embed)
    hs = torch.randn(2, 1, 10, 32)
    references = torch.rand(2, 1, 10, 2)
    out = heads.eval()(hs, references)
    # The official model's outputs for the last layer, computed from the official tensors.
    rows = coco_detection_class_rows()
    logits = hs[-1] @ state["class_embed.1.weight"][rows].T + state["class_embed.1.bias"][rows]
    assert torch.allclose(out["pred_logits"], logits, atol=1e-5)
    x = hs[-1]
    for i in range(3):
        x = x @ state[f"bbox_embed.1.layers.{i}.weight"].T + state[f"bbox_embed.1.layers.{i}.bias"]
        x = x.relu() if i < 2 else x
    ref = torch.logit(references[-1])
    expected = torch.cat([x[..., :2] + ref, x[..., 2:]], -1).sigmoid()
    assert torch.allclose(out["pred_boxes"], expected, atol=1e-5)


def test_shared_copies_that_differ_are_refused(cases):
    model, state = cases["deformable"]
    state = dict(state, **{"class_embed.1.bias": state["class_embed.1.bias"] + 1})
    with pytest.raises(ValueError, match=r"class_embed\.1\.bias"):
        convert_official_layout("deformable", state, shapes(model))
    model, state = cases["deformable_refine"]
    state = dict(state, **{"transformer.decoder.bbox_embed.0.layers.0.bias": torch.zeros(32)})
    with pytest.raises(ValueError, match="values differ"):
        convert_official_layout("deformable_refine", state, shapes(model))


def official_dab_sine(boxes, d):
    """DN-DETR's gen_sineembed_for_position for d = width (blocks y, x, w, h), written out."""
    half = d // 2
    dim_t = 10000 ** (2 * (torch.arange(half) // 2) / half)
    blocks = []
    for c in (1, 0, 2, 3):
        p = boxes[..., c, None] * 2 * math.pi / dim_t
        blocks.append(torch.stack((p[..., 0::2].sin(), p[..., 1::2].cos()), -1).flatten(-2))
    return torch.cat(blocks, -1)


def test_dn_anchor_positional_queries_equal_the_official(cases):
    from updetr_d2.layers.position_encoding import sine_embed_coordinates

    model, state = cases["dn_deformable"]
    model.load_state_dict(convert_official_layout("dn_deformable", state, shapes(model)))
    boxes = torch.rand(5, 4)
    ours = model.transformer.decoder.ref_point_head(sine_embed_coordinates(boxes, 16))
    x = official_dab_sine(boxes, 32)
    for i in range(2):
        x = x @ state[f"transformer.decoder.ref_point_head.layers.{i}.weight"].T
        x = x + state[f"transformer.decoder.ref_point_head.layers.{i}.bias"]
        x = x.relu() if i == 0 else x
    assert torch.allclose(ours, x, atol=1e-5)


def test_a_missing_tensor_is_listed(cases):
    model, state = cases["deformable_refine"]
    state = {k: v for k, v in state.items() if k != "transformer.level_embed"}
    assert detect_official_detr(state) is None  # a marker: no layout at all
    state = {k: v for k, v in cases["deformable_refine"][1].items() if k != "input_proj.2.1.bias"}
    with pytest.raises(ValueError, match=r"unfilled: input_proj\.2\.1\.bias"):
        convert_official_layout("deformable_refine", state, shapes(model))


def test_the_checkpointer_loads_an_official_file_with_its_namespace(tmp_path, cases):
    model, state = cases["deformable_refine"]
    path = tmp_path / "r50_deformable_detr_plus_iterative_bbox_refinement-checkpoint.pth"
    torch.save({"model": state, "args": argparse.Namespace(dilation=False, num_queries=10), "epoch": 49}, path)
    DetrCheckpointer(model).load(str(path))  # no allow_unsafe
    assert torch.equal(model.state_dict()["query_generator.query_embed.weight"], state["query_embed.weight"])


def test_an_unknown_official_layout_fails_naming_the_file_and_keys(tmp_path, cases):
    model, state = cases["deformable"]
    state = dict(state, **{"transformer.decoder.mystery.weight": torch.zeros(1)})
    del state["transformer.reference_points.weight"]
    path = tmp_path / "other_detr.pth"
    torch.save({"model": state, "args": argparse.Namespace()}, path)
    with pytest.raises(ValueError, match=r"other_detr\.pth.*no registered layout") as e:
        DetrCheckpointer(model).load(str(path))
    assert "transformer.decoder.mystery.weight" in str(e.value)
    assert "transformer.reference_points.weight" in str(e.value)


def test_dn_dab_detr_is_a_clear_error(cases):
    model, _ = cases["detection"]
    state = {"backbone.0.body.conv1.weight": torch.zeros(1), "refpoint_embed.weight": torch.zeros(1),
             "label_enc.weight": torch.zeros(1), "input_proj.weight": torch.zeros(1),
             "transformer.decoder.layers.0.ca_qcontent_proj.weight": torch.zeros(1),
             "transformer.decoder.layers.3.sa_kpos_proj.bias": torch.zeros(1)}
    assert detect_official_detr(state) == "dn_dab_detr"
    with pytest.raises(ValueError, match=r"no counterpart model.*layers\.N\.sa_kpos_proj\.bias"):
        convert_official_layout("dn_dab_detr", state, shapes(model))


def test_dc5_files_need_the_dc5_config(tmp_path, cases):
    model, state = cases["detection"]
    path = tmp_path / "detr-r50-dc5.pth"
    torch.save({"model": state, "args": argparse.Namespace(dilation=True)}, path)
    with pytest.raises(ValueError, match="detr_r50_dc5_official.py"):
        DetrCheckpointer(model).load(str(path))
    assert official_layout_config("detection", state, argparse.Namespace(dilation=True)).endswith("dc5_official.py")


def test_opts_follow_the_file():
    state = {"input_proj.0.0.weight": torch.zeros(32, 2048, 1, 1), "query_embed.weight": torch.zeros(300, 64)}
    opts = official_layout_opts("deformable", state)
    assert opts[:4] == ["MODEL.RESNETS.OUT_FEATURES", "['res5']", "MODEL.DEFORMABLE_DETR.IN_FEATURES", "['res5']"]
    assert opts[4:] == ["MODEL.DEFORMABLE_DETR.NUM_FEATURE_LEVELS", "1"]


def test_the_tool_converts_any_registered_layout(tmp_path, cases, capsys):
    tool = load_tool("convert_detr_checkpoint")
    assert tool.main(["--list-layouts"]) == 0
    assert "dn_deformable" in capsys.readouterr().out
    model, state = cases["deformable_two_stage_refine"]
    source, target = str(tmp_path / "two_stage.pth"), str(tmp_path / "two_stage_d2.pth")
    torch.save({"model": state, "args": argparse.Namespace(num_queries=10)}, source)
    config = os.path.join(ROOT, official_layout_config("deformable_two_stage_refine"))
    assert tool.main(["--config-file", config, source, target] + TINY) == 0
    out = capsys.readouterr().out
    assert "deformable_two_stage_refine" in out and "transformer.decoder.class_embed.0.weight" in out
    saved = torch.load(target, weights_only=True)["model"]
    assert set(saved) == set(model.state_dict())


# The preprocessing configs/detr/detr_r50_official.yaml sets for the official weights.
OFFICIAL_PREPROCESSING = ("MODEL.PIXEL_MEAN", "MODEL.PIXEL_STD", "MODEL.DETR.SIZE_DIVISIBILITY", "INPUT.FORMAT",
                          "INPUT.MIN_SIZE_TEST", "INPUT.MAX_SIZE_TEST")


def _config_value(cfg, key):
    for part in key.split("."):
        cfg = cfg[part]
    return cfg


@pytest.mark.parametrize("stage", ["box", "mask"])
def test_the_panoptic_layouts_run_with_the_official_preprocessing(stage):
    """The panoptic box stage (a "detection" file with the 251-row panoptic head) and the
    panoptic mask model build from configs that pad as the official code (to the batch's
    largest image), unlike the training configs they extend (multiples of 32)."""
    from detectron2.config import LazyConfig, instantiate

    importlib.import_module("updetr_d2.methods.panoptic.convert")  # registers the "panoptic" layout

    name = f"projects/Panoptic/configs/detr_r50_panoptic_{stage}_official"
    box_stage = {"class_embed.weight": torch.zeros(251, 256)}
    registered = (official_layout_config("detection", box_stage) if stage == "box"
                  else official_layout_config("panoptic"))
    assert registered == name + ".yaml"

    cfg = load_yaml_config(os.path.join(ROOT, name + ".yaml"), TINY)
    detection = load_yaml_config(os.path.join(ROOT, official_layout_config("detection")))
    assert [_config_value(cfg, k) for k in OFFICIAL_PREPROCESSING] == [
        _config_value(detection, k) for k in OFFICIAL_PREPROCESSING]
    base = load_yaml_config(os.path.join(ROOT, name.replace("_official", "") + ".yaml"))
    assert base.MODEL.DETR.SIZE_DIVISIBILITY == 32  # what the official weights must not get
    assert cfg.MODEL.DETR.NUM_CLASSES == 133
    model = build_model(cfg)
    assert model.size_divisibility == 0
    assert (stage == "mask") == any(k.startswith("plugins.0.mask_head.") for k in model.state_dict())

    lazy = LazyConfig.load(os.path.join(ROOT, name + ".py"))
    lazy.model.backbone.backbone.pop("pretrained", None)  # no ImageNet weights needed
    assert instantiate(lazy.model).size_divisibility == 0
    mapper = lazy.dataloader.test.mapper
    resize = mapper.augmentations[0]
    assert (mapper.image_format, resize.short_edge_length, resize.max_size) == (
        cfg.INPUT.FORMAT, cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)
    assert list(lazy.model.pixel_mean) == list(cfg.MODEL.PIXEL_MEAN)
    assert list(lazy.model.pixel_std) == list(cfg.MODEL.PIXEL_STD)
