"""UP-DETR's hand-off from pretraining to fine-tuning: when a detector without patch
queries loads a pretraining checkpoint, everything loads except the patch projection,
the feature head and the class head (the pretext's single "patch" class means nothing to
the detector), as in the paper; what was dropped is logged."""
import logging

from ...modeling.meta_arch.base import register_checkpoint_rule

logger = logging.getLogger(__name__)

# Keys only an UP-DETR pretraining checkpoint has, and the pretext's class head.
PRETRAINING_ONLY_KEYS = ("query_generator.patch2query.", "feature_align.", "heads.class_embed.")


@register_checkpoint_rule
def pretraining_handoff(model, state_dict, prefix: str) -> None:
    is_pretraining = any(k.startswith(prefix + "query_generator.patch2query.") for k in state_dict)
    if not is_pretraining or hasattr(getattr(model, "query_generator", None), "patch2query"):
        return
    dropped = [k for k in list(state_dict) if k[len(prefix):].startswith(PRETRAINING_ONLY_KEYS)]
    for key in dropped:
        del state_dict[key]
    logger.info(
        "Initialising %s from an UP-DETR pretraining checkpoint; not loaded: %s",
        type(model).__name__, ", ".join(k[len(prefix):] for k in dropped),
    )
