"""Prediction heads applied to every decoder layer's output."""
from typing import Dict

import torch
from torch import nn
from torch.nn import functional as F


class MLP(nn.Module):
    """``num_layers`` linear layers with ReLU between them."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int):
        super().__init__()
        dims = [input_dim] + [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, x):
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x


class DetrPredictionHeads(nn.Module):
    """Class logits (``num_classes`` + no-object) and sigmoid cxcywh boxes per query.

    ``forward(hs)`` maps decoder states ``[L, B, Q, d]`` to DETR's output contract:
    ``pred_logits``/``pred_boxes`` of the last layer and, with ``aux_loss``, the same
    for each earlier layer in ``aux_outputs``.
    """

    def __init__(self, hidden_dim: int, num_classes: int, aux_loss: bool = True):
        super().__init__()
        self.class_embed = nn.Linear(hidden_dim, num_classes + 1)
        self.bbox_embed = MLP(hidden_dim, hidden_dim, 4, 3)
        self.aux_loss = aux_loss

    def forward(self, hs: torch.Tensor) -> Dict:
        with_aux = self.aux_loss and self.training
        if not with_aux:
            hs = hs[-1:]  # earlier layers are only supervised, never read out
        logits = self.class_embed(hs)
        boxes = self.bbox_embed(hs).sigmoid()
        out = {"pred_logits": logits[-1], "pred_boxes": boxes[-1]}
        if with_aux:
            out["aux_outputs"] = [
                {"pred_logits": a, "pred_boxes": b} for a, b in zip(logits[:-1], boxes[:-1])
            ]
        return out
