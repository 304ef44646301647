"""Deformable DETR's transformer (Zhu et al., 2021): an encoder of multi-scale
deformable self-attention over all feature levels, and a decoder whose queries
self-attend (with the project's masked :class:`MultiheadAttention`, so DN and other
query groups work) and cross-attend the encoder memory by deformable attention
around a reference point or box.

Layout: batch-first, ``[B, S, d]`` for the flattened levels (level 0 first, each
row-major) and ``[B, Q, d]`` for the queries. Reference points are normalised to the
*valid* (unpadded) part of the image: ``(x, y)`` or boxes ``(cx, cy, w, h)`` in [0, 1].

Module and parameter names follow Deformable DETR's (``self_attn``, ``cross_attn``,
``linear1``, ``norm1`` ... , ``level_embed``, ``enc_output``, ``pos_trans``), so
its checkpoints can be mapped onto this one.

Query modes of the decoder:

* given positional queries (Deformable DETR, two-stage): ``query_pos`` is used as is
  in every layer;
* anchor queries (DAB-Deformable-DETR, the base of DN-Deformable-DETR;
  ``anchor_queries=True``): the positional query of every layer is derived from its
  current reference box, ``MLP(sine(box))`` scaled by ``MLP(content)`` after the first
  layer (``query_scale``; DINO leaves the scale out), so a refined box moves the query
  with it.

With ``bbox_embed`` (one box head per layer, iterative box refinement) each layer
updates the reference: ``ref <- sigmoid(head(out) + logit(ref))``, detached before the
next layer, as in the paper. ``look_forward_twice`` (DINO): the next layer still starts
from the detached box, but the box its prediction is relative to is not detached, so
layer l's loss also trains layer l-1's box (one step back, no further).

Two-stage (``two_stage=True``): every encoder position scores a proposal and the best
become the decoder's reference boxes, with positional and content queries from the
boxes' sine embedding (Deformable DETR) or, with ``anchor_queries``, positional queries
derived in the decoder and content learned elsewhere (DINO's mixed query selection:
no ``pos_trans``). ``class_aware_proposals`` (DINO): proposals are scored by their best
class and supervised with the classes, not as one "object" class.
"""
from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from .box_ops import inverse_sigmoid
from .dropout import Dropout
from .ms_deform_attn import MSDeformAttn
from .position_encoding import sine_embed_coordinates
from .attention import MultiheadAttention, build_attention_mask
from .encoder_memory import EncoderMemory
from .mlp import MLP
from .transformer import activation_fn, with_pos_embed

__all__ = [
    "DeformableEncoderLayer",
    "DeformableDecoderLayer",
    "DeformableEncoder",
    "DeformableDecoder",
    "DeformableTransformer",
]


class DeformableEncoderLayer(nn.Module):
    """Deformable self-attention over all levels, then a FFN; post-norm."""

    def __init__(self, d_model=256, d_ffn=1024, dropout=0.1, activation="relu", n_levels=4, n_heads=8, n_points=4,
                 recompute_sampling=False):
        super().__init__()
        self.self_attn = MSDeformAttn(d_model, n_levels, n_heads, n_points, recompute=recompute_sampling)
        self.dropout1 = Dropout(dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, d_ffn)
        self.activation = activation_fn(activation)
        self.dropout2 = Dropout(dropout)
        self.linear2 = nn.Linear(d_ffn, d_model)
        self.dropout3 = Dropout(dropout)
        self.norm2 = nn.LayerNorm(d_model)

    def forward(self, src, pos, reference_points, spatial_shapes, level_start_index, padding_mask=None):
        attn = self.self_attn(
            with_pos_embed(src, pos), reference_points, src, spatial_shapes, level_start_index, padding_mask
        )
        src = self.norm1(src + self.dropout1(attn))
        ffn = self.linear2(self.dropout2(self.activation(self.linear1(src))))
        return self.norm2(src + self.dropout3(ffn))


