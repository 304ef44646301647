"""DETR's mask head (Carion et al. 2020, section 4.4): per query, attention maps over the
encoder memory, decoded by a small FPN-style convolutional network into one mask logit
map at the finest backbone level's stride.

The module and parameter names are those of the original ``DETRsegm`` (``bbox_attention``
with ``q_linear`` / ``k_linear``; ``mask_head`` with ``lay1`` .. ``out_lay`` and
``adapter1`` .. ``adapter3``), so the official panoptic checkpoints map onto it key for key.
Both modules work on *rows*: one row per (image, query) pair to segment, so training can
run them on the matched queries only and inference on the kept ones.
"""
import math
from typing import List, Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

__all__ = ["MHAttentionMap", "MaskHeadSmallConv"]


class MHAttentionMap(nn.Module):
    """Attention weights of queries over a feature map, without values: the output is
    the weights themselves, one map per head.

    ``logits[n, m, y, x] = q[n, m] . k[m, :, y, x] / sqrt(d / M)``; padded positions are
    excluded, and the softmax runs **jointly over heads x H x W** (as the original code,
    ``flatten(2)``), so a query's weights over all heads sum to 1.

    ``scale_to_positions``: the weights are multiplied by the number of positions they
    spread over (heads x unpadded H x W), so they average 1 whatever the image size. The
    mask decoder concatenates them with projected features of unit scale; at the original
    scale (average 1 / (M H W), about 1e-3 at the demo's sizes) they reach the decoder's
    output attenuated so much that all queries of an image get the same mask (equal to
    1e-5 after 150 steps on the demo), and only the original's long mask stage (25 COCO
    epochs) amplifies them. False keeps the original's function (its checkpoints).
    """

    def __init__(self, query_dim: int, hidden_dim: int, num_heads: int, dropout: float = 0.0,
                 scale_to_positions: bool = False):
        super().__init__()
        if hidden_dim % num_heads:
            raise ValueError(f"MHAttentionMap: hidden_dim {hidden_dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.hidden_dim = hidden_dim
        self.dropout = nn.Dropout(dropout)
        self.q_linear = nn.Linear(query_dim, hidden_dim)
        self.k_linear = nn.Linear(query_dim, hidden_dim)
        for layer in (self.q_linear, self.k_linear):
            nn.init.zeros_(layer.bias)
            nn.init.xavier_uniform_(layer.weight)
        self.normalize_fact = float(hidden_dim / num_heads) ** -0.5
        self.scale_to_positions = scale_to_positions

    def keys(self, memory: Tensor) -> Tensor:
        """[B, d, H, W] memory -> [B, M, d/M, H, W] keys (the linear layer as a 1x1 conv),
        computed once per image and shared by its queries."""
        k = F.conv2d(memory, self.k_linear.weight[..., None, None], self.k_linear.bias)
        B, _, H, W = k.shape
        return k.view(B, self.num_heads, self.hidden_dim // self.num_heads, H, W)

    def forward(self, queries: Tensor, keys: Tensor, padding_mask: Tensor) -> Tensor:
        """queries [N, d]; keys [N, M, d/M, H, W] (each row's image's, see :meth:`keys`);
        padding_mask [N, H, W] (True = padding) -> weights [N, M, H, W]."""
        q = self.q_linear(queries).view(queries.shape[0], self.num_heads, -1)
        logits = torch.einsum("nmc,nmchw->nmhw", q * self.normalize_fact, keys)
        logits = logits.masked_fill(padding_mask[:, None], float("-inf"))
        weights = logits.flatten(1).softmax(-1).view_as(logits)
        if self.scale_to_positions:
            positions = (~padding_mask).flatten(1).sum(1) * self.num_heads
            weights = weights * positions.to(weights.dtype)[:, None, None, None]
        return self.dropout(weights)


def _group_norm(channels: int) -> nn.GroupNorm:
    # The original uses 8 groups (its widths are multiples of 8); narrower models here
    # (demo sizes) may have fewer channels than that at the finest levels.
    return nn.GroupNorm(math.gcd(8, channels), channels)


class MaskHeadSmallConv(nn.Module):
    """The original's convolutional mask decoder: the projected backbone level the memory
    came from, concatenated with the attention maps, through 3x3 conv + GroupNorm + ReLU
    blocks that halve the width at each finer backbone level, adding a 1x1 adapter of that
    level after a nearest upsampling; a final conv gives one logit map per row.

    ``dim`` = transformer width + attention heads; ``fpn_dims``: channels of the finer
    backbone levels, coarsest first (three, as DETR's res4, res3, res2);
    ``context_dim``: the transformer width.
    """

    def __init__(self, dim: int, fpn_dims: Sequence[int], context_dim: int):
        super().__init__()
        if len(fpn_dims) != 3:
            raise ValueError(f"MaskHeadSmallConv takes three finer backbone levels, got {len(fpn_dims)} ({fpn_dims})")
        inter = [dim, context_dim // 2, context_dim // 4, context_dim // 8, context_dim // 16]
        if min(inter) < 1:
            raise ValueError(f"MaskHeadSmallConv: transformer width {context_dim} is too narrow (needs >= 16)")
        self.lay1 = nn.Conv2d(dim, dim, 3, padding=1)
        self.gn1 = _group_norm(dim)
        self.lay2 = nn.Conv2d(dim, inter[1], 3, padding=1)
        self.gn2 = _group_norm(inter[1])
        self.lay3 = nn.Conv2d(inter[1], inter[2], 3, padding=1)
        self.gn3 = _group_norm(inter[2])
        self.lay4 = nn.Conv2d(inter[2], inter[3], 3, padding=1)
        self.gn4 = _group_norm(inter[3])
        self.lay5 = nn.Conv2d(inter[3], inter[4], 3, padding=1)
        self.gn5 = _group_norm(inter[4])
        self.out_lay = nn.Conv2d(inter[4], 1, 3, padding=1)
        self.adapter1 = nn.Conv2d(fpn_dims[0], inter[1], 1)
        self.adapter2 = nn.Conv2d(fpn_dims[1], inter[2], 1)
        self.adapter3 = nn.Conv2d(fpn_dims[2], inter[3], 1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_uniform_(m.weight, a=1)
                nn.init.constant_(m.bias, 0)

    @staticmethod
    def _block(conv: nn.Conv2d, norm: nn.GroupNorm, x: Tensor) -> Tensor:
        return F.relu(norm(conv(x)))

    def forward(self, source: Tensor, attention: Tensor, fpns: List[Tensor], rows: Tensor) -> Tensor:
        """source [B, d, H, W] (the projected level of each image), attention [N, M, H, W],
        fpns: three [B, C_i, H_i, W_i], coarsest first; rows [N]: the image of each row
        -> mask logits [N, H_3, W_3]. Per-image inputs go through their 1x1 adapters once
        and are then gathered per row (the original expands them per query the same way)."""
        x = torch.cat([source[rows], attention], 1)
        x = self._block(self.lay1, self.gn1, x)
        x = self._block(self.lay2, self.gn2, x)
        blocks = [(self.adapter1, self.lay3, self.gn3), (self.adapter2, self.lay4, self.gn4),
                  (self.adapter3, self.lay5, self.gn5)]
        for fpn, (adapter, conv, norm) in zip(fpns, blocks):
            skip = adapter(fpn)[rows]
            x = skip + F.interpolate(x, size=skip.shape[-2:], mode="nearest")
            x = self._block(conv, norm, x)
        return self.out_lay(x)[:, 0]
