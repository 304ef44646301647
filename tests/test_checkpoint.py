"""ResNet weights in the formats users have (torchvision, SwAV, MoCo, DINO, Detectron2
.pkl) load through DetrCheckpointer; unsafe pickles need an explicit flag; the
project's own checkpoints load as before. Synthetic weights only, CPU."""
import argparse
import os
import pickle

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

import updetr_d2  # noqa: F401
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_model
from detectron2.modeling.backbone.resnet import build_resnet_backbone
from detectron2.solver.lr_scheduler import LRMultiplier
from fvcore.common.param_scheduler import CosineParamScheduler
from updetr_d2 import add_updetr_config
from updetr_d2.checkpoint import (
    DetrCheckpointer,
    UnsafeCheckpointError,
    convert_resnet_state_dict,
    load_checkpoint_file,
)

from helpers import load_tool

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEADS_FC = ["fc.weight", "fc.bias"]


# --- synthetic weights and models ---------------------------------------------------------
@pytest.fixture(scope="module")
def tv_resnet50():
    """torchvision ResNet-50 with random weights and non-trivial BN statistics, eval mode."""
    torch.manual_seed(0)
    net = torchvision.models.resnet50(weights=None)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
                m.num_batches_tracked.fill_(7)
    return net.eval()


@pytest.fixture(scope="module")
def tv_state(tv_resnet50):
    return {k: v.clone() for k, v in tv_resnet50.state_dict().items()}


@pytest.fixture(scope="module")
def tv_features(tv_resnet50):
    torch.manual_seed(1)
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        y = tv_resnet50.maxpool(tv_resnet50.relu(tv_resnet50.bn1(tv_resnet50.conv1(x))))
        feats = {}
        for i in range(1, 5):
            y = getattr(tv_resnet50, f"layer{i}")(y)
            feats[f"res{i + 1}"] = y
    return x, feats


def d2_resnet50(norm="BN", freeze_at=0):
    cfg = get_cfg()
    r = cfg.MODEL.RESNETS
    r.DEPTH, r.NORM, r.STRIDE_IN_1X1 = 50, norm, False
    r.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.BACKBONE.FREEZE_AT = freeze_at  # >0 turns those stages' BN into FrozenBN
    torch.manual_seed(123)
    return build_resnet_backbone(cfg, ShapeSpec(channels=3)).eval()


def expected_d2_keys(model):
    return {k for k in model.state_dict() if not k.endswith("num_batches_tracked")}


def assert_features_match(d2_feats, tv_feats, names):
    for name in names:
        a, b = d2_feats[name], tv_feats[name]
        assert a.shape == b.shape, name
        scale = max(1.0, b.abs().max().item())
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4 * scale, msg=name)


def swav_checkpoint(tv):
    sd = {"module." + k: v for k, v in tv.items() if not k.startswith("fc.")}
    sd["module.projection_head.0.weight"] = torch.randn(16, 2048)
    sd["module.projection_head.0.bias"] = torch.randn(16)
    sd["module.prototypes.weight"] = torch.randn(30, 16)
    return {"epoch": 800, "state_dict": sd, "optimizer": {"state": {}, "param_groups": []}}


def moco_checkpoint(tv):
    sd = {}
    for k, v in tv.items():
        if k.startswith("fc."):
            continue
        sd["module.encoder_q." + k] = v
        sd["module.encoder_k." + k] = v + 1.0  # a different network: must not be taken
    sd["module.encoder_q.fc.0.weight"] = torch.randn(32, 2048)
    sd["module.encoder_q.fc.2.weight"] = torch.randn(8, 32)
    sd["module.encoder_k.fc.0.weight"] = torch.randn(32, 2048)
    sd["module.queue"] = torch.randn(8, 64)
    sd["module.queue_ptr"] = torch.zeros(1, dtype=torch.long)
    return {"epoch": 200, "arch": "resnet50", "state_dict": sd}