class DeformableDecoderLayer(nn.Module):
    """Masked self-attention among the queries, deformable cross-attention into the
    memory around each query's reference, FFN; post-norm."""

    def __init__(self, d_model=256, d_ffn=1024, dropout=0.1, activation="relu", n_levels=4, n_heads=8, n_points=4,
                 recompute_sampling=False):
        super().__init__()
        self.cross_attn = MSDeformAttn(d_model, n_levels, n_heads, n_points, recompute=recompute_sampling)
        self.dropout1 = Dropout(dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.self_attn = MultiheadAttention(d_model, n_heads, dropout=dropout)
        self.dropout2 = Dropout(dropout)
        self.norm2 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, d_ffn)
        self.activation = activation_fn(activation)
        self.dropout3 = Dropout(dropout)
        self.linear2 = nn.Linear(d_ffn, d_model)
        self.dropout4 = Dropout(dropout)
        self.norm3 = nn.LayerNorm(d_model)

    def forward(
        self,
        tgt: Tensor,
        query_pos: Optional[Tensor],
        reference_points: Tensor,
        memory: Tensor,
        spatial_shapes: Tensor,
        level_start_index: Tensor,
        memory_padding_mask: Optional[Tensor] = None,
        self_attn_mask: Optional[Tensor] = None,
    ) -> Tensor:
        """tgt, query_pos [B, Q, d]; reference_points [B, Q, n_levels, 2 or 4];
        self_attn_mask prepared by :func:`build_attention_mask` (or None)."""
        qk = with_pos_embed(tgt, query_pos).transpose(0, 1)  # our attention is sequence-first
        attn = self.self_attn(qk, qk, tgt.transpose(0, 1), self_attn_mask).transpose(0, 1)
        tgt = self.norm2(tgt + self.dropout2(attn))
        attn = self.cross_attn(
            with_pos_embed(tgt, query_pos), reference_points, memory, spatial_shapes, level_start_index,
            memory_padding_mask,
        )
        tgt = self.norm1(tgt + self.dropout1(attn))
        ffn = self.linear2(self.dropout3(self.activation(self.linear1(tgt))))
        return self.norm3(tgt + self.dropout4(ffn))


class DeformableEncoder(nn.Module):
    def __init__(self, num_layers: int, **layer_kwargs):
        super().__init__()
        self.layers = nn.ModuleList(DeformableEncoderLayer(**layer_kwargs) for _ in range(num_layers))

    @staticmethod
    def reference_points(spatial_shapes: Sequence[Tuple[int, int]], valid_ratios: Tensor) -> Tensor:
        """The centre of every pixel of every level as a reference point for every level:
        [B, S, L, 2], normalised to each image's valid area."""
        points = []
        for lvl, (h, w) in enumerate(spatial_shapes):
            ys, xs = torch.meshgrid(
                torch.linspace(0.5, h - 0.5, h, dtype=valid_ratios.dtype, device=valid_ratios.device),
                torch.linspace(0.5, w - 0.5, w, dtype=valid_ratios.dtype, device=valid_ratios.device),
                indexing="ij",
            )
            ys = ys.reshape(1, -1) / (valid_ratios[:, None, lvl, 1] * h)
            xs = xs.reshape(1, -1) / (valid_ratios[:, None, lvl, 0] * w)
            points.append(torch.stack((xs, ys), -1))
        points = torch.cat(points, 1)  # [B, S, 2] in the coordinates of the valid area
        return points[:, :, None] * valid_ratios[:, None]  # the same spot on every level

    def forward(self, src, spatial_shapes, level_start_index, valid_ratios, pos=None, padding_mask=None):
        shapes = [tuple(s) for s in spatial_shapes.tolist()]
        reference_points = self.reference_points(shapes, valid_ratios)
        for layer in self.layers:
            src = layer(src, pos, reference_points, spatial_shapes, level_start_index, padding_mask)
        return src


