"""Checks of options no run can train with, registered with the other config checks
(:func:`~.registry.register_config_check`), so they fail before anything is built, naming
the key, instead of mid-run (zero queries fail in the matcher with a reshape error, a
zero batch in Detectron2's sampler with a misleading divisibility message).
"""
from .model_keys import config_value, model_keys
from .registry import register_config_check

__all__ = ["check_counts_positive"]


def _at_least_one(key: str, value, why: str) -> None:
    if isinstance(value, int) and not isinstance(value, bool) and value < 1:
        raise ValueError(f"{key}={value}: {why}; it must be at least 1")


@register_config_check
def check_counts_positive(cfg) -> None:
    """Class count, object queries and batch size are at least 1."""
    keys = model_keys(cfg)
    if keys.classes is not None and not keys.encoder_only:
        _at_least_one(*keys.classes, "the detector needs a class to predict")
    if keys.queries is not None and not keys.encoder_only:
        _at_least_one(*keys.queries, "the Hungarian matching assigns every object to a query, so an image "
                      "needs at least one query")
    if hasattr(cfg, "SOLVER"):  # yaml
        _at_least_one("SOLVER.IMS_PER_BATCH", cfg.SOLVER.IMS_PER_BATCH, "a training batch needs an image")
    else:
        _at_least_one("dataloader.train.total_batch_size",
                      config_value(cfg, "dataloader.train.total_batch_size"), "a training batch needs an image")
