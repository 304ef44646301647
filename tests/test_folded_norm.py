"""Frozen batch norms folded into their convolutions (layers/folded_norm.py): the same
features and gradients as the unfolded backbone, the same checkpoint keys, statistics read
at every call, and DETR's backbone folded (and channels-last) when it is built."""
import copy
import os

import torch

import updetr_d2  # noqa: F401
from detectron2.config import get_cfg
from detectron2.layers import Conv2d, FrozenBatchNorm2d
from detectron2.modeling import build_backbone
from updetr_d2 import add_updetr_config
from updetr_d2.layers.folded_norm import FoldedNormConv2d, fold_frozen_batchnorm
from updetr_d2.modeling.backbone import MaskedBackbone

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def r50_cfg():
    cfg = get_cfg()
    add_updetr_config(cfg)
    cfg.merge_from_file(os.path.join(ROOT, "configs", "detr", "detr_r50.yaml"))
    cfg.MODEL.DEVICE = "cpu"
    return cfg


def randomise_norms(module, seed=0):
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, FrozenBatchNorm2d):
            n = m.weight.numel()
            m.weight.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.copy_(torch.rand(n, generator=g) * 0.4 - 0.2)
            m.running_mean.copy_(torch.rand(n, generator=g) * 0.2 - 0.1)
            m.running_var.copy_(torch.rand(n, generator=g) * 1.5 + 0.5)


def test_a_folded_conv_equals_conv_then_norm_with_its_gradients():
    torch.manual_seed(0)
    conv = Conv2d(8, 16, 3, padding=1, bias=True, norm=FrozenBatchNorm2d(16), activation=torch.relu)
    randomise_norms(conv)
    folded = copy.deepcopy(conv)
    assert fold_frozen_batchnorm(folded) == 1 and type(folded) is FoldedNormConv2d
    x = torch.randn(2, 8, 12, 10, requires_grad=True)
    x2 = x.detach().clone().requires_grad_()
    a, b = conv(x), folded(x2)
    assert torch.allclose(a, b, atol=1e-5, rtol=1e-5)
    a.square().sum().backward()
    b.square().sum().backward()
    assert torch.allclose(x.grad, x2.grad, atol=1e-4, rtol=1e-4)
    assert torch.allclose(conv.weight.grad, folded.weight.grad, atol=1e-3, rtol=1e-4)
    assert torch.allclose(conv.bias.grad, folded.bias.grad, atol=1e-3, rtol=1e-4)
    assert conv.norm.weight.grad is None and folded.norm.weight.grad is None  # frozen: buffers


def test_r50_backbone_folded_gives_the_same_features_and_keys():
    torch.manual_seed(0)
    backbone = build_backbone(r50_cfg())
    randomise_norms(backbone)
    folded = copy.deepcopy(backbone)
    # stem + 16 bottlenecks x 3 + 4 shortcuts
    assert fold_frozen_batchnorm(folded) == 53
    assert list(folded.state_dict()) == list(backbone.state_dict())
    x = torch.randn(1, 3, 64, 96)
    a, b = backbone(x), folded(x)
    for name in a:
        assert torch.allclose(a[name], b[name], rtol=1e-4, atol=1e-4 * a[name].abs().max().item()), name


def test_statistics_loaded_after_folding_are_used():
    conv = Conv2d(4, 4, 1, bias=False, norm=FrozenBatchNorm2d(4))
    fold_frozen_batchnorm(conv)
    x = torch.randn(1, 4, 3, 3)
    before = conv(x)
    state = conv.state_dict()
    state["norm.running_mean"] = torch.full((4,), 1.0)
    conv.load_state_dict(state)
    assert torch.allclose(conv(x), before - 1.0, atol=1e-6)  # weight 1, var 1 - eps: shift by the mean


def test_detr_backbone_is_built_folded_and_unfrozen_norms_are_left_alone():
    backbone = MaskedBackbone(build_backbone(r50_cfg()), ["res5"])  # what Detr and DeformableDetr build
    convs = [m for m in backbone.modules() if isinstance(m, Conv2d)]
    assert convs and all(type(m) is FoldedNormConv2d for m in convs)
    plain = Conv2d(4, 4, 1, norm=torch.nn.GroupNorm(2, 4))
    assert fold_frozen_batchnorm(plain) == 0 and type(plain) is Conv2d


def test_masked_backbone_runs_channels_last_and_gives_the_plain_backbones_features():
    from detectron2.structures import ImageList

    torch.manual_seed(0)
    plain = build_backbone(r50_cfg())
    randomise_norms(plain)
    masked = MaskedBackbone(copy.deepcopy(plain), ["res5"])
    conv_weights = [m.weight for m in masked.modules() if isinstance(m, Conv2d)]
    assert all(w.is_contiguous(memory_format=torch.channels_last) for w in conv_weights)
    images = ImageList.from_tensors([torch.randn(3, 64, 96), torch.randn(3, 48, 80)], 32)
    features, levels = masked.forward_all(images)
    expected = plain(images.tensor)
    scale = expected["res5"].abs().max().item()
    assert torch.allclose(features["res5"], expected["res5"], rtol=1e-4, atol=1e-4 * scale)
    assert [tuple(m.shape) for _, m in levels] == [(2, 2, 3)]
