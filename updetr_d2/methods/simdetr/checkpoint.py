"""SimDETR's hand-off from pretraining to fine-tuning (stage E): a detector pretrained on
K pseudo-classes loads into the downstream detector with everything but what depends on
the classes: the class head (every decoder layer's copy under box refinement, and the
encoder's in two-stage mode) and DN's label embedding. They are re-initialised for the
downstream classes, as DETReg does when it loads a pretraining checkpoint; what was left
out is logged by name.

The rule fires when the checkpoint's class head has another number of classes than the
model's: that is what tells a pretraining checkpoint from a fine-tuned one of the same
detector (which must load whole). If K happens to equal the downstream class count, the
pretraining head loads; its classes are cluster ids, and fine-tuning retrains it.
"""
import logging

from ...modeling.meta_arch.base import register_checkpoint_rule

logger = logging.getLogger(__name__)

__all__ = ["CLASS_DEPENDENT_PREFIXES", "class_head_handoff"]

# Parameters whose shape depends on the number of classes.
CLASS_DEPENDENT_PREFIXES = ("heads.class_embed.", "query_generator.label_enc.")
CLASS_HEAD = CLASS_DEPENDENT_PREFIXES[0]


@register_checkpoint_rule
def class_head_handoff(model, state_dict, prefix: str) -> None:
    own = model.state_dict()
    head_keys = [k for k in own if k.startswith(CLASS_HEAD)]
    differs = any(
        prefix + k in state_dict and tuple(state_dict[prefix + k].shape) != tuple(own[k].shape) for k in head_keys
    )
    if not differs:
        return
    dropped = [k for k in list(state_dict) if k[len(prefix):].startswith(CLASS_DEPENDENT_PREFIXES)]
    shapes = {k: tuple(state_dict[k].shape) for k in dropped}
    for key in dropped:
        del state_dict[key]
    logger.info(
        "Initialising %s (%d classes) from a checkpoint with another class count; "
        "re-initialised, not loaded: %s",
        type(model).__name__, model.num_classes,
        ", ".join(f"{k[len(prefix):]} {list(s)}" for k, s in shapes.items()),
    )
