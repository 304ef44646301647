"""Prediction heads applied to every decoder layer's output."""
import copy
import math
from typing import Dict

import torch
from torch import nn

from ..layers.box_ops import inverse_sigmoid
from ..layers.mlp import MLP
from ..layers.precision import float32_region

__all__ = ["BoxRefinementHeads", "DetrPredictionHeads", "MLP"]  # MLP: re-exported, it lives in layers


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

    @float32_region  # boxes and logits in float32 under mixed precision (layers/precision.py)
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


class BoxRefinementHeads(nn.Module):
    """Deformable DETR's heads: per query, C sigmoid class logits (focal loss, no
    no-object column) and a box relative to the reference its layer started from,
    ``sigmoid(MLP(h) + logit(reference))`` (only x, y for point references).

    ``share=True``: one class and one box head for every layer (plain Deformable DETR);
    ``False``: one per layer (iterative box refinement, where the decoder also uses the
    box heads to move its references). ``two_stage`` adds one more pair (the last) that
    scores and refines the encoder's proposals. ``box_references``: the decoder starts
    from boxes (two-stage proposals, anchor queries), not points.

    ``forward(hs, references)``: ``hs`` [L, B, Q, d], ``references`` [L, B, Q, 2|4] (the
    reference each layer started from) -> ``pred_logits``/``pred_boxes`` of the last
    layer and, with ``aux_loss``, ``aux_outputs`` for the earlier ones.
    """

    def __init__(
        self,
        hidden_dim: int,
        num_classes: int,
        num_layers: int,
        share: bool = True,
        two_stage: bool = False,
        aux_loss: bool = True,
        prior_prob: float = 0.01,
        box_references: bool = False,
    ):
        super().__init__()
        count = num_layers + (1 if two_stage else 0)
        class_embed = nn.Linear(hidden_dim, num_classes)
        # Focal-loss prior: every class starts at probability prior_prob (Lin et al., 2017).
        nn.init.constant_(class_embed.bias, -math.log((1 - prior_prob) / prior_prob))
        bbox_embed = MLP(hidden_dim, hidden_dim, 4, 3)
        nn.init.zeros_(bbox_embed.layers[-1].weight)
        nn.init.zeros_(bbox_embed.layers[-1].bias)
        if share:
            # The same module in every slot: shared weights (and one set of keys each, as
            # the original, so its checkpoints load).
            self.class_embed = nn.ModuleList([class_embed] * count)
            self.bbox_embed = nn.ModuleList([bbox_embed] * count)
        else:
            self.class_embed = nn.ModuleList(copy.deepcopy(class_embed) for _ in range(count))
            self.bbox_embed = nn.ModuleList(copy.deepcopy(bbox_embed) for _ in range(count))
        if not (two_stage or box_references):
            # Boxes around reference points start small (sigmoid(-2) = 0.12 of the image);
            # refined layers start from the previous box. A box reference (a proposal, an
            # anchor) already has its size: the head starts as the identity.
            nn.init.constant_(self.bbox_embed[0].layers[-1].bias[2:], -2.0)
        self.num_layers = num_layers
        self.share = share
        self.aux_loss = aux_loss

    @property
    def decoder_box_heads(self):
        """The per-layer box heads the decoder refines its references with, or None."""
        return None if self.share else self.bbox_embed[: self.num_layers]

    def boxes(self, layer: int, hs: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        delta = self.bbox_embed[layer](hs)
        logit_ref = inverse_sigmoid(reference)
        if reference.shape[-1] == 4:
            return (delta + logit_ref).sigmoid()
        return torch.cat([delta[..., :2] + logit_ref, delta[..., 2:]], -1).sigmoid()

    @float32_region  # boxes and logits in float32 under mixed precision (layers/precision.py)
    def forward(self, hs: torch.Tensor, references: torch.Tensor) -> Dict:
        layers = range(hs.shape[0])
        if not (self.aux_loss and self.training):
            layers = layers[-1:]  # earlier layers are only supervised, never read out
        outs = [
            {"pred_logits": self.class_embed[l](hs[l]), "pred_boxes": self.boxes(l, hs[l], references[l])}
            for l in layers
        ]
        out = dict(outs[-1])
        if len(outs) > 1:
            out["aux_outputs"] = outs[:-1]
        return out