class DeformableDecoder(nn.Module):
    """Deformable decoder layers; returns every layer's output and the reference each
    layer used (see the module docstring for query modes and box refinement)."""

    def __init__(self, num_layers: int, d_model: int = 256, anchor_queries: bool = False, query_scale: bool = True,
                 look_forward_twice: bool = False, **layer_kwargs):
        super().__init__()
        self.layers = nn.ModuleList(
            DeformableDecoderLayer(d_model=d_model, **layer_kwargs) for _ in range(num_layers)
        )
        self.num_layers = num_layers
        self.nhead = self.layers[0].self_attn.num_heads
        self.anchor_queries = anchor_queries
        self.look_forward_twice = look_forward_twice
        self.query_scale = None
        if anchor_queries:
            # DAB-Deformable-DETR: positional query = MLP(sine(box)), scaled by MLP(content).
            self.ref_point_head = MLP(2 * d_model, d_model, d_model, 2)
            if query_scale:
                self.query_scale = MLP(d_model, d_model, d_model, 2)

    def forward(
        self,
        tgt: Tensor,
        reference_points: Tensor,
        memory: Tensor,
        spatial_shapes: Tensor,
        level_start_index: Tensor,
        valid_ratios: Tensor,
        query_pos: Optional[Tensor] = None,
        memory_padding_mask: Optional[Tensor] = None,
        self_attn_mask: Optional[Tensor] = None,
        bbox_embed: Optional[Sequence[nn.Module]] = None,
    ) -> Tuple[Tensor, Tensor]:
        """
        Args:
            tgt: content queries [B, Q, d].
            reference_points: [B, Q, 2] points or [B, Q, 4] boxes, normalised, in [0, 1].
            query_pos: [B, Q, d]; must be None with anchor queries (derived from the boxes).
            self_attn_mask: bool [Q, Q] or [B * nhead, Q, Q], True = blocked.
            bbox_embed: one box head per layer for iterative refinement, or None.

        Returns:
            hs: [L, B, Q, d], every layer's output.
            references: [L, B, Q, 2 or 4], the reference layer l's boxes are relative to
                (sigmoid space): the one it started from or, with ``look_forward_twice``, the
                same values before the detach (layer l-1's prediction, with its gradient).
        """
        B, Q, _ = tgt.shape
        if self.anchor_queries:
            if query_pos is not None or reference_points.shape[-1] != 4:
                raise ValueError("anchor queries take reference boxes [B, Q, 4] and no query_pos")
        elif query_pos is None:
            raise ValueError("the decoder needs query_pos unless it was built with anchor_queries=True")
        if bbox_embed is not None and len(bbox_embed) < self.num_layers:
            raise ValueError(f"box refinement needs {self.num_layers} box heads, got {len(bbox_embed)}")
        if self.look_forward_twice and bbox_embed is None:
            raise ValueError("look_forward_twice needs box refinement (the per-layer box heads)")
        mask = None
        if self_attn_mask is not None:
            mask = build_attention_mask(self_attn_mask, num_heads=self.nhead, batch=B, tgt_len=Q, src_len=Q)
        ratios = valid_ratios if reference_points.shape[-1] == 2 else torch.cat([valid_ratios, valid_ratios], -1)

        output, outputs, references = tgt, [], []
        head_reference = reference_points  # what this layer's boxes are relative to
        for lid, layer in enumerate(self.layers):
            # Normalised to the valid area -> normalised to the padded map of every level.
            ref_input = reference_points[:, :, None] * ratios[:, None]
            if self.anchor_queries:
                pos = self.ref_point_head(sine_embed_coordinates(ref_input[:, :, 0], output.shape[-1] // 2))
                query_pos = pos * self.query_scale(output) if lid > 0 and self.query_scale is not None else pos
            output = layer(
                output, query_pos, ref_input, memory, spatial_shapes, level_start_index, memory_padding_mask, mask
            )
            outputs.append(output)
            references.append(head_reference)
            if bbox_embed is not None:
                delta = bbox_embed[lid](output)
                if reference_points.shape[-1] == 2:
                    delta = torch.cat([delta[..., :2] + inverse_sigmoid(reference_points), delta[..., 2:]], -1)
                    refined = delta[..., :2].sigmoid()
                else:
                    refined = (delta + inverse_sigmoid(reference_points)).sigmoid()
                reference_points = refined.detach()
                head_reference = refined if self.look_forward_twice else reference_points
        return torch.stack(outputs), torch.stack(references)


class DeformableTransformer(nn.Module):
    """Deformable DETR's encoder and decoder, plus the pieces of its two-stage variant.

    ``encode(srcs, masks, pos_embeds)`` -> :class:`EncoderMemory`;
    ``two_stage_proposals(encoded, class_head, box_head, k)`` -> the top-k encoder
    proposals as queries; ``decode(...)`` -> (hs, references) of :class:`DeformableDecoder`.

    ``recompute_sampling`` makes every deformable attention sample again in backward
    instead of keeping its samples: less training memory, more time (``MSDeformAttn``'s
    ``recompute``); the results are the same.
    """

    def __init__(
        self,
        d_model: int = 256,
        nhead: int = 8,
        num_encoder_layers: int = 6,
        num_decoder_layers: int = 6,
        dim_feedforward: int = 1024,
        dropout: float = 0.1,
        activation: str = "relu",
        num_feature_levels: int = 4,
        enc_n_points: int = 4,
        dec_n_points: int = 4,
        two_stage: bool = False,
        anchor_queries: bool = False,
        recompute_sampling: bool = False,
        query_scale: bool = True,
        look_forward_twice: bool = False,
        class_aware_proposals: bool = False,
    ):
        super().__init__()
        common = dict(d_ffn=dim_feedforward, dropout=dropout, activation=activation,
                      n_levels=num_feature_levels, n_heads=nhead, recompute_sampling=recompute_sampling)
        self.d_model = d_model
        self.nhead = nhead
        self.num_feature_levels = num_feature_levels
        self.two_stage = two_stage
        self.class_aware_proposals = class_aware_proposals
        self.encoder = DeformableEncoder(num_encoder_layers, d_model=d_model, n_points=enc_n_points, **common)
        self.decoder = DeformableDecoder(
            num_decoder_layers, d_model=d_model, anchor_queries=anchor_queries, query_scale=query_scale,
            look_forward_twice=look_forward_twice, n_points=dec_n_points, **common
        )
        self.level_embed = nn.Parameter(torch.empty(num_feature_levels, d_model))
        if two_stage:
            self.enc_output = nn.Linear(d_model, d_model)
            self.enc_output_norm = nn.LayerNorm(d_model)
            if not anchor_queries:  # anchor queries derive their positional query in the decoder
                self.pos_trans = nn.Linear(2 * d_model, 2 * d_model)
                self.pos_trans_norm = nn.LayerNorm(2 * d_model)
        self._reset_parameters()

    def _reset_parameters(self):
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        for m in self.modules():
            if isinstance(m, MSDeformAttn):
                m.reset_parameters()  # its own init (offset directions), not Xavier
        nn.init.normal_(self.level_embed)

    # --- encoder ------------------------------------------------------------------
    @staticmethod
    def valid_ratios(mask: Tensor) -> Tensor:
        """[B, H, W] padding mask -> [B, 2]: the valid (w, h) fraction of the map."""
        _, h, w = mask.shape
        valid_h = (~mask[:, :, 0]).sum(1)
        valid_w = (~mask[:, 0, :]).sum(1)
        return torch.stack([valid_w.float() / w, valid_h.float() / h], -1)

    def encode(self, srcs: List[Tensor], masks: List[Tensor], pos_embeds: List[Tensor]) -> EncoderMemory:
        """srcs, pos_embeds: per level [B, d, H_l, W_l]; masks: [B, H_l, W_l], True = padded."""
        if len(srcs) != self.num_feature_levels:
            raise ValueError(f"the transformer was built for {self.num_feature_levels} levels, got {len(srcs)}")
        shapes = [tuple(s.shape[-2:]) for s in srcs]
        device = srcs[0].device
        spatial_shapes = torch.as_tensor(shapes, dtype=torch.long, device=device)
        level_start_index = torch.cat([spatial_shapes.new_zeros(1), spatial_shapes.prod(1).cumsum(0)[:-1]])
        valid_ratios = torch.stack([self.valid_ratios(m) for m in masks], 1).to(srcs[0].dtype)
        src = torch.cat([s.flatten(2).transpose(1, 2) for s in srcs], 1)
        mask = torch.cat([m.flatten(1) for m in masks], 1)
        pos = torch.cat(
            [p.flatten(2).transpose(1, 2) + self.level_embed[lvl] for lvl, p in enumerate(pos_embeds)], 1
        )
        memory = self.encoder(src, spatial_shapes, level_start_index, valid_ratios, pos, mask)
        return EncoderMemory(memory, mask, spatial_shapes, level_start_index, pos=pos, valid_ratios=valid_ratios)

    # --- two-stage ----------------------------------------------------------------
    def encoder_proposals(self, encoded: EncoderMemory) -> Tuple[Tensor, Tensor, Tensor]:
        """One proposal box per memory position: centred on its pixel, side
        0.05 * 2^level of the valid image; returns the projected memory [B, S, d], the
        proposals as logits [B, S, 4] (+inf at unusable positions, as the original, so
        their boxes end in the corner (1, 1, 1, 1) and are never matched) and a mask
        [B, S] of usable positions (not padded, proposal well inside the image)."""
        proposals = []
        B = encoded.memory.shape[0]
        for lvl, (h, w) in enumerate(encoded.spatial_shapes.tolist()):
            ys, xs = torch.meshgrid(
                torch.arange(h, dtype=torch.float32, device=encoded.memory.device),
                torch.arange(w, dtype=torch.float32, device=encoded.memory.device),
                indexing="ij",
            )
            ratio = encoded.valid_ratios[:, lvl].float()  # [B, 2] (w, h)
            valid_size = ratio * torch.tensor([w, h], dtype=torch.float32, device=ratio.device)
            centres = (torch.stack([xs, ys], -1)[None] + 0.5) / valid_size[:, None, None]  # [B, h, w, 2]
            sides = torch.full_like(centres, 0.05 * 2.0**lvl)
            proposals.append(torch.cat([centres, sides], -1).view(B, -1, 4))
        proposals = torch.cat(proposals, 1)
        usable = ((proposals > 0.01) & (proposals < 0.99)).all(-1) & ~encoded.padding_mask
        memory = encoded.memory.masked_fill(~usable[..., None], 0.0)
        memory = self.enc_output_norm(self.enc_output(memory))
        proposals = inverse_sigmoid(proposals).masked_fill(~usable[..., None], float("inf"))
        return memory, proposals.to(memory.dtype), usable

    def two_stage_proposals(
        self, encoded: EncoderMemory, class_head: nn.Module, box_head: nn.Module, num_proposals: int
    ):
        """Deformable DETR's two-stage queries: score every encoder position with
        ``class_head``, refine its proposal with ``box_head``, keep the ``num_proposals``
        best and derive the decoder's positional and content queries from their boxes.

        Returns (query_pos [B, K, d], tgt [B, K, d], reference boxes [B, K, 4],
        encoder outputs {"pred_logits" [B, S, C], "pred_boxes" [B, S, 4]} for the loss);
        query_pos and tgt are None with anchor queries (mixed query selection: the decoder
        derives the positional queries from the boxes, the content is learned).
        """
        if not self.two_stage:
            raise RuntimeError("this transformer was built without two_stage")
        memory, proposals, usable = self.encoder_proposals(encoded)
        logits = class_head(memory)
        coords = box_head(memory) + proposals
        # Class-agnostic proposals are supervised as class 0, so that column scores them;
        # class-aware ones (DINO) by their best class.
        scores = logits.max(-1).values if self.class_aware_proposals else logits[..., 0]
        # Unusable positions (padding, proposals at the border) are never picked; the
        # original code can pick them and then starts from a box at infinity.
        scores = scores.masked_fill(~usable, float("-inf"))
        k = min(num_proposals, scores.shape[1])
        topk = scores.topk(k, dim=1).indices
        topk_coords = coords.gather(1, topk[..., None].expand(-1, -1, 4)).detach()
        reference = topk_coords.sigmoid()
        enc_outputs = {"pred_logits": logits, "pred_boxes": coords.sigmoid()}
        if self.decoder.anchor_queries:
            return None, None, reference, enc_outputs
        embedding = self.pos_trans_norm(
            self.pos_trans(sine_embed_coordinates(reference, self.d_model // 2))
        )
        query_pos, tgt = embedding.split(self.d_model, dim=-1)
        return query_pos, tgt, reference, enc_outputs

    # --- decoder ------------------------------------------------------------------
    def decode(self, encoded: EncoderMemory, tgt, reference_points, query_pos=None, self_attn_mask=None,
               bbox_embed=None):
        return self.decoder(
            tgt,
            reference_points,
            encoded.memory,
            encoded.spatial_shapes,
            encoded.level_start_index,
            encoded.valid_ratios,
            query_pos=query_pos,
            memory_padding_mask=encoded.padding_mask,
            self_attn_mask=self_attn_mask,
            bbox_embed=bbox_embed,
        )
