"""Small builders shared by the model tests."""
import torch
from detectron2.structures import Boxes, Instances


def fake_input(h, w, boxes, classes, seed=0):
    """A Detectron2 model input: a random (seeded) 0-255 image with ground-truth boxes
    (absolute xyxy) and classes."""
    inst = Instances((h, w))
    inst.gt_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
    inst.gt_classes = torch.tensor(classes, dtype=torch.int64)
    image = torch.randint(0, 255, (3, h, w), generator=torch.Generator().manual_seed(seed)).float()
    return {"image": image, "instances": inst, "height": h, "width": w}
