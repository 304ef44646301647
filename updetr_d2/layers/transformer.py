"""The encoder-decoder transformer shared by every DETR-family model here.

It is DETR's transformer (post-norm by default, pre-norm with
``normalize_before=True`` as in UP-DETR's pretraining), with the same module and
parameter names, so DETR / UP-DETR checkpoints map onto it key for key:

    encoder.layers.N.{self_attn.{in_proj_weight,in_proj_bias,out_proj.*},
                      linear1, linear2, norm1, norm2}
    encoder.norm                       (pre-norm only)
    decoder.layers.N.{self_attn, multihead_attn, linear1, linear2, norm1, norm2, norm3}
    decoder.norm

Layout: inside the encoder and decoder, sequences are sequence-first [S, B, d]
(DETR's layout). ``Transformer.forward`` takes and returns batch/channel-first
tensors (see its docstring).

Position embeddings are added to queries and keys, never to values, in every
attention: encoder self-attention q = k = src + pos, v = src; decoder
self-attention q = k = tgt + query_pos, v = tgt; cross-attention
q = tgt + query_pos, k = memory + pos, v = memory.

Attention itself (:class:`MultiheadAttention`) and the one function that turns
blocked masks into what attention consumes (:func:`build_attention_mask`) live in
:mod:`updetr_d2.layers.attention`.
"""
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .attention import MultiheadAttention, build_attention_mask
from .dropout import Dropout
from .encoder_memory import EncoderMemory

__all__ = [
    "activation_fn",
    "with_pos_embed",
    "TransformerEncoderLayer",
    "TransformerDecoderLayer",
    "TransformerEncoder",
    "TransformerDecoder",
    "Transformer",
]


def activation_fn(name: str):
    if name == "relu":
        return F.relu
    if name == "gelu":
        return F.gelu
    if name == "glu":
        return F.glu
    raise ValueError(f"activation must be relu, gelu or glu, not {name!r}")


def with_pos_embed(x: Tensor, pos: Optional[Tensor]) -> Tensor:
    return x if pos is None else x + pos


class _AttentionFFNLayer(nn.Module):
    """What DETR's encoder and decoder layers share: self-attention, a ReLU FFN, and one
    LayerNorm and dropout per sub-layer (named as in DETR, so its checkpoints load)."""

    def __init__(self, d_model, nhead, dim_feedforward, dropout, activation, normalize_before, num_sublayers):
        super().__init__()
        self.self_attn = MultiheadAttention(d_model, nhead, dropout=dropout)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout = Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        for i in range(1, num_sublayers + 1):
            setattr(self, f"norm{i}", nn.LayerNorm(d_model))
            setattr(self, f"dropout{i}", Dropout(dropout))
        self.activation = activation_fn(activation)
        self.normalize_before = normalize_before

    def _ffn(self, x: Tensor) -> Tensor:
        return self.linear2(self.dropout(self.activation(self.linear1(x))))


class TransformerEncoderLayer(_AttentionFFNLayer):
    """DETR's encoder layer: self-attention then FFN, post-norm or pre-norm."""

    def __init__(
        self,
        d_model: int = 256,
        nhead: int = 8,
        dim_feedforward: int = 2048,
        dropout: float = 0.1,
        activation: str = "relu",
        normalize_before: bool = False,
    ):
        super().__init__(d_model, nhead, dim_feedforward, dropout, activation, normalize_before, 2)

    def forward(
        self, src: Tensor, pos: Optional[Tensor] = None, attn_mask: Optional[Tensor] = None
    ) -> Tensor:
        """src, pos: [S, B, d]; attn_mask: from :func:`build_attention_mask` or None."""
        if self.normalize_before:
            x = self.norm1(src)
            qk = with_pos_embed(x, pos)
            src = src + self.dropout1(self.self_attn(qk, qk, x, attn_mask))
            return src + self.dropout2(self._ffn(self.norm2(src)))
        qk = with_pos_embed(src, pos)
        src = self.norm1(src + self.dropout1(self.self_attn(qk, qk, src, attn_mask)))
        return self.norm2(src + self.dropout2(self._ffn(src)))


