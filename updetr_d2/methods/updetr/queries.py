"""UP-DETR's patch-conditioned queries: DETR's positional queries (``PatchQueries``) and
Deformable DETR's point queries (``PatchPointQueries``), each plus the projected feature
of the query patch its group was given."""
import torch
from detectron2.config import configurable
from torch import nn

from ...modeling.queries import QueryBundle
from .groups import contiguous_group_sizes, patch_query_groups, updetr_group_mask

__all__ = ["PatchPointQueries", "PatchQueries"]


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

    # Rows of query_embed are this many hidden_dim-wide vectors per query.
    embedding_parts = 1

    @configurable
    def __init__(
        self, num_queries: int, hidden_dim: int, patch_feature_dim: int, *, num_patches: int,
        query_dropout: float = 0.1,
    ):
        super().__init__()
        if not 0.0 <= query_dropout < 1.0:
            raise ValueError(f"MODEL.UPDETR.QUERY_DROPOUT must be in [0, 1), got {query_dropout}")
        contiguous_group_sizes(num_queries, num_patches)  # refuses more patches than queries
        self.hidden_dim = hidden_dim
        self.query_embed = nn.Embedding(num_queries, self.embedding_parts * hidden_dim)
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

    def learned_queries(self, decoded: int) -> QueryBundle:
        """The image-independent queries of the first ``decoded`` slots."""
        return QueryBundle(query_pos=self.query_embed.weight[:decoded])

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
        queries = self.learned_queries(decoded)
        queries.query_pos = query_patch + queries.query_pos
        queries.self_attn_mask = updetr_group_mask(self.num_queries, self.num_patches, device, num_given=given)
        queries.meta["query_groups"] = groups
        return queries


class PatchPointQueries(PatchQueries):
    """``PatchQueries`` for Deformable DETR's decoder: as ``LearnedPointQueries``, a
    learned positional and content vector per query (``query_embed`` [N, 2d], split in
    that order) and a reference point ``sigmoid(reference_points(query_pos))``; the
    projected patch feature of the query's group is added to the positional query.

    UP-DETR's paper and code cover DETR only, where the patch is added to the positional
    object query that every decoder layer reads. Its counterpart here is ``query_pos``:
    it enters every deformable decoder layer's self-attention and, through ``tgt +
    query_pos``, the sampling offsets and attention weights of the cross-attention. The
    reference point is computed from the learned ``query_pos`` alone, before the patch
    is added, so it stays an image-independent prior as in Deformable DETR and what a
    fine-tuned Deformable DETR inherits from the pretraining is the prior it will use.

    The parameter names are ``LearnedPointQueries``' (``query_embed``,
    ``reference_points``), so they load into a Deformable DETR.
    """

    embedding_parts = 2

    @configurable
    def __init__(self, num_queries: int, hidden_dim: int, patch_feature_dim: int, **kwargs):
        super().__init__(num_queries, hidden_dim, patch_feature_dim, **kwargs)
        self.reference_points = nn.Linear(hidden_dim, 2)
        # Deformable DETR's initialisation of the reference-point projection.
        nn.init.xavier_uniform_(self.reference_points.weight)
        nn.init.zeros_(self.reference_points.bias)

    def learned_queries(self, decoded: int) -> QueryBundle:
        query_pos, tgt = self.query_embed.weight[:decoded].split(self.hidden_dim, dim=1)
        reference = self.reference_points(query_pos).sigmoid()
        return QueryBundle(query_pos=query_pos, tgt=tgt, reference_points=reference)
