"""Query generators: what a DETR decoder starts from.

A generator returns a ``QueryBundle``: the positional queries (shared ``[Q, d]`` or
per image ``[B, Q, d]``), optional content queries and an optional decoder
self-attention mask (bool, True = blocked). DETR learns its queries
(``LearnedQueries``); UP-DETR conditions them on image patches, DN-DETR and Co-DETR
append denoising / positive groups with a mask that keeps groups apart.
"""
from dataclasses import dataclass, field
from typing import Dict, Optional

import torch
from torch import nn


@dataclass
class QueryBundle:
    query_pos: torch.Tensor
    tgt: Optional[torch.Tensor] = None
    self_attn_mask: Optional[torch.Tensor] = None
    # What later phases need to know about the queries (e.g. UP-DETR's patch features,
    # the reconstruction targets).
    meta: Dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def num_queries(self) -> int:
        return self.query_pos.shape[-2]


class LearnedQueries(nn.Module):
    """DETR's object queries: ``num_queries`` learned positional embeddings, content zero."""

    def __init__(self, num_queries: int, hidden_dim: int):
        super().__init__()
        self.query_embed = nn.Embedding(num_queries, hidden_dim)

    @property
    def num_queries(self) -> int:
        return self.query_embed.num_embeddings

    def forward(self, batch_size: int, **context) -> QueryBundle:
        return QueryBundle(query_pos=self.query_embed.weight)