class TransformerDecoderLayer(_AttentionFFNLayer):
    """DETR's decoder layer: self-attention, cross-attention, FFN; post- or pre-norm."""

    def __init__(
        self,
        d_model: int = 256,
        nhead: int = 8,
        dim_feedforward: int = 2048,
        dropout: float = 0.1,
        activation: str = "relu",
        normalize_before: bool = False,
    ):
        super().__init__(d_model, nhead, dim_feedforward, dropout, activation, normalize_before, 3)
        self.multihead_attn = MultiheadAttention(d_model, nhead, dropout=dropout)

    def forward(
        self,
        tgt: Tensor,
        memory: Tensor,
        query_pos: Optional[Tensor] = None,
        pos: Optional[Tensor] = None,
        self_attn_mask: Optional[Tensor] = None,
        memory_mask: Optional[Tensor] = None,
        memory_key: Optional[Tensor] = None,
    ) -> Tensor:
        """tgt, query_pos: [Q, B, d]; memory, pos: [S, B, d].

        self_attn_mask, memory_mask: from :func:`build_attention_mask` or None.
        memory_key: ``memory + pos`` if already computed (the decoder computes it
        once for all layers); ``pos`` is then not used.
        """
        if memory_key is None:
            memory_key = with_pos_embed(memory, pos)
        if self.normalize_before:
            x = self.norm1(tgt)
            qk = with_pos_embed(x, query_pos)
            tgt = tgt + self.dropout1(self.self_attn(qk, qk, x, self_attn_mask))
            x = self.norm2(tgt)
            tgt = tgt + self.dropout2(
                self.multihead_attn(with_pos_embed(x, query_pos), memory_key, memory, memory_mask)
            )
            return tgt + self.dropout3(self._ffn(self.norm3(tgt)))
        qk = with_pos_embed(tgt, query_pos)
        tgt = self.norm1(tgt + self.dropout1(self.self_attn(qk, qk, tgt, self_attn_mask)))
        tgt2 = self.multihead_attn(with_pos_embed(tgt, query_pos), memory_key, memory, memory_mask)
        tgt = self.norm2(tgt + self.dropout2(tgt2))
        return self.norm3(tgt + self.dropout3(self._ffn(tgt)))


class TransformerEncoder(nn.Module):
    """``num_layers`` encoder layers; a final LayerNorm (``norm``) in pre-norm mode only."""

    def __init__(
        self,
        num_layers: int,
        d_model: int = 256,
        nhead: int = 8,
        dim_feedforward: int = 2048,
        dropout: float = 0.1,
        activation: str = "relu",
        normalize_before: bool = False,
    ):
        super().__init__()
        self.layers = nn.ModuleList(
            TransformerEncoderLayer(
                d_model, nhead, dim_feedforward, dropout, activation, normalize_before
            )
            for _ in range(num_layers)
        )
        self.num_layers = num_layers
        self.norm = nn.LayerNorm(d_model) if normalize_before else None

    def forward(
        self, src: Tensor, pos: Optional[Tensor] = None, attn_mask: Optional[Tensor] = None
    ) -> Tensor:
        """src, pos: [S, B, d]; attn_mask: from :func:`build_attention_mask`. Returns [S, B, d]."""
        for layer in self.layers:
            src = layer(src, pos=pos, attn_mask=attn_mask)
        if self.norm is not None:
            src = self.norm(src)
        return src


