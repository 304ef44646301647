"""DETR's optimiser set up the Detectron2 way: parameter groups and full-model clipping."""
import pytest
import torch
from torch import nn

import updetr_d2  # noqa: F401
from detectron2.config import get_cfg
from updetr_d2 import add_updetr_config
from updetr_d2.solver import adamw, build_optimizer, detr_param_groups


class Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 4))
        self.backbone[0].weight.requires_grad_(False)  # a frozen stage
        self.head = nn.Linear(4, 2)


def solver_cfg(**solver):
    cfg = get_cfg()
    add_updetr_config(cfg)
    cfg.SOLVER.OPTIMIZER = "ADAMW"
    cfg.SOLVER.BASE_LR = 1e-4
    cfg.SOLVER.WEIGHT_DECAY = 1e-4
    for key, value in solver.items():
        setattr(cfg.SOLVER, key, value)
    return cfg


def test_param_groups_lower_the_backbone_lr_and_skip_frozen():
    model = Toy()
    rest, backbone = detr_param_groups(model, base_lr=1e-4, weight_decay=1e-4, backbone_multiplier=0.1)
    assert rest["lr"] == 1e-4 and backbone["lr"] == pytest.approx(1e-5)
    ids = lambda ps: {id(p) for p in ps}  # noqa: E731
    assert ids(rest["params"]) == ids(model.head.parameters())
    assert ids(backbone["params"]) == {id(model.backbone[0].bias), *ids(model.backbone[1].parameters())}


def test_full_model_clipping_matches_clip_grad_norm():
    torch.manual_seed(0)
    model, reference = Toy(), Toy()
    reference.load_state_dict(model.state_dict())
    cfg = solver_cfg(BASE_LR=0.0, WEIGHT_DECAY=0.0)
    cfg.SOLVER.CLIP_GRADIENTS.ENABLED = True
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE = "full_model"
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE = 0.1
    optimizer = build_optimizer(cfg, model)
    assert isinstance(optimizer, torch.optim.AdamW)
    x = torch.randn(8, 3)
    for m in (model, reference):
        (m.head(m.backbone(x)) * 100).sum().backward()
    torch.nn.utils.clip_grad_norm_([p for p in reference.parameters() if p.requires_grad], 0.1)
    optimizer.step()
    for p, q in zip(model.parameters(), reference.parameters()):
        if p.requires_grad:
            assert torch.allclose(p.grad, q.grad)
    total = torch.norm(torch.stack([p.grad.norm() for p in model.parameters() if p.grad is not None]))
    assert total.item() == pytest.approx(0.1, rel=1e-4)
    # The optimiser state round-trips as a plain AdamW's.
    torch.optim.AdamW(detr_param_groups(reference, 0.0, 0.0)).load_state_dict(optimizer.state_dict())


def test_lazy_adamw_without_clipping_is_plain_adamw():
    optimizer = adamw(Toy().parameters(), lr=1e-3)
    assert type(optimizer) is torch.optim.AdamW


def test_sgd_keeps_detectron2s_optimizer():
    cfg = get_cfg()
    add_updetr_config(cfg)
    assert type(build_optimizer(cfg, Toy())) is torch.optim.SGD
    cfg.SOLVER.OPTIMIZER = "Adagrad"
    with pytest.raises(ValueError, match="SOLVER.OPTIMIZER"):
        build_optimizer(cfg, Toy())


def test_adamw_is_fused_where_available_and_updates_like_the_default():
    from updetr_d2.solver import fused_adamw

    torch.manual_seed(0)
    a = torch.nn.Linear(8, 4)
    b = torch.nn.Linear(8, 4)
    b.load_state_dict(a.state_dict())
    fused = fused_adamw(a.parameters(), lr=1e-2, weight_decay=1e-4)  # a generator of parameters
    default = torch.optim.AdamW(b.parameters(), lr=1e-2, weight_decay=1e-4)
    assert fused.defaults.get("fused") is True
    for _ in range(3):
        x = torch.randn(5, 8)
        for model, opt in ((a, fused), (b, default)):
            opt.zero_grad()
            model(x).square().sum().backward()
            opt.step()
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.allclose(p, q, atol=1e-6)
    assert fused_adamw([torch.nn.Parameter(torch.ones(2))], lr=1e-3, foreach=True).defaults["fused"] in (None, False)
