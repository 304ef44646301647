"""Official DETR checkpoints (facebookresearch/detr) -> this project's names:
``checkpoint.official_detr`` (the detector), ``methods.panoptic.convert`` (DETRsegm's mask
head) and ``tools/convert_detr_checkpoint.py``.

The official key lists with shapes (``data/official_detr_panoptic_keys.json``) were made
once from the official model code (DETR-R50 with ``num_classes=91``; ``DETRsegm`` of
DETR-R50 with ``num_classes=250``). The synthetic state dicts here have those keys and
shapes; to keep R50-size dicts cheap, each large tensor is one seeded random number
expanded to its shape (distinct per key, so a tensor routed to the wrong key is seen),
and the class heads are fully random (their rows are gathered).
"""
import argparse
import json
import os
import pickle

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data.datasets.builtin_meta import COCO_CATEGORIES
from detectron2.modeling import build_model

from updetr_d2 import add_updetr_config
from updetr_d2.checkpoint import DetrCheckpointer
from updetr_d2.checkpoint.official_detr import (
    coco_detection_class_rows,
    convert_official_detr,
    detect_official_detr,
    load_official_checkpoint,
    official_resnet_depth,
)
from updetr_d2.checkpoint.safe_load import UnsafeCheckpointError, load_checkpoint_file
from updetr_d2.methods.panoptic.convert import (
    COCO_PANOPTIC_CLASS_ROWS,
    MASK_HEAD_KEYS,
    convert_official_detr_panoptic,
)

from helpers import ROOT, load_tool

KEYS_FILE = os.path.join(os.path.dirname(__file__), "data", "official_detr_panoptic_keys.json")
CONFIGS = {
    "detection": "configs/detr/detr_r50.yaml",
    "panoptic": "projects/Panoptic/configs/detr_r50_panoptic_mask.yaml",
}


class NotAllowed:
    """A class no allow-list names (module level, so pickle can save it)."""


@pytest.fixture(scope="module")
def official_shapes():
    with open(KEYS_FILE) as f:
        return json.load(f)


def synthetic(shapes, seed=0):
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in shapes.items():
        if "class_embed" in key or torch.Size(shape).numel() <= 4096:
            state[key] = torch.randn(shape, generator=g)
        else:  # a view of one number: R50-size dicts in a few kB
            state[key] = torch.randn(1, generator=g).expand(shape)
    return state


@pytest.fixture(scope="module")
def official(official_shapes):
    return {layout: synthetic(shapes, seed=i) for i, (layout, shapes) in enumerate(official_shapes.items())}


@pytest.fixture(scope="module")
def project_models():
    models = {}
    for layout, config in CONFIGS.items():
        cfg = get_cfg()
        add_updetr_config(cfg)
        cfg.merge_from_file(os.path.join(ROOT, config))
        cfg.MODEL.DEVICE = "cpu"
        models[layout] = build_model(cfg)
    return models


def expected_name(key: str) -> str:
    """The project key of an official key, by the renaming rules written out again
    independently (string replacements, as the official d2/converter.py does)."""
    if key.startswith(("bbox_attention.", "mask_head.")):
        return "plugins.0." + key
    if key.startswith("detr."):
        key = key[len("detr."):]
    if key.startswith("backbone.0.body."):
        key = key[len("backbone.0.body."):]
        if not key.startswith("layer"):
            key = "stem." + key
        for t in (1, 2, 3, 4):
            key = key.replace(f"layer{t}.", f"res{t + 1}.")
        for t in (1, 2, 3):
            key = key.replace(f"bn{t}.", f"conv{t}.norm.")
        key = key.replace("downsample.0.", "shortcut.").replace("downsample.1.", "shortcut.norm.")
        return "backbone.backbone." + key
    if key == "query_embed.weight":
        return "query_generator.query_embed.weight"
    if key.startswith(("class_embed.", "bbox_embed.")):
        return "heads." + key
    assert key.startswith(("transformer.", "input_proj.")), key
    return key


def convert(layout, state):
    if layout == "panoptic":
        return convert_official_detr_panoptic(state)
    converted, unmapped = convert_official_detr(
        state, class_rows=coco_detection_class_rows(), no_object_row=91)
    assert unmapped == []
    return converted