class TransformerDecoder(nn.Module):
    """``num_layers`` decoder layers and a final LayerNorm (``norm``), applied to the
    output of every layer when ``return_intermediate`` (as DETR's auxiliary losses need).
    """

    def __init__(
        self,
        num_layers: int,
        d_model: int = 256,
        nhead: int = 8,
        dim_feedforward: int = 2048,
        dropout: float = 0.1,
        activation: str = "relu",
        normalize_before: bool = False,
        return_intermediate: bool = True,
    ):
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"the decoder needs at least one layer, got num_layers={num_layers}")
        self.layers = nn.ModuleList(
            TransformerDecoderLayer(
                d_model, nhead, dim_feedforward, dropout, activation, normalize_before
            )
            for _ in range(num_layers)
        )
        self.num_layers = num_layers
        self.norm = nn.LayerNorm(d_model)
        self.return_intermediate = return_intermediate

    def forward(
        self,
        tgt: Tensor,
        memory: Tensor,
        query_pos: Optional[Tensor] = None,
        pos: Optional[Tensor] = None,
        self_attn_mask: Optional[Tensor] = None,
        memory_mask: Optional[Tensor] = None,
    ) -> Tensor:
        """tgt, query_pos: [Q, B, d]; memory, pos: [S, B, d]; masks from
        :func:`build_attention_mask`. Returns normalized outputs [L, Q, B, d]
        (L = num_layers if ``return_intermediate``, else 1: the last layer's).
        """
        memory_key = with_pos_embed(memory, pos)  # once, not once per layer
        outputs = []
        for layer in self.layers:
            tgt = layer(
                tgt,
                memory,
                query_pos=query_pos,
                self_attn_mask=self_attn_mask,
                memory_mask=memory_mask,
                memory_key=memory_key,
            )
            if self.return_intermediate:
                outputs.append(tgt)
        if not self.return_intermediate:
            return self.norm(tgt).unsqueeze(0)
        # LayerNorm is per position, so one call on the stack equals one per layer
        return self.norm(torch.stack(outputs))


