"""UP-DETR's patch-conditioned queries."""
import torch
from torch import nn

from ...modeling.queries import QueryBundle
from .groups import contiguous_groups, updetr_group_mask


class PatchQueries(nn.Module):
    """Learned object queries plus query-patch features: the N queries are split into M
    groups of consecutive queries (one per patch; uneven splits allowed) and the
    projected feature of patch k is added to every query of group k. A decoder
    self-attention mask keeps the groups apart, so each group localises its own patch.

    ``query_embed`` has the name ``LearnedQueries`` uses, so it transfers to DETR.
    """

    def __init__(self, num_queries: int, hidden_dim: int, patch_feature_dim: int, query_dropout: float = 0.1):
        super().__init__()
        if not 0.0 <= query_dropout < 1.0:
            raise ValueError(f"MODEL.UPDETR.QUERY_DROPOUT must be in [0, 1), got {query_dropout}")
        self.query_embed = nn.Embedding(num_queries, hidden_dim)
        self.patch2query = nn.Linear(patch_feature_dim, hidden_dim)
        self.query_dropout = query_dropout

    @property
    def num_queries(self) -> int:
        return self.query_embed.num_embeddings

    def forward(self, patch_features: torch.Tensor) -> QueryBundle:
        """``patch_features``: ``[B, M, C]`` (M patches per image, M <= num_queries)."""
        batch, num_patches, _ = patch_features.shape
        device = patch_features.device
        groups = contiguous_groups(self.num_queries, num_patches, device=device)  # refuses M > N
        query_patch = self.patch2query(patch_features)[:, groups]  # [B, N, d]
        if self.training and self.query_dropout > 0:
            # As the paper's code: each (image, query) slot loses its patch feature with
            # probability QUERY_DROPOUT, without rescaling the kept ones.
            keep = torch.rand(batch, self.num_queries, 1, device=device) >= self.query_dropout
            query_patch = query_patch * keep
        return QueryBundle(
            query_pos=query_patch + self.query_embed.weight,
            self_attn_mask=updetr_group_mask(self.num_queries, num_patches, device=device),
            meta={"query_groups": groups},
        )
