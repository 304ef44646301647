"""UP-DETR's hand-off from pretraining to fine-tuning: when a detector without patch
queries (a ``Detr`` from ``UpDetr``, a ``DeformableDetr`` from ``DeformableUpDetr``) loads
a pretraining checkpoint, everything loads except the patch projection, the feature head
and the class head (the pretext's single "patch" class means nothing to
the detector), as in the paper; what was dropped is logged."""
import logging

from ...modeling.meta_arch.base import register_checkpoint_rule

logger = logging.getLogger(__name__)

# Keys only an UP-DETR pretraining checkpoint has, and the pretext's class head.
PRETRAINING_ONLY_KEYS = ("query_generator.patch2query.", "feature_align.", "heads.class_embed.")

# The encoder-only hand-off (MODEL.WEIGHTS_SKIP of projects/UPDETR/configs/*_finetune.*): the
# decoder, the query embeddings and the box head start fresh. The paper hands them off too, and
# this rule still does by default; but a short pretraining leaves a decoder that answers from its
# queries, not the image (at hand-off 4 % of its output variance is across images, 100 % at a
# fresh init), and fine-tuning from it does not recover: COCO128 AP 0.04 +- 0.03 with it, 1.31 +-
# 0.86 without it, 1.92 +- 1.09 from scratch (benchmarks/pretraining.py, README "UP-DETR").
ENCODER_HANDOFF_SKIP = ("transformer.decoder.", "query_generator.query_embed.", "heads.")
# The same for a Deformable DETR (from a DeformableUpDetr pretraining): its point queries also
# hold the reference-point projection, trained on the query embeddings that start fresh, so it
# starts fresh with them. The encoder's level embeddings (transformer.level_embed) load. A
# separate list because MODEL.WEIGHTS_SKIP refuses a prefix naming nothing (DETR has no
# reference points).
DEFORMABLE_ENCODER_HANDOFF_SKIP = ENCODER_HANDOFF_SKIP + ("query_generator.reference_points.",)


@register_checkpoint_rule
def pretraining_handoff(model, state_dict, prefix: str) -> None:
    is_pretraining = any(k.startswith(prefix + "query_generator.patch2query.") for k in state_dict)
    if not is_pretraining or hasattr(getattr(model, "query_generator", None), "patch2query"):
        return
    dropped = [k for k in list(state_dict) if k[len(prefix):].startswith(PRETRAINING_ONLY_KEYS)]
    for key in dropped:
        del state_dict[key]
    logger.info(
        "Initialising %s from an UP-DETR pretraining checkpoint; not loaded: %s. The decoder, query "
        "embeddings and box head load as in the paper unless MODEL.WEIGHTS_SKIP names them (as "
        "projects/UPDETR/configs/*_finetune.* do: a short pretraining's decoder ignores the image)",
        type(model).__name__, ", ".join(k[len(prefix):] for k in dropped),
    )
