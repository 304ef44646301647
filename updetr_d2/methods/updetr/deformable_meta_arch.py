"""UP-DETR's random query patch detection on Deformable DETR: the pretraining of a
Deformable DETR whose checkpoint a ``DeformableDetr`` is then fine-tuned from."""
import torch
from detectron2.modeling import META_ARCH_REGISTRY

from ...modeling.meta_arch.deformable_detr import DeformableDetr, build_deformable_criterion
from .pretraining import QueryPatchPretraining
from .queries import PatchPointQueries

__all__ = ["DeformableUpDetr"]


@META_ARCH_REGISTRY.register()
class DeformableUpDetr(QueryPatchPretraining, DeformableDetr):
    """Random query patch detection (one "patch" class) on Deformable DETR.

    The patches' pooled features (from the last backbone level the detector reads) are
    added to the positional queries of their group (``PatchPointQueries``, which says
    why there); the rest is :class:`QueryPatchPretraining`, as ``UpDetr``. Losses:
    Deformable DETR's (sigmoid focal on the patch class, L1, GIoU) plus feature
    reconstruction. Iterative box refinement works unchanged; two-stage and anchor
    queries are refused, since their queries do not come from learned positional
    queries a patch could be added to.

    At inference each decoded query gives a box, the sigmoid probability of the patch
    class (``scores``) and, in ``pred_classes``, the index of the patch its group was
    given, as ``UpDetr``.
    """

    @classmethod
    def from_config(cls, cfg):
        dd = cfg.MODEL.DEFORMABLE_DETR
        if dd.TWO_STAGE:
            raise ValueError(
                "DeformableUpDetr cannot pretrain two-stage Deformable DETR (MODEL.DEFORMABLE_DETR.TWO_STAGE): "
                "its queries are the encoder's proposals, which no query patch conditions. Pretrain with "
                "TWO_STAGE False (box refinement is supported)"
            )
        if dd.ANCHOR_QUERIES:
            raise ValueError(
                "DeformableUpDetr needs learned point queries: with MODEL.DEFORMABLE_DETR.ANCHOR_QUERIES the "
                "decoder derives its positional queries from anchor boxes, so there is none to add a patch to"
            )
        ret = super().from_config(cfg)
        extra_terms, extra_weights = cls.reconstruction_terms(cfg)
        ret.update(
            num_classes=1,
            query_generator=PatchPointQueries(cfg, patch_feature_dim=ret["backbone"].num_channels[-1]),
            criterion=build_deformable_criterion(
                cfg, num_classes=1, extra_terms=extra_terms, extra_weights=extra_weights
            ),
            **cls.pretraining_options(cfg),
        )
        return ret

    def patch_scores(self, pred_logits: torch.Tensor) -> torch.Tensor:
        # Sigmoid of the single class: Deformable DETR's focal classifier has no no-object.
        return pred_logits.sigmoid()[..., 0]