def dino_checkpoint(tv, with_teacher=True):
    teacher = {"backbone." + k: v for k, v in tv.items() if not k.startswith("fc.")}
    teacher["head.mlp.0.weight"] = torch.randn(16, 2048)
    teacher["head.last_layer.weight_g"] = torch.randn(64, 1)
    student = {"module.backbone." + k: v - 1.0 for k, v in tv.items() if not k.startswith("fc.")}
    student["module.head.mlp.0.weight"] = torch.randn(16, 2048)
    ckpt = {"student": student, "epoch": 100, "dino_loss": {"center": torch.zeros(1, 64)}}
    if with_teacher:
        ckpt["teacher"] = teacher
    return ckpt


FORMATS = {
    "swav": (swav_checkpoint, {"module.projection_head.0.weight", "module.projection_head.0.bias",
                               "module.prototypes.weight"}),
    "moco": (moco_checkpoint, {"module.queue", "module.queue_ptr", "module.encoder_q.fc.0.weight",
                               "module.encoder_q.fc.2.weight", "module.encoder_k.fc.0.weight",
                               "module.encoder_k.conv1.weight", "module.encoder_k.layer4.2.bn3.bias"}),
    "dino": (dino_checkpoint, {"head.mlp.0.weight", "head.last_layer.weight_g"}),
}


# --- conversion -----------------------------------------------------------------------------
def test_torchvision_keys_cover_detectron2_resnet50(tv_state):
    converted, report = convert_resnet_state_dict(tv_state)
    model = d2_resnet50("BN")
    model_sd = model.state_dict()
    assert set(converted) == expected_d2_keys(model)
    for k, v in converted.items():
        assert v.shape == model_sd[k].shape, k
    assert converted["res2.0.shortcut.norm.running_var"] is tv_state["layer1.0.downsample.1.running_var"]
    assert torch.equal(converted["stem.conv1.norm.running_mean"], tv_state["bn1.running_mean"])
    assert torch.equal(converted["res5.2.conv3.norm.weight"], tv_state["layer4.2.bn3.weight"])
    assert report.format == "torchvision" and report.depth == 50
    assert report.blocks_per_stage == (3, 4, 6, 3)
    assert sorted(report.skipped_heads) == sorted(HEADS_FC) and report.skipped_unknown == []
    assert len(report.dropped_buffers) == 53 and len(report.converted) == len(converted)
    assert "fc.weight" in report.summary()


@pytest.mark.parametrize("norm,freeze_at", [("BN", 0), ("FrozenBN", 2)])
def test_torchvision_pth_loads_into_detectron2_resnet(tmp_path, tv_state, tv_features, norm, freeze_at):
    path = str(tmp_path / "resnet50.pth")
    torch.save(tv_state, path)
    model = d2_resnet50(norm, freeze_at)
    ckpt = DetrCheckpointer(model)
    checkpoint = ckpt._load_file(path)
    assert checkpoint["__author__"] == "updetr_d2 converted from torchvision"
    assert checkpoint["matching_heuristics"] is True
    incompatible = ckpt._load_model(checkpoint)
    assert all(k.endswith("num_batches_tracked") for k in incompatible.missing_keys)
    assert not incompatible.unexpected_keys and not incompatible.incorrect_shapes
    assert ckpt.conversion_report.format == "torchvision"
    converted, _ = convert_resnet_state_dict(tv_state)
    for k, v in model.state_dict().items():
        if k in converted:
            assert torch.equal(v, converted[k]), k
    x, tv_feats = tv_features
    with torch.no_grad():
        feats = model(x)
    assert_features_match(feats, tv_feats, ["res2", "res3", "res4", "res5"])