def test_the_key_lists_are_the_official_r50_models(official_shapes):
    panoptic, detection = official_shapes["panoptic"], official_shapes["detection"]
    assert panoptic["detr.class_embed.weight"] == [251, 256]
    assert detection["class_embed.weight"] == [92, 256]
    assert {k[len("detr."):]: v for k, v in panoptic.items() if k.startswith("detr.")}.keys() - {
        "class_embed.weight", "class_embed.bias"} == detection.keys() - {"class_embed.weight", "class_embed.bias"}
    assert sorted(k for k in panoptic if not k.startswith("detr.")) == sorted(MASK_HEAD_KEYS)
    assert not any("num_batches_tracked" in k for k in detection)


@pytest.mark.parametrize("layout", ["detection", "panoptic"])
def test_detect_layout(official, layout):
    assert detect_official_detr(official[layout]) == layout
    assert official_resnet_depth(official[layout], "detr." if layout == "panoptic" else "") == 50


def test_detect_rejects_other_layouts(project_models, official):
    assert detect_official_detr(project_models["detection"].state_dict()) is None
    partial = {k: v for k, v in official["detection"].items() if not k.startswith("transformer.")}
    assert detect_official_detr(partial) is None
    assert detect_official_detr([1, 2]) is None


@pytest.mark.parametrize("layout", ["detection", "panoptic"])
def test_every_tensor_is_used_and_every_project_tensor_filled(official, project_models, layout):
    state = official[layout]
    converted = convert(layout, state)
    model_state = project_models[layout].state_dict()
    # The project's state dicts hold every tensor a converted file must fill: its only
    # other buffers (pixel_mean, pixel_std, the criterion's no-object weight) are
    # non-persistent, rebuilt from the config, so nothing is excused here.
    assert set(converted) == set(model_state)
    assert len(converted) == len(state)
    for key, value in converted.items():
        assert value.shape == model_state[key].shape, key
    for key, value in state.items():
        if "class_embed" not in key:
            assert torch.equal(converted[expected_name(key)], value), key
    project_models[layout].load_state_dict(converted, strict=True)
    loaded = project_models[layout].state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in converted.items())


def test_panoptic_class_gather(official):
    state = official["panoptic"]
    converted = convert_official_detr_panoptic(state)
    for name in ("weight", "bias"):
        old, new = state[f"detr.class_embed.{name}"], converted[f"heads.class_embed.{name}"]
        assert new.shape[0] == len(COCO_CATEGORIES) + 1 == 134
        for c, category in enumerate(COCO_CATEGORIES):
            assert torch.equal(new[c], old[category["id"]]), (c, category["name"])
        assert torch.equal(new[-1], old[250])


def test_detection_class_gather(official):
    state = official["detection"]
    converted, _ = convert_official_detr(state, class_rows=coco_detection_class_rows(), no_object_row=91)
    things = [c for c in COCO_CATEGORIES if c["isthing"]]
    assert coco_detection_class_rows() == sorted(c["id"] for c in things) and len(things) == 80
    for name in ("weight", "bias"):
        old, new = state[f"class_embed.{name}"], converted[f"heads.class_embed.{name}"]
        assert new.shape[0] == 81
        for c, category in enumerate(things):
            assert torch.equal(new[c], old[category["id"]]), (c, category["name"])
        assert torch.equal(new[-1], old[91])


def test_panoptic_plugin_index(official):
    converted = convert_official_detr_panoptic(official["panoptic"], plugin_index=2)
    assert sum(k.startswith("plugins.2.") for k in converted) == len(MASK_HEAD_KEYS)
    assert not any(k.startswith("plugins.0.") for k in converted)
    with pytest.raises(ValueError, match="plugin_index"):
        convert_official_detr_panoptic(official["panoptic"], plugin_index=-1)


@pytest.mark.parametrize("layout", ["detection", "panoptic"])
def test_an_extra_key_is_named(official, layout):
    state = dict(official[layout], **{"foo.bar": torch.zeros(1), "detr.transformer.encoder.extra": torch.zeros(1)})
    if layout == "detection":
        _, unmapped = convert_official_detr(state, class_rows=coco_detection_class_rows(), no_object_row=91)
        assert unmapped == ["foo.bar", "detr.transformer.encoder.extra"]
    else:
        with pytest.raises(ValueError, match=r"2 keys.*foo\.bar.*detr\.transformer\.encoder\.extra"):
            convert_official_detr_panoptic(state)


