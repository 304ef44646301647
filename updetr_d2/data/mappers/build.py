"""Dataset mappers selectable by name from a yaml config (``INPUT.DATASET_MAPPER``)."""
from detectron2.utils.registry import Registry

from .dataset_mapper import DatasetMapper

MAPPER_REGISTRY = Registry("DATASET_MAPPER")
MAPPER_REGISTRY.__doc__ = """
Dataset mappers (``@configurable`` callables turning a dataset dict into model input),
built as ``MAPPER_REGISTRY.get(name)(cfg, is_train)``.
"""
MAPPER_REGISTRY.register(DatasetMapper)


def build_dataset_mapper(cfg, is_train: bool):
    """The mapper named by ``cfg.INPUT.DATASET_MAPPER`` (``DatasetMapper``, Detectron2's reading images
    through the project's reader, by default)."""
    name = cfg.INPUT.DATASET_MAPPER
    try:
        mapper_cls = MAPPER_REGISTRY.get(name)
    except KeyError:
        raise KeyError(
            f"INPUT.DATASET_MAPPER={name!r} is not a registered dataset mapper; "
            f"choose one of {sorted(name for name, _ in MAPPER_REGISTRY)}"
        ) from None
    return mapper_cls(cfg, is_train)
