"""UP-DETR's patch-conditioned queries."""
import torch
from detectron2.config import configurable
from torch import nn

from ...modeling.queries import QueryBundle
from .groups import contiguous_group_sizes, patch_query_groups, updetr_group_mask


class PatchQueries(nn.Module):
    """Learned object queries plus query-patch features: the N queries are split into
    ``num_patches`` groups of consecutive queries (one per patch; uneven splits allowed)
    and the projected feature of patch k is added to every query of group k. A decoder
    self-attention mask keeps the groups apart, so each group localises its own patch.

    The grouping belongs to the model: it is set by the number of patches it is trained
    with (``INPUT.QUERY_PATCH.NUM_PATCHES``), not by the inputs. Given fewer patches
    (one query crop in one-shot detection, ``--num-patches`` in the visualiser), patch k
    still takes group k and the queries of the groups without a patch are not decoded,
    as the original code does at test time (``groups.patch_query_groups``). More patches
    than groups is an error.

    ``query_embed`` has the name ``LearnedQueries`` uses, so it transfers to DETR.
    """

    @configurable
    def __init__(
        self, num_queries: int, hidden_dim: int, patch_feature_dim: int, *, num_patches: int,
        query_dropout: float = 0.1,
    ):
        super().__init__()
        if not 0.0 <= query_dropout < 1.0:
            raise ValueError(f"MODEL.UPDETR.QUERY_DROPOUT must be in [0, 1), got {query_dropout}")
        contiguous_group_sizes(num_queries, num_patches)  # refuses more patches than queries
        self.query_embed = nn.Embedding(num_queries, hidden_dim)
        self.patch2query = nn.Linear(patch_feature_dim, hidden_dim)
        self.num_patches = int(num_patches)
        self.query_dropout = query_dropout

    @classmethod
    def from_config(cls, cfg, patch_feature_dim: int):
        """``patch_feature_dim``: channels of the backbone feature the patches are pooled from."""
        return {
            "num_queries": cfg.MODEL.DETR.NUM_OBJECT_QUERIES,
            "hidden_dim": cfg.MODEL.DETR.HIDDEN_DIM,
            "patch_feature_dim": patch_feature_dim,
            "num_patches": cfg.INPUT.QUERY_PATCH.NUM_PATCHES,
            "query_dropout": cfg.MODEL.UPDETR.QUERY_DROPOUT,
        }

    @property
    def num_queries(self) -> int:
        return self.query_embed.num_embeddings

    def extra_repr(self) -> str:
        return f"num_patches={self.num_patches}, query_dropout={self.query_dropout}"

    def forward(self, patch_features: torch.Tensor) -> QueryBundle:
        """``patch_features``: ``[B, M, C]``, M <= ``num_patches`` patches per image. The
        bundle holds the queries of the first M groups (all N when M = ``num_patches``)."""
        batch, given, _ = patch_features.shape
        device = patch_features.device
        groups = patch_query_groups(self.num_queries, self.num_patches, given, device)
        decoded = len(groups)
        query_patch = self.patch2query(patch_features)[:, groups]  # [B, Q, d]
        if self.training and self.query_dropout > 0:
            # As the paper's code: each (image, query) slot loses its patch feature with
            # probability QUERY_DROPOUT, without rescaling the kept ones.
            keep = torch.rand(batch, decoded, 1, device=device) >= self.query_dropout
            query_patch = query_patch * keep
        return QueryBundle(
            query_pos=query_patch + self.query_embed.weight[:decoded],
            self_attn_mask=updetr_group_mask(self.num_queries, self.num_patches, device, num_given=given),
            meta={"query_groups": groups},
        )