@pytest.mark.parametrize("missing, named", [
    ("detr.backbone.0.body.layer3.2.bn2.running_var", "backbone.backbone.res4.2.conv2.norm.running_var"),
    ("detr.transformer.decoder.layers.3.multihead_attn.in_proj_bias",
     "transformer.decoder.layers.3.multihead_attn.in_proj_bias"),
    ("detr.bbox_embed.layers.2.bias", "heads.bbox_embed.layers.2.bias"),
    ("mask_head.adapter2.weight", "plugins.0.mask_head.adapter2.weight"),
])
def test_a_missing_key_is_named(official, missing, named):
    # Detectron2's FrozenBatchNorm2d fills missing running stats on load with zeros and
    # ones, so load_state_dict(strict=True) would not tell: the converter must.
    state = {k: v for k, v in official["panoptic"].items() if k != missing}
    with pytest.raises(ValueError, match="unfilled") as e:
        convert_official_detr_panoptic(state)
    assert named in str(e.value)


def test_a_class_head_of_another_dataset_is_refused(official):
    state = dict(official["detection"])
    state["class_embed.weight"], state["class_embed.bias"] = torch.zeros(21, 256), torch.zeros(21)
    with pytest.raises(ValueError, match="21 rows"):
        convert_official_detr(state, class_rows=coco_detection_class_rows(), no_object_row=91)


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_namespace_loads_through_the_allow_list_only(tmp_path, zip_format):
    # The 2020 releases may predate torch's zip format: both formats load.
    path = str(tmp_path / "official.pth")
    torch.save({"model": {"w": torch.arange(3.0)}, "epoch": 7,
                "args": argparse.Namespace(lr=1e-4, masks=True, output_dir="out")}, path,
               _use_new_zipfile_serialization=zip_format)
    # Without the allow-list a weights-only load refuses the Namespace ...
    with pytest.raises(pickle.UnpicklingError, match="Namespace"):
        torch.load(path, weights_only=True)
    with pytest.raises(UnsafeCheckpointError):
        load_checkpoint_file(path)
    # ... with it, the file loads, still weights-only.
    data = load_official_checkpoint(path)
    assert isinstance(data["args"], argparse.Namespace) and data["args"].masks is True
    assert torch.equal(data["model"]["w"], torch.arange(3.0)) and data["epoch"] == 7
    # The allow-list was scoped to the load.
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)


def test_other_objects_stay_refused(tmp_path):
    path = str(tmp_path / "other.pth")
    torch.save({"model": {}, "args": argparse.Namespace(), "extra": NotAllowed()}, path)
    with pytest.raises(UnsafeCheckpointError, match="NotAllowed"):
        load_official_checkpoint(path)


@pytest.fixture(scope="module")
def tool():
    return load_tool("convert_detr_checkpoint")


def test_cli_converts_a_panoptic_file(tool, official, project_models, tmp_path, capsys):
    source, target = str(tmp_path / "detr-panoptic.pth"), str(tmp_path / "out" / "converted.pth")
    torch.save({"model": official["panoptic"], "args": argparse.Namespace(masks=True)}, source)
    assert tool.main([source, target]) == 0  # checks against the config's model too
    out = capsys.readouterr().out
    assert "panoptic" in out and "251 -> 134 rows" in out and "detr_r50_panoptic_mask_official.yaml" in out
    data = torch.load(target, weights_only=True)
    assert data["__author__"] == "official DETR (converted by updetr_d2)"
    assert data["matching_heuristics"] is False
    assert data["model"].keys() == convert_official_detr_panoptic(official["panoptic"]).keys()
    assert os.path.isfile(target + ".sha256")
    assert [f for f in os.listdir(tmp_path / "out") if f.endswith(".tmp")] == []
    # MODEL.WEIGHTS reads it through the project's checkpointer: every key by its name.
    checkpointer = DetrCheckpointer(project_models["panoptic"])
    incompatible = checkpointer._load_model(checkpointer._load_file(target))
    assert not (incompatible.missing_keys or incompatible.unexpected_keys or incompatible.incorrect_shapes)


def test_cli_converts_a_detection_file(tool, official, tmp_path, capsys):
    source, target = str(tmp_path / "detr.pth"), str(tmp_path / "converted.pth")
    torch.save(official["detection"], source)  # a bare state dict loads too
    assert tool.main([source, target]) == 0
    out = capsys.readouterr().out
    assert "92 -> 81 rows" in out and "configs/detr/detr_r50_official.yaml" in out


