"""DN-DETR's checkpoint hand-off: weights move between a model with denoising and one
without. Inside :class:`DenoisingQueries` the anchor queries are
``query_generator.base.*``, without it ``query_generator.*``; DN's label embedding only
serves training and is left out (logged) for a model without denoising."""
import logging

from ...modeling.meta_arch.base import register_checkpoint_rule
from .queries import DenoisingQueries

logger = logging.getLogger(__name__)


@register_checkpoint_rule
def denoising_handoff(model, state_dict, prefix: str) -> None:
    generator = getattr(model, "query_generator", None)
    if generator is None:
        return
    key_prefix = prefix + "query_generator."
    has_dn = isinstance(generator, DenoisingQueries)
    ours = [k for k in state_dict if k.startswith(key_prefix)]
    # DenoisingQueries always has a label embedding: only then is a "base." prefix DN's
    # (another wrapping generator may have a submodule of that name).
    from_dn = any(k[len(key_prefix):].startswith("label_enc.") for k in ours)
    renamed = {}
    for key in ours:
        rest = key[len(key_prefix):]
        if has_dn and not rest.startswith(("base.", "label_enc.")):
            renamed[key_prefix + "base." + rest] = state_dict.pop(key)
        elif not has_dn and from_dn and rest.startswith("base."):
            renamed[key_prefix + rest[len("base."):]] = state_dict.pop(key)
        elif not has_dn and from_dn and rest.startswith("label_enc."):
            del state_dict[key]
            logger.info("Denoising is off: %s not loaded", key)
    state_dict.update(renamed)