def test_torchvision_pth_loads_into_detr_r50(tmp_path, tv_state, tv_features, caplog):
    path = str(tmp_path / "resnet50.pth")
    torch.save(tv_state, path)
    cfg = get_cfg()
    add_updetr_config(cfg)
    cfg.merge_from_file(os.path.join(ROOT, "configs", "detr", "detr_r50.yaml"))
    cfg.MODEL.DEVICE = "cpu"
    detr = build_model(cfg).eval()
    ckpt = DetrCheckpointer(detr)
    with caplog.at_level("INFO"):
        ckpt.load(path)
    assert "Converted ResNet weights" in caplog.text and "fc.weight" in caplog.text
    converted, _ = convert_resnet_state_dict(tv_state)
    backbone_sd = {k[len("backbone.backbone."):]: v for k, v in detr.state_dict().items()
                   if k.startswith("backbone.backbone.")}
    assert set(backbone_sd) == set(converted)  # FrozenBN everywhere: nothing left over
    for k, v in backbone_sd.items():
        assert torch.equal(v, converted[k]), k
    x, tv_feats = tv_features
    with torch.no_grad():
        feats = detr.backbone.backbone(x)
    assert_features_match(feats, tv_feats, ["res5"])


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_self_supervised_formats_convert_and_load(tmp_path, tv_state, tv_features, fmt):
    make, heads = FORMATS[fmt]
    path = str(tmp_path / f"{fmt}.pth")
    torch.save(make(tv_state), path)
    converted, report = convert_resnet_state_dict(load_checkpoint_file(path))
    reference, _ = convert_resnet_state_dict(tv_state)
    assert report.format == fmt and report.depth == 50
    assert set(converted) == set(reference)
    for k in reference:
        assert torch.equal(converted[k], reference[k]), k
    assert heads <= set(report.skipped_heads), heads - set(report.skipped_heads)
    assert report.skipped_unknown == []

    model = d2_resnet50("BN")
    ckpt = DetrCheckpointer(model)
    incompatible = ckpt._load_model(ckpt._load_file(path))
    assert all(k.endswith("num_batches_tracked") for k in incompatible.missing_keys)
    assert ckpt.conversion_report.format == fmt
    x, tv_feats = tv_features
    with torch.no_grad():
        feats = model(x)
    assert_features_match(feats, tv_feats, ["res5"])


def test_report_names_prefixes_and_containers(tv_state):
    _, swav = convert_resnet_state_dict(swav_checkpoint(tv_state))
    assert swav.container == ("state_dict",) and swav.prefix == "module."
    _, moco = convert_resnet_state_dict(moco_checkpoint(tv_state))
    assert moco.prefix == "module.encoder_q."
    assert "module.encoder_k.layer1.0.conv1.weight" in moco.skipped_heads
    _, dino = convert_resnet_state_dict(dino_checkpoint(tv_state))
    assert dino.container == ("teacher",) and dino.prefix == "backbone."
    assert "student" in dino.ignored_entries
    student_only, dino_s = convert_resnet_state_dict(dino_checkpoint(tv_state, with_teacher=False))
    assert dino_s.container == ("student",) and dino_s.prefix == "module.backbone." and dino_s.format == "dino"
    assert torch.equal(student_only["stem.conv1.weight"], tv_state["conv1.weight"] - 1.0)
    assert "module.head.mlp.0.weight" in dino_s.skipped_heads
    wrapped, rep = convert_resnet_state_dict({"model": {"module." + k: v for k, v in tv_state.items()}})
    assert rep.format == "torchvision (wrapped)" and len(wrapped) == 265


def test_numpy_values_become_tensors(tv_state):
    converted, _ = convert_resnet_state_dict({k: v.numpy() for k, v in tv_state.items()})
    assert all(isinstance(v, torch.Tensor) for v in converted.values())


@pytest.mark.parametrize("bad", [
    {"state_dict": {"encoder.weight": torch.zeros(3, 3), "decoder.bias": torch.zeros(3)}},
    {"patch_embed.proj.weight": torch.zeros(8, 3, 16, 16), "blocks.0.attn.qkv.weight": torch.zeros(24, 8)},
    {"conv1.weight": torch.zeros(64, 3, 7, 7), "bn1.weight": torch.zeros(64)},  # no stages
    {"backbone.bottom_up.stem.conv1.weight": torch.zeros(64, 3, 7, 7)},  # Detectron2 names
    [torch.zeros(3)],
])
def test_non_resnet_raises_value_error(bad):
    with pytest.raises(ValueError) as e:
        convert_resnet_state_dict(bad)
    assert "torchvision" in str(e.value)


