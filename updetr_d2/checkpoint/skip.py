"""Initial weights minus some parts: ``MODEL.WEIGHTS_SKIP`` (yaml) or
``train.init_checkpoint_skip`` (LazyConfig) name parameter-name prefixes of the model
(``"transformer.decoder."``, ``"query_generator.query_embed."``) that keep their fresh
initialisation although the checkpoint has them, e.g. to fine-tune from a pretraining
checkpoint's backbone and encoder only. A run that resumes from its own checkpoint loads
everything (see :meth:`DetrCheckpointer.resume_or_load`)."""
import logging
from collections import Counter
from typing import MutableMapping, Sequence, Tuple

__all__ = ["check_skip_prefixes", "skip_parts"]


def check_skip_prefixes(prefixes: Sequence[str], model) -> Tuple[str, ...]:
    """The prefixes as a tuple; a prefix that names no parameter or buffer of ``model`` is
    a typo and stops the run before training (else the skip would silently do nothing)."""
    if isinstance(prefixes, str):  # a yaml/CLI value of one name, not a tuple of names
        prefixes = (prefixes,)
    prefixes = tuple(str(p) for p in prefixes)
    if not prefixes:
        return prefixes
    names = [k for k, _ in model.named_parameters()] + [k for k, _ in model.named_buffers()]
    names = [n[len("module."):] if n.startswith("module.") else n for n in names]  # DDP
    unknown = [p for p in prefixes if not any(n.startswith(p) for n in names)]
    if unknown:
        tops = sorted({n.split(".")[0] for n in names})
        raise ValueError(
            f"MODEL.WEIGHTS_SKIP / train.init_checkpoint_skip: {unknown} match no parameter of "
            f"{type(model).__name__} (its top-level parts: {', '.join(tops)})")
    return prefixes


def skip_parts(state_dict: MutableMapping, prefixes: Sequence[str], logger: logging.Logger) -> None:
    """Delete the checkpoint's entries under ``prefixes`` in place; log how many per prefix."""
    counts = Counter()
    for key in list(state_dict):
        hit = next((p for p in prefixes if key.startswith(p)), None)
        if hit is not None:
            del state_dict[key]
            counts[hit] += 1
    logger.info("Not loaded from the initial weights (MODEL.WEIGHTS_SKIP), starting fresh: %s",
                ", ".join(f"{p}* ({counts[p]} tensors)" for p in prefixes))