def test_cli_refuses_an_unknown_layout_listing_its_keys(tool, tmp_path, capsys):
    source, target = str(tmp_path / "other.pth"), str(tmp_path / "converted.pth")
    torch.save({"model": {"encoder.weight": torch.zeros(2), "foo.bar": torch.zeros(1)}}, source)
    assert tool.main([source, target]) == 1
    err = capsys.readouterr().err
    assert "not an official checkpoint" in err and "encoder.weight" in err and "foo.bar" in err
    assert not os.path.exists(target)


def test_cli_refuses_unmapped_keys(tool, official, tmp_path, capsys):
    source, target = str(tmp_path / "detr.pth"), str(tmp_path / "converted.pth")
    torch.save({"model": dict(official["detection"], **{"foo.bar": torch.zeros(1)})}, source)
    assert tool.main([source, target]) == 1
    assert "foo.bar" in capsys.readouterr().err
    assert not os.path.exists(target)


def test_the_model_check_names_unfilled_and_extra_keys(official, project_models):
    from updetr_d2.checkpoint.official_detr import convert_official_layout

    shapes = {k: tuple(v.shape) for k, v in project_models["detection"].state_dict().items()}
    del shapes["heads.bbox_embed.layers.1.bias"]
    shapes["extra.weight"] = (1,)
    with pytest.raises(ValueError, match="2 differences") as e:
        convert_official_layout("detection", official["detection"], shapes)
    assert "unfilled: extra.weight (1,)" in str(e.value)
    assert "not in the model: heads.bbox_embed.layers.1.bias" in str(e.value)


def test_cli_maps_a_panoptic_box_stage_head_to_the_panoptic_classes(tool, official):
    # The official panoptic recipe first trains a plain DETR on the 250 panoptic ids.
    state = dict(official["detection"])
    state["class_embed.weight"], state["class_embed.bias"] = torch.randn(251, 256), torch.randn(251)
    layout, config, opts = tool.plan({"model": state})
    assert layout == "detection" and config == "projects/Panoptic/configs/detr_r50_panoptic_box_official.yaml"
    converted = tool.convert(state, tool.build_model(os.path.join(ROOT, config), opts))
    rows = list(COCO_PANOPTIC_CLASS_ROWS) + [250]
    assert torch.equal(converted["heads.class_embed.weight"], state["class_embed.weight"][rows])


# --- the checkpointer detects official files and converts them on load -----------------------
@pytest.mark.parametrize("layout", ["detection", "panoptic"])
def test_the_checkpointer_converts_official_files_on_load(tmp_path, official, project_models, layout):
    """MODEL.WEIGHTS = an official .pth (with its argparse.Namespace): every model tensor
    is filled from it, without the unsafe switch."""
    from updetr_d2.checkpoint import DetrCheckpointer

    path = tmp_path / "official.pth"
    torch.save({"model": official[layout], "args": argparse.Namespace(lr=1e-4), "epoch": 299}, path)
    model = project_models[layout]
    expected = convert(layout, official[layout])
    DetrCheckpointer(model).load(str(path))
    state = model.state_dict()
    assert set(expected) == set(state)
    for key in ("query_generator.query_embed.weight", "heads.class_embed.weight",
                "transformer.decoder.layers.0.multihead_attn.in_proj_weight"):
        assert torch.equal(state[key], expected[key])
    if layout == "panoptic":
        assert torch.equal(state["plugins.0.mask_head.out_lay.weight"], official[layout]["mask_head.out_lay.weight"])


def test_an_official_head_onto_another_class_count_is_an_error_naming_the_file(tmp_path, official, project_models):
    from updetr_d2.checkpoint import DetrCheckpointer

    path = tmp_path / "official_panoptic.pth"
    torch.save({"model": official["panoptic"], "args": argparse.Namespace()}, path)
    with pytest.raises(ValueError, match="official_panoptic.pth.*one MaskHead plug-in"):
        DetrCheckpointer(project_models["detection"]).load(str(path))
    bare = {k[len("detr."):]: v for k, v in official["panoptic"].items() if k.startswith("detr.")}
    torch.save(bare, tmp_path / "box_stage.pth")  # a panoptic box-stage DETR: 251 rows, no Namespace
    with pytest.raises(ValueError, match="box_stage.pth.*251 rows.*model has 80 classes"):
        DetrCheckpointer(project_models["detection"]).load(str(tmp_path / "box_stage.pth"))