def test_detectron2_names_get_a_hint():
    with pytest.raises(ValueError, match="Detectron2 ResNet names"):
        convert_resnet_state_dict({"model": {"backbone.bottom_up.res2.0.conv1.weight": torch.zeros(1)}})


# --- unsafe pickles -------------------------------------------------------------------------
def test_pickled_namespace_needs_the_flag(tmp_path, tv_state):
    path = str(tmp_path / "dino_full.pth")
    ckpt = dino_checkpoint(tv_state)
    ckpt["args"] = argparse.Namespace(arch="resnet50", lr=0.3)
    torch.save(ckpt, path)
    with pytest.raises(UnsafeCheckpointError) as e:
        load_checkpoint_file(path)
    msg = str(e.value)
    assert path in msg and "allow_unsafe=True" in msg and "MODEL.ALLOW_UNSAFE_CHECKPOINTS" in msg
    with pytest.raises(UnsafeCheckpointError):
        DetrCheckpointer(d2_resnet50("BN")).load(path)
    assert load_checkpoint_file(path, allow_unsafe=True)["args"].arch == "resnet50"
    model = d2_resnet50("BN")
    DetrCheckpointer(model, allow_unsafe=True).load(path)
    assert torch.equal(model.state_dict()["res3.1.conv2.weight"], tv_state["layer2.1.conv2.weight"])


def test_from_config_reads_the_flag(tmp_path, tv_state):
    cfg = get_cfg()
    add_updetr_config(cfg)
    assert DetrCheckpointer.from_config(cfg, nn.Linear(1, 1)).allow_unsafe is False
    cfg.MODEL.ALLOW_UNSAFE_CHECKPOINTS = True
    assert DetrCheckpointer.from_config(cfg, nn.Linear(1, 1)).allow_unsafe is True


def zoo_arrays(tv_state):
    converted, _ = convert_resnet_state_dict(tv_state)
    return {k: v.numpy() for k, v in converted.items()}


