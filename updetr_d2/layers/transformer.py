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

Attention masks
---------------
Callers give *blocked* masks: boolean, **True = may not attend**:

* key padding masks [B, S] (True = padded key, e.g. a padded pixel), and
* decoder self-attention masks [Q, Q] (shared by the batch) or [B * nhead, Q, Q]
  (per image and head, image-major like ``nn.MultiheadAttention``), True where
  query i may not see query j (UP-DETR patch groups, DN-DETR denoising groups).

:func:`build_attention_mask` is the one place that accepts them: it checks them,
merges them and turns them into the mask that attention consumes (boolean,
broadcastable to [B, nhead, L, S], True = *may* attend, the convention of
``F.scaled_dot_product_attention``), or ``None`` when nothing is blocked.
``Transformer.forward`` calls it once per forward (not once per layer) and hands
the result to every layer; layers and :class:`MultiheadAttention` only accept
such prepared 4-D masks, so a raw 2-D/3-D mask given to them is an error, not a
silently inverted mask.

A query whose every key is blocked has no softmax to take; such a mask is a bug
in the code that built it (an empty group, a fully padded image), and
:func:`build_attention_mask` raises ``ValueError`` for it rather than returning
NaNs or zeros.

Attention
---------
:class:`MultiheadAttention` computes exactly ``nn.MultiheadAttention``'s function
(same parameters: ``in_proj_weight`` [3d, d], ``in_proj_bias`` [3d], ``out_proj``;
``load_state_dict`` works both ways) with ``F.scaled_dot_product_attention``, and
projects q and k (and v) with one matmul when they are the same tensor, as in
every self-attention here. It does not compute attention weights.
"""
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "build_attention_mask",
    "MultiheadAttention",
    "TransformerEncoderLayer",
    "TransformerDecoderLayer",
    "TransformerEncoder",
    "TransformerDecoder",
    "Transformer",
]


def build_attention_mask(
    blocked: Optional[Tensor] = None,
    key_padding_mask: Optional[Tensor] = None,
    *,
    num_heads: int,
    batch: Optional[int] = None,
    tgt_len: Optional[int] = None,
    src_len: Optional[int] = None,
) -> Optional[Tensor]:
    """Turn blocked masks (True = may not attend) into the mask attention consumes.

    Args:
        blocked: bool [L, S] (same for every image and head) or [B * num_heads, L, S]
            (image-major: row ``b * num_heads + h`` is image b, head h). True = query
            l may not attend key s.
        key_padding_mask: bool [B, S], True = key s of image b is padding.
        num_heads: heads of the attention the mask is for.
        batch, tgt_len, src_len: if given, the shapes are checked against them.

    Returns:
        ``None`` if nothing is blocked, else a bool tensor broadcastable to
        [B, num_heads, L, S] with True = **may** attend (the convention of
        ``F.scaled_dot_product_attention``), for :class:`MultiheadAttention`.

    Raises:
        ValueError: on a non-bool mask, wrong shapes, or if some query may attend
            no key at all (a fully blocked row: the caller's bug).
    """
    parts = []
    if blocked is not None:
        if blocked.dtype != torch.bool:
            raise ValueError(
                f"attention masks are boolean with True = may not attend; got dtype {blocked.dtype}"
            )
        if blocked.dim() == 2:
            l, s = blocked.shape
            parts.append(blocked.view(1, 1, l, s))
        elif blocked.dim() == 3:
            bh, l, s = blocked.shape
            if bh % num_heads != 0 or (batch is not None and bh != batch * num_heads):
                raise ValueError(
                    "a 3-D attention mask must be [B * num_heads, L, S]; got "
                    f"{tuple(blocked.shape)} "
                    f"with num_heads={num_heads}" + (f", B={batch}" if batch is not None else "")
                )
            parts.append(blocked.view(bh // num_heads, num_heads, l, s))
        else:
            raise ValueError(
                "attention mask must be [L, S] or [B * num_heads, L, S]; got "
                f"{tuple(blocked.shape)}"
            )
        if (tgt_len is not None and l != tgt_len) or (src_len is not None and s != src_len):
            raise ValueError(
                f"attention mask is {l}x{s} but attention is {tgt_len}x{src_len} (queries x keys)"
            )
    if key_padding_mask is not None:
        if key_padding_mask.dtype != torch.bool or key_padding_mask.dim() != 2:
            raise ValueError(
                "key_padding_mask must be bool [B, S] (True = padded); got "
                f"{key_padding_mask.dtype} {tuple(key_padding_mask.shape)}"
            )
        b, s = key_padding_mask.shape
        if (batch is not None and b != batch) or (src_len is not None and s != src_len):
            raise ValueError(
                f"key_padding_mask is {tuple(key_padding_mask.shape)}, "
                f"expected ({batch}, {src_len})"
            )
        parts.append(key_padding_mask.view(b, 1, 1, s))
    if not parts:
        return None
    if len(parts) == 2:
        if parts[0].shape[-1] != parts[1].shape[-1] or (
            parts[0].shape[0] not in (1, parts[1].shape[0])
        ):
            raise ValueError(
                f"attention mask {tuple(blocked.shape)} and key_padding_mask "
                f"{tuple(key_padding_mask.shape)} disagree on the batch or number of keys"
            )
        merged = parts[0] | parts[1]
    else:
        merged = parts[0]
    # One small reduction over the (unbroadcast) mask, once per forward.
    full_rows = merged.all(dim=-1)
    if full_rows.any():
        where = full_rows.nonzero()[0].tolist()  # [b, h, l] of one offending row
        raise ValueError(
            "attention mask blocks every key for some query (a fully True row), e.g. at "
            f"[image/head/query] index {where} of a mask broadcast as {tuple(full_rows.shape)}: "
            "its softmax is undefined. This is a bug in the code that built the mask "
            "(an empty group, a fully padded image); every query must be allowed at least one key."
        )
    if not merged.any():
        return None
    return ~merged


class MultiheadAttention(nn.Module):
    """``nn.MultiheadAttention`` (batch_first=False, bias=True, equal q/k/v dims)
    computed with ``F.scaled_dot_product_attention``.

    Same parameters and names (``in_proj_weight``, ``in_proj_bias``,
    ``out_proj.weight``, ``out_proj.bias``) and init, so state dicts are
    interchangeable. ``forward`` returns only the output (no attention weights).

    When ``query is key`` (self-attention) q and k are projected by one matmul with
    the stacked weight, and q, k, v by one when all three are the same tensor; each
    output element is the same dot product as with separate projections.
    """

    def __init__(self, embed_dim: int, num_heads: int, dropout: float = 0.0):
        super().__init__()
        if embed_dim % num_heads != 0:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.dropout = dropout
        self.in_proj_weight = nn.Parameter(torch.empty(3 * embed_dim, embed_dim))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * embed_dim))
        self.out_proj = nn.Linear(embed_dim, embed_dim)
        self._reset_parameters()

    def _reset_parameters(self):
        # as nn.MultiheadAttention
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.in_proj_bias)
        nn.init.zeros_(self.out_proj.bias)

    def forward(
        self, query: Tensor, key: Tensor, value: Tensor, attn_mask: Optional[Tensor] = None
    ) -> Tensor:
        """query [L, B, E], key and value [S, B, E]; returns [L, B, E].

        attn_mask: ``None`` or a mask from :func:`build_attention_mask` (bool,
        broadcastable to [B, num_heads, L, S], True = may attend).
        """
        if attn_mask is not None and attn_mask.dim() != 4:
            raise ValueError(
                "MultiheadAttention takes masks prepared by build_attention_mask (4-D, True = may "
                f"attend); got shape {tuple(attn_mask.shape)}. Pass blocked masks through "
                "build_attention_mask first."
            )
        L, B, E = query.shape
        S = key.shape[0]
        w, b = self.in_proj_weight, self.in_proj_bias
        if query is key:
            if key is value:
                q, k, v = F.linear(query, w, b).chunk(3, dim=-1)
            else:
                q, k = F.linear(query, w[: 2 * E], b[: 2 * E]).chunk(2, dim=-1)
                v = F.linear(value, w[2 * E :], b[2 * E :])
        else:
            q = F.linear(query, w[:E], b[:E])
            k = F.linear(key, w[E : 2 * E], b[E : 2 * E])
            v = F.linear(value, w[2 * E :], b[2 * E :])
        h, d = self.num_heads, self.head_dim
        # [L, B, E] -> [B, h, L, d]: views, no copies
        q = q.view(L, B, h, d).permute(1, 2, 0, 3)
        k = k.view(S, B, h, d).permute(1, 2, 0, 3)
        v = v.view(S, B, h, d).permute(1, 2, 0, 3)
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, dropout_p=self.dropout if self.training else 0.0
        )
        out = out.permute(2, 0, 1, 3).reshape(L, B, E)
        return self.out_proj(out)

    def extra_repr(self) -> str:
        return f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, dropout={self.dropout}"


def _activation(name: str):
    if name == "relu":
        return F.relu
    if name == "gelu":
        return F.gelu
    if name == "glu":
        return F.glu
    raise ValueError(f"activation must be relu, gelu or glu, not {name!r}")


def _with_pos(x: Tensor, pos: Optional[Tensor]) -> Tensor:
    return x if pos is None else x + pos


class _AttentionFFNLayer(nn.Module):
    """What DETR's encoder and decoder layers share: self-attention, a ReLU FFN, and one
    LayerNorm and dropout per sub-layer (named as in DETR, so its checkpoints load)."""

    def __init__(self, d_model, nhead, dim_feedforward, dropout, activation, normalize_before, num_sublayers):
        super().__init__()
        self.self_attn = MultiheadAttention(d_model, nhead, dropout=dropout)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        for i in range(1, num_sublayers + 1):
            setattr(self, f"norm{i}", nn.LayerNorm(d_model))
            setattr(self, f"dropout{i}", nn.Dropout(dropout))
        self.activation = _activation(activation)
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
            qk = _with_pos(x, pos)
            src = src + self.dropout1(self.self_attn(qk, qk, x, attn_mask))
            return src + self.dropout2(self._ffn(self.norm2(src)))
        qk = _with_pos(src, pos)
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
            memory_key = _with_pos(memory, pos)
        if self.normalize_before:
            x = self.norm1(tgt)
            qk = _with_pos(x, query_pos)
            tgt = tgt + self.dropout1(self.self_attn(qk, qk, x, self_attn_mask))
            x = self.norm2(tgt)
            tgt = tgt + self.dropout2(
                self.multihead_attn(_with_pos(x, query_pos), memory_key, memory, memory_mask)
            )
            return tgt + self.dropout3(self._ffn(self.norm3(tgt)))
        qk = _with_pos(tgt, query_pos)
        tgt = self.norm1(tgt + self.dropout1(self.self_attn(qk, qk, tgt, self_attn_mask)))
        tgt2 = self.multihead_attn(_with_pos(tgt, query_pos), memory_key, memory, memory_mask)
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
        memory_key = _with_pos(memory, pos)  # once, not once per layer
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

    def forward(
        self,
        src: Tensor,
        mask: Tensor,
        query_pos: Tensor,
        pos_embed: Tensor,
        tgt: Optional[Tensor] = None,
        self_attn_mask: Optional[Tensor] = None,
    ) -> Tuple[Tensor, Tensor]:
        """
        Args:
            src: [B, d, H, W] image features, already projected to d_model.
            mask: [B, H, W] bool, True = padded pixel (keys masked in the encoder and
                in the decoder's cross-attention).
            query_pos: [Q, d] (shared by the batch) or [B, Q, d] (per image), added to
                the decoder's queries (and self-attention keys) in every layer.
            pos_embed: [B, d, H, W] position embedding of the pixels.
            tgt: decoder input, [Q, d] or [B, Q, d]; zeros when None (DETR).
            self_attn_mask: decoder self-attention mask, bool [Q, Q] or
                [B * nhead, Q, Q], True = query i may not attend query j. Every
                query must be allowed at least one query (else ValueError).

        Returns:
            hs: [L, B, Q, d] normalized decoder outputs (L = decoder layers with
                ``return_intermediate_dec``, else 1).
            memory: [B, d, H, W] encoder output.
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
        query_pos = self._queries(query_pos, B, "query_pos")
        Q = query_pos.shape[0]
        if tgt is None:
            tgt = src.new_zeros(Q, B, C)
        else:
            tgt = self._queries(tgt, B, "tgt").contiguous()
            if tgt.shape[0] != Q:
                raise ValueError(f"tgt has {tgt.shape[0]} queries, query_pos {Q}")

        # the masks every layer uses, prepared once per forward
        key_mask = build_attention_mask(key_padding_mask=mask.flatten(1), num_heads=self.nhead)
        query_mask = None
        if self_attn_mask is not None:
            query_mask = build_attention_mask(
                self_attn_mask, num_heads=self.nhead, batch=B, tgt_len=Q, src_len=Q
            )

        memory = self.encoder(src, pos=pos, attn_mask=key_mask)
        hs = self.decoder(
            tgt,
            memory,
            query_pos=query_pos,
            pos=pos,
            self_attn_mask=query_mask,
            memory_mask=key_mask,
        )
        return hs.transpose(1, 2), memory.permute(1, 2, 0).view(B, C, H, W)
