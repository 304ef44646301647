"""Masked multi-head attention shared by every transformer here.

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
The transformers call it once per forward (not once per layer) and hand
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
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .dropout import dropout

__all__ = ["build_attention_mask", "MultiheadAttention"]


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


def attention_with_cpu_dropout(q: Tensor, k: Tensor, v: Tensor, attn_mask: Optional[Tensor], p: float) -> Tensor:
    """``F.scaled_dot_product_attention`` with attention dropout ``p``, computed as its math
    path does, but with the dropout mask of :mod:`.dropout` (PyTorch's CPU dropout draws one
    random number per attention weight: at 800x1066 a third of a bf16 DETR-R50 step). The
    ``1 / (1 - p)`` scale is applied to the output, which is smaller than the weights.
    ``attn_mask``: prepared by :func:`build_attention_mask` (no fully blocked row)."""
    scores = torch.matmul(q * q.shape[-1] ** -0.5, k.transpose(-2, -1))
    if attn_mask is not None:
        scores = scores.masked_fill(~attn_mask, float("-inf"))
    weights = dropout(scores.softmax(-1), p, rescale=False)
    return torch.matmul(weights, v) * (1.0 / (1.0 - p))


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
        if self.training and self.dropout > 0 and q.device.type == "cpu":
            out = attention_with_cpu_dropout(q, k, v, attn_mask, self.dropout)
        else:
            out = F.scaled_dot_product_attention(
                q, k, v, attn_mask=attn_mask, dropout_p=self.dropout if self.training else 0.0
            )
        out = out.permute(2, 0, 1, 3).reshape(L, B, E)
        return self.out_proj(out)

    def extra_repr(self) -> str:
        return f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, dropout={self.dropout}"