def test_detectron2_pkl_loads_with_restricted_unpickler(tmp_path, tv_state, tv_features):
    path = str(tmp_path / "R-50-like.pkl")
    with open(path, "wb") as f:
        pickle.dump({"model": zoo_arrays(tv_state), "__author__": "Detectron2 Model Zoo",
                     "matching_heuristics": True}, f, protocol=2)
    model = d2_resnet50("BN")
    DetrCheckpointer(model).load(path)
    x, tv_feats = tv_features
    with torch.no_grad():
        feats = model(x)
    assert_features_match(feats, tv_feats, ["res5"])
    # Caffe2-style blobs take Detectron2's own route; old pickles name numpy.core.multiarray.
    c2 = str(tmp_path / "c2.pkl")
    blob = pickle.dumps({"blobs": {"conv1_w": np.zeros((64, 3, 7, 7), np.float32),
                                   "conv1_w_momentum": np.zeros(1, np.float32)}}, protocol=2)
    with open(c2, "wb") as f:
        f.write(blob.replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
    loaded = DetrCheckpointer(model)._load_file(c2)
    assert loaded["__author__"] == "Caffe2" and list(loaded["model"]) == ["conv1_w"]


def test_pkl_with_arbitrary_objects_is_refused(tmp_path, tv_state):
    path = str(tmp_path / "evil.pkl")
    with open(path, "wb") as f:
        pickle.dump({"model": zoo_arrays(tv_state), "__author__": "x",
                     "args": argparse.Namespace(a=1)}, f)
    with pytest.raises(UnsafeCheckpointError, match="allow_unsafe=True") as e:
        load_checkpoint_file(path)
    assert path in str(e.value) and "argparse" in str(e.value)
    assert load_checkpoint_file(path, allow_unsafe=True)["args"].a == 1


# --- Detectron2's own checkpoints -----------------------------------------------------------
def d2_r18(seed):
    cfg = get_cfg()
    r = cfg.MODEL.RESNETS
    r.DEPTH, r.RES2_OUT_CHANNELS, r.NORM, r.OUT_FEATURES = 18, 64, "BN", ["res5"]
    cfg.MODEL.BACKBONE.FREEZE_AT = 0
    torch.manual_seed(seed)
    return build_resnet_backbone(cfg, ShapeSpec(channels=3))


def training_state(model):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    scheduler = LRMultiplier(optimizer, CosineParamScheduler(1.0, 0.0), max_iter=10)
    return optimizer, scheduler


def test_detectron2_training_checkpoint_loads_exactly(tmp_path):
    model = d2_r18(0)
    optimizer, scheduler = training_state(model)
    model(torch.randn(2, 3, 32, 32))["res5"].sum().backward()
    optimizer.step()
    scheduler.step()
    DetectionCheckpointer(model, str(tmp_path), optimizer=optimizer, scheduler=scheduler).save(
        "x", iteration=5)
    path = str(tmp_path / "x.pth")
    assert set(torch.load(path, weights_only=True)) == {"model", "optimizer", "scheduler", "iteration"}

    restored = d2_r18(1)
    opt2, sched2 = training_state(restored)
    ckpt = DetrCheckpointer(restored, str(tmp_path), optimizer=opt2, scheduler=sched2)
    extra = ckpt.resume_or_load("", resume=True)
    assert ckpt.conversion_report is None and extra["iteration"] == 5
    for (k, a), (k2, b) in zip(model.state_dict().items(), restored.state_dict().items()):
        assert k == k2 and torch.equal(a, b), k
    assert sched2.last_epoch == scheduler.last_epoch
    assert torch.equal(opt2.state_dict()["state"][0]["momentum_buffer"],
                       optimizer.state_dict()["state"][0]["momentum_buffer"])

    # A bare model save (as the tests/tools of this project do) loads the same way.
    DetectionCheckpointer(model, str(tmp_path)).save("bare")
    again = d2_r18(2)
    DetrCheckpointer(again).load(str(tmp_path / "bare.pth"))
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))


def test_model_with_torchvision_names_gets_the_file_unconverted(tmp_path, tv_state):
    class Wrapper(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = torchvision.models.resnet50(weights=None)

    path = str(tmp_path / "tv.pth")
    torch.save({"body." + k: v for k, v in tv_state.items()}, path)
    model = Wrapper()
    ckpt = DetrCheckpointer(model)
    ckpt.load(path)
    assert ckpt.conversion_report is None
    assert torch.equal(model.body.layer3[0].conv2.weight, tv_state["layer3.0.conv2.weight"])


# --- the tool -------------------------------------------------------------------------------
def test_convert_tool_writes_a_detectron2_checkpoint(tmp_path, tv_state, tv_features, capsys):
    tool = load_tool("convert_backbone_weights")
    src, dst = str(tmp_path / "moco.pth.tar"), str(tmp_path / "out" / "r50_d2.pth")
    ckpt = moco_checkpoint(tv_state)
    ckpt["args"] = argparse.Namespace(lr=0.03)
    torch.save(ckpt, src)
    assert tool.main([src, dst]) == 1
    assert "--allow-unsafe" in capsys.readouterr().err
    assert tool.main([src, dst, "--allow-unsafe"]) == 0
    out = capsys.readouterr().out
    assert "moco" in out and "module.queue" in out and "265" in out
    saved = torch.load(dst, weights_only=True)
    assert saved["matching_heuristics"] is True and "moco" in saved["__author__"]
    assert len(saved["model"]) == 265 and "res4.5.conv3.norm.running_var" in saved["model"]
    model = d2_resnet50("FrozenBN")
    DetrCheckpointer(model).load(dst)
    x, tv_feats = tv_features
    with torch.no_grad():
        feats = model(x)
    assert_features_match(feats, tv_feats, ["res2", "res5"])
