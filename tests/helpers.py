"""Small builders shared by the model tests."""
import importlib.util
import os

import torch
from detectron2.structures import Boxes, Instances

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_tool(name):
    """The script tools/<name>.py as a module (the tools are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "tools", name + ".py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fake_input(h, w, boxes, classes, seed=0):
    """A Detectron2 model input: a random (seeded) 0-255 image with ground-truth boxes
    (absolute xyxy) and classes."""
    inst = Instances((h, w))
    inst.gt_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
    inst.gt_classes = torch.tensor(classes, dtype=torch.int64)
    image = torch.randint(0, 255, (3, h, w), generator=torch.Generator().manual_seed(seed)).float()
    return {"image": image, "instances": inst, "height": h, "width": w}


def dn_group_mask(num_dn_groups, group_size, num_matching):
    """DN-DETR's mask over [dn (num_dn_groups * group_size), match (num_matching)], bool,
    True = blocked, written directly from the paper's rules as a reference: DN groups do
    not see each other, matching queries see no DN query, DN queries see their own group
    and every matching query; nothing blocked without ground truth (group_size 0)."""
    dn = num_dn_groups * group_size
    total = dn + num_matching
    blocked = torch.zeros(total, total, dtype=torch.bool)
    blocked[dn:, :dn] = True
    for g in range(num_dn_groups):
        s = slice(g * group_size, (g + 1) * group_size)
        blocked[s, :dn] = True
        blocked[s, s] = False
    return blocked


# A two-layer transformer and image-like encoder inputs for attention-mask tests.
TINY_D, TINY_NHEAD = 16, 2


def tiny_transformer():
    from updetr_d2.layers.transformer import Transformer

    torch.manual_seed(0)
    return Transformer(
        d_model=TINY_D, nhead=TINY_NHEAD, num_encoder_layers=1, num_decoder_layers=2,
        dim_feedforward=32, dropout=0.0,
    ).eval()


def tiny_image_inputs(B=2, H=3, W=4, seed=1):
    """(src, mask, pos) of a batch of two, the second with a padded column."""
    g = torch.Generator().manual_seed(seed)
    src = torch.randn(B, TINY_D, H, W, generator=g)
    mask = torch.zeros(B, H, W, dtype=torch.bool)
    mask[1, :, -1] = True
    pos = torch.randn(B, TINY_D, H, W, generator=g)
    return src, mask, pos
