"""The hand-off from encoder pretraining to a detector: an encoder-only checkpoint (it
has ``transformer.encoder`` and no ``transformer.decoder``) gives the detector its
backbone, input projection and encoder; decoder, queries and heads keep their fresh
initialisation; the pretext head loads only into a model that has the same plug-in (a
multi-task run continuing the pretext), otherwise it is left out. The log says which."""
import logging
from collections import Counter

from ...modeling.meta_arch.base import register_checkpoint_rule

logger = logging.getLogger(__name__)

__all__ = ["encoder_pretraining_handoff", "is_encoder_only_checkpoint"]

# How the log names the parts a checkpoint fills.
PARTS = (("backbone.", "backbone"), ("input_proj.", "input projection"), ("transformer.", "encoder"),
         ("plugins.", "pretext head"))


def is_encoder_only_checkpoint(keys) -> bool:
    keys = list(keys)
    return (any(k.startswith("transformer.encoder.") for k in keys)
            and not any(k.startswith("transformer.decoder.") for k in keys))


@register_checkpoint_rule
def encoder_pretraining_handoff(model, state_dict, prefix: str) -> None:
    keys = [k[len(prefix):] for k in state_dict if k.startswith(prefix)]
    if getattr(model, "encoder_only", False) or not is_encoder_only_checkpoint(keys):
        return
    own = model.state_dict()
    dropped = [k for k in keys if k.startswith("plugins.")
               and (k not in own or tuple(own[k].shape) != tuple(state_dict[prefix + k].shape))]
    for key in dropped:
        del state_dict[prefix + key]
    loaded = Counter(next((name for p, name in PARTS if k.startswith(p)), k.split(".")[0])
                     for k in keys if k not in dropped)
    fresh = sorted({k.split(".")[0] if not k.startswith("transformer.") else ".".join(k.split(".")[:2])
                    for k in own if k not in keys})
    logger.info(
        "Initialising %s from an encoder-only pretraining checkpoint: loaded %s; starting fresh: %s%s",
        type(model).__name__, ", ".join(f"{name} ({n} tensors)" for name, n in loaded.items()),
        ", ".join(fresh) or "nothing",
        f"; not loaded (the pretext head): {', '.join(dropped)}" if dropped else "",
    )