class Transformer(nn.Module):
    """DETR's encoder-decoder transformer.

    ``normalize_before=False`` is DETR's post-norm default; ``True`` gives the pre-norm
    layers (and final encoder norm) used by UP-DETR's pretraining. All parameters
    with more than one dimension are Xavier-uniform initialised, as in DETR.
    """

    def __init__(
        self,
        d_model: int = 256,
        nhead: int = 8,
        num_encoder_layers: int = 6,
        num_decoder_layers: int = 6,
        dim_feedforward: int = 2048,
        dropout: float = 0.1,
        activation: str = "relu",
        normalize_before: bool = False,
        return_intermediate_dec: bool = True,
    ):
        super().__init__()
        self.d_model = d_model
        self.nhead = nhead
        self.encoder = TransformerEncoder(
            num_encoder_layers,
            d_model,
            nhead,
            dim_feedforward,
            dropout,
            activation,
            normalize_before,
        )
        self.decoder = TransformerDecoder(
            num_decoder_layers,
            d_model,
            nhead,
            dim_feedforward,
            dropout,
            activation,
            normalize_before,
            return_intermediate=return_intermediate_dec,
        )
        self._reset_parameters()

    def _reset_parameters(self):
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def _queries(self, x: Tensor, batch: int, name: str) -> Tensor:
        """[Q, d] (shared) or [B, Q, d] (per image) -> [Q, B, d]."""
        if x.dim() == 2 and x.shape[1] == self.d_model:
            return x.unsqueeze(1).expand(-1, batch, -1)  # a view; broadcast in the adds
        if x.dim() == 3 and x.shape[0] == batch and x.shape[2] == self.d_model:
            return x.transpose(0, 1).contiguous()
        raise ValueError(
            f"{name} must be [Q, {self.d_model}] or [{batch}, Q, {self.d_model}]; "
            f"got {tuple(x.shape)}"
        )

    def encode(self, src: Tensor, mask: Tensor, pos_embed: Tensor) -> EncoderMemory:
        """
        Args:
            src: [B, d, H, W] image features, already projected to d_model.
            mask: [B, H, W] bool, True = padded pixel (masked as a key).
            pos_embed: [B, d, H, W] position embedding of the pixels.

        Returns the encoder output as a one-level :class:`EncoderMemory` (batch-first
        views of the sequence-first tensors the layers work in; no copy).
        """
        if src.dim() != 4 or src.shape[1] != self.d_model:
            raise ValueError(f"src must be [B, {self.d_model}, H, W]; got {tuple(src.shape)}")
        B, C, H, W = src.shape
        if tuple(mask.shape) != (B, H, W):
            raise ValueError(f"mask must be [B, H, W] = {(B, H, W)}; got {tuple(mask.shape)}")
        if tuple(pos_embed.shape) != tuple(src.shape):
            raise ValueError(
                f"pos_embed must have src's shape {tuple(src.shape)}; got {tuple(pos_embed.shape)}"
            )
        # [B, d, H, W] -> [HW, B, d], made contiguous once for all layers' matmuls
        src = src.flatten(2).permute(2, 0, 1).contiguous()
        pos = pos_embed.flatten(2).permute(2, 0, 1).contiguous()
        padding = mask.flatten(1)
        key_mask = build_attention_mask(key_padding_mask=padding, num_heads=self.nhead)
        memory = self.encoder(src, pos=pos, attn_mask=key_mask)
        shapes = torch.tensor([[H, W]], dtype=torch.long, device=src.device)
        return EncoderMemory(
            memory.transpose(0, 1), padding, shapes, shapes.new_zeros(1), pos=pos.transpose(0, 1)
        )

    def decode(
        self,
        encoded: EncoderMemory,
        query_pos: Tensor,
        tgt: Optional[Tensor] = None,
        self_attn_mask: Optional[Tensor] = None,
    ) -> Tensor:
        """
        Args:
            encoded: :meth:`encode`'s output.
            query_pos: [Q, d] (shared by the batch) or [B, Q, d] (per image), added to
                the decoder's queries (and self-attention keys) in every layer.
            tgt: decoder input, [Q, d] or [B, Q, d]; zeros when None (DETR).
            self_attn_mask: decoder self-attention mask, bool [Q, Q] or
                [B * nhead, Q, Q], True = query i may not attend query j. Every
                query must be allowed at least one query (else ValueError).

        Returns:
            hs: [L, B, Q, d] normalized decoder outputs (L = decoder layers with
                ``return_intermediate_dec``, else 1).
        """
        if encoded.pos is None:
            raise ValueError("the DETR decoder needs the encoder memory's position embedding (pos)")
        memory = encoded.memory.transpose(0, 1)  # back to [S, B, d]: a view
        pos = encoded.pos.transpose(0, 1)
        B, C = memory.shape[1], memory.shape[2]
        query_pos = self._queries(query_pos, B, "query_pos")
        Q = query_pos.shape[0]
        if tgt is None:
            tgt = memory.new_zeros(Q, B, C)
        else:
            tgt = self._queries(tgt, B, "tgt").contiguous()
            if tgt.shape[0] != Q:
                raise ValueError(f"tgt has {tgt.shape[0]} queries, query_pos {Q}")
        key_mask = build_attention_mask(key_padding_mask=encoded.padding_mask, num_heads=self.nhead)
        query_mask = None
        if self_attn_mask is not None:
            query_mask = build_attention_mask(
                self_attn_mask, num_heads=self.nhead, batch=B, tgt_len=Q, src_len=Q
            )
        hs = self.decoder(
            tgt, memory, query_pos=query_pos, pos=pos, self_attn_mask=query_mask, memory_mask=key_mask
        )
        return hs.transpose(1, 2)

    def forward(
        self,
        src: Tensor,
        mask: Tensor,
        query_pos: Tensor,
        pos_embed: Tensor,
        tgt: Optional[Tensor] = None,
        self_attn_mask: Optional[Tensor] = None,
    ) -> Tuple[Tensor, Tensor]:
        """:meth:`encode` then :meth:`decode` (arguments as theirs); returns ``hs``
        [L, B, Q, d] and the memory as a map [B, d, H, W]."""
        encoded = self.encode(src, mask, pos_embed)
        hs = self.decode(encoded, query_pos, tgt=tgt, self_attn_mask=self_attn_mask)
        return hs, encoded.level_maps()[0]
