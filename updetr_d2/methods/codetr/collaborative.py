"""Co-DETR's training on any set-prediction detector: the auxiliary heads on the encoder's
pyramid and their customized positive queries (the paper's sections 3.2-3.3).

:class:`CollaborativeTraining` is mixed into a detector class in front of it
(``class CoDeformableDetr(CollaborativeTraining, DeformableDetr)``); the detector says
how its encoder memory becomes a pyramid (``encoder_pyramid``), the mixin does the rest:
each head's one-to-many losses (x lambda2 x decoder layers) and, per head, a decoder pass
of its positive queries supervised by the head's assignment (x lambda1). Nothing of it
runs at inference.
"""
from typing import Dict, List, Optional

import torch

from ...modeling.meta_arch.base import DetectorState, add_losses
from .aux_heads import AuxHead, build_aux_head
from .positive_queries import PositiveQueries, PositiveQueryRoute, select_positive_queries
from .pyramid import pyramid_shapes

__all__ = ["CollaborativeTraining"]


class CollaborativeTraining:
    """Mixin: see the module docstring. The detector calls :meth:`setup_collaborative`
    from its ``__init__`` and merges :meth:`collaborative_config` into its
    ``from_config``."""

    def setup_collaborative(
        self,
        aux_heads: List[AuxHead],
        positive_queries: Optional[PositiveQueries],
        aux_loss_weight: float,
        positive_query_weight: float,
        min_positive_queries: int,
        max_positive_queries: int,
    ) -> None:
        if positive_queries is not None and len(positive_queries.box_proj) != len(aux_heads):
            raise ValueError(
                f"positive queries are built for {len(positive_queries.box_proj)} heads, "
                f"but there are {len(aux_heads)} auxiliary heads"
            )
        names = [h.name for h in aux_heads]
        if len(set(names)) != len(names):
            raise ValueError(f"MODEL.CO_DETR.AUX_HEADS: each head may be used once, got {names}")
        self.aux_heads = torch.nn.ModuleList(aux_heads)
        self.positive_queries = positive_queries
        self.aux_loss_weight = aux_loss_weight
        self.positive_query_weight = positive_query_weight
        self.min_positive_queries = min_positive_queries
        self.max_positive_queries = max_positive_queries

    @staticmethod
    def collaborative_config(cfg, pyramid_strides: List[int], anchor_queries: bool) -> Dict:
        """The auxiliary heads (built for the pyramid's levels) and the rest of
        ``MODEL.CO_DETR`` as constructor arguments."""
        c, d = cfg.MODEL.CO_DETR, cfg.MODEL.DETR
        heads = [build_aux_head(name, cfg, pyramid_shapes(d.HIDDEN_DIM, pyramid_strides)) for name in c.AUX_HEADS]
        positive_queries = None
        if c.POSITIVE_QUERIES and heads:
            positive_queries = PositiveQueries(
                len(heads), d.HIDDEN_DIM, d.HIDDEN_DIM, anchor_queries=anchor_queries,
                with_coord_feat=c.WITH_COORD_FEAT,
            )
        return dict(
            aux_heads=heads,
            positive_queries=positive_queries,
            # The paper's lambda2 weighs the encoder losses inside the sum over decoder layers.
            aux_loss_weight=c.LAMBDA2 * d.DEC_LAYERS,
            positive_query_weight=c.LAMBDA1,
            min_positive_queries=c.MIN_POSITIVE_QUERIES,
            max_positive_queries=c.MAX_POSITIVE_QUERIES,
        )

    def encoder_pyramid(self, memory) -> Dict[str, torch.Tensor]:
        """{level name: [B, d, H, W]} for the auxiliary heads, from the encoder memory."""
        raise NotImplementedError

    def losses(self, state: DetectorState) -> Dict:
        """The base model's losses, each auxiliary head's (x lambda2 x decoder depth) and
        those of its positive queries, decoded in a pass of their own over the same memory."""
        losses = super().losses(state)
        if not len(self.aux_heads):
            return losses
        pyramid = self.encoder_pyramid(state.memory)
        gt_instances = [x["instances"].to(self.device) for x in state.batched_inputs]
        for index, head in enumerate(self.aux_heads):
            head_losses, samples = head(pyramid, state.images, gt_instances)
            add_losses(losses, {k: v * self.aux_loss_weight for k, v in head_losses.items()}, head.name)
            if self.positive_queries is None:
                continue
            selected = select_positive_queries(
                samples, state.images.image_sizes, self.num_classes,
                self.min_positive_queries, self.max_positive_queries,
            )
            route = PositiveQueryRoute(selected, f"_co_{head.name}", self.positive_query_weight)
            queries = self.positive_queries(index, selected, self.transformer.nhead, route)
            outputs = self.decode_and_predict(state, queries)
            add_losses(losses, self.set_losses(outputs, state.targets, queries), head.name)
        return losses
