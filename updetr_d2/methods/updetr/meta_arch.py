"""UP-DETR pretraining as a Detectron2 meta-architecture: DETR whose queries are
conditioned on random patches of the image, trained to find those patches."""
import torch
from detectron2.modeling import META_ARCH_REGISTRY

from ...modeling.meta_arch.detr import Detr, build_detr_criterion
from .pretraining import QueryPatchPretraining
from .queries import PatchQueries

__all__ = ["UPDETR", "UpDetr"]


@META_ARCH_REGISTRY.register()
class UpDetr(QueryPatchPretraining, Detr):
    """Random query patch detection (one "patch" class) on DETR.

    The patches' pooled backbone features are projected and added to the object queries
    (``PatchQueries``; the rest is :class:`QueryPatchPretraining`). Losses: DETR's (patch
    vs no-object, L1, GIoU) through the shared matcher and criterion, plus feature
    reconstruction.

    The queries are grouped for the number of patches the model is built with
    (``INPUT.QUERY_PATCH.NUM_PATCHES``); an input with fewer patches is decoded with the
    queries of the first groups only (``PatchQueries``), as the original at test time.

    At inference each decoded query gives a box, the probability that it is its patch
    (``scores``) and, in ``pred_classes``, the index of the patch its group was given.
    """

    @classmethod
    def from_config(cls, cfg):
        ret = super().from_config(cfg)
        extra_terms, extra_weights = cls.reconstruction_terms(cfg)
        ret.update(
            num_classes=1,
            query_generator=PatchQueries(cfg, patch_feature_dim=ret["backbone"].num_channels[-1]),
            criterion=build_detr_criterion(cfg, num_classes=1, extra_terms=extra_terms, extra_weights=extra_weights),
            **cls.pretraining_options(cfg),
        )
        return ret

    def patch_scores(self, pred_logits: torch.Tensor) -> torch.Tensor:
        # Softmax over (patch, no-object): DETR's classifier.
        return pred_logits.softmax(-1)[..., 0]


# The name configs used before the class names were made consistent (``Detr``, ``UpDetr``).
UPDETR = UpDetr
META_ARCH_REGISTRY._do_register("UPDETR", UpDetr)
