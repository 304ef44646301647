"""Where a loaded config, yaml or LazyConfig, keeps the model's class count and its
number of object queries (the one-to-one matching's), as ``(key, value)`` pairs, so that
checks can name the key a user has to change.

yaml: the project's set-prediction detectors read ``MODEL.DETR.NUM_CLASSES`` and
``MODEL.DETR.NUM_OBJECT_QUERIES``; Detectron2's R-CNN and RetinaNet their own keys.
LazyConfig: ``model.num_classes`` (or the R-CNN / RetinaNet head's), and the query count
of the query generator (``model.query_generator.num_queries``, inside a wrapping generator
such as DN's ``model.query_generator.base.num_queries``, or ``model.num_queries`` for a
two-stage model without one). Extra queries (denoising groups, Co-DETR's positive queries)
are not matched one-to-one and do not count.
"""
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Optional, Tuple

from detectron2.modeling import META_ARCH_REGISTRY, GeneralizedRCNN, RetinaNet
from detectron2.utils.registry import locate

from ..modeling.meta_arch.base import SetPredictionDetector

__all__ = ["ModelKeys", "config_value", "model_keys"]

_LAZY_CLASS_KEYS = ("model.num_classes", "model.roi_heads.num_classes", "model.head.num_classes")
_LAZY_QUERY_KEYS = ("model.query_generator.num_queries", "model.query_generator.base.num_queries",
                    "model.num_queries")


@dataclass
class ModelKeys:
    """``classes``/``queries``: ``(key, value)`` or ``None`` where the config has none;
    ``encoder_only``: the model trains no detection head (encoder pretraining)."""

    classes: Optional[Tuple[str, Any]] = None
    queries: Optional[Tuple[str, Any]] = None
    encoder_only: bool = False


def config_value(cfg, key: str, default=None):
    """``cfg``'s value at the dotted ``key`` (interpolations resolved), or ``default``
    where a part is missing or ``None``."""
    node = cfg
    for part in key.split("."):
        try:
            node = node[int(part)] if isinstance(node, Sequence) and not isinstance(node, str) else node[part]
        except Exception:  # missing key, bad index or an interpolation that does not resolve
            return default
        if node is None:
            return default
    return node


def _target_class(node):
    target = config_value(node, "_target_")
    try:
        return locate(target) if isinstance(target, str) else target
    except Exception:  # an unimportable path is not ours to judge here
        return None


def _subclass(cls, base) -> bool:
    return isinstance(cls, type) and issubclass(cls, base)


def _first(cfg, keys):
    for key in keys:
        value = config_value(cfg, key)
        if value is not None:
            return key, value
    return None


def model_keys(cfg) -> ModelKeys:
    if hasattr(cfg, "MODEL"):  # yaml
        try:
            arch = META_ARCH_REGISTRY.get(cfg.MODEL.META_ARCHITECTURE)
        except KeyError:
            return ModelKeys()
        if _subclass(arch, SetPredictionDetector):
            d = cfg.MODEL.DETR
            return ModelKeys(("MODEL.DETR.NUM_CLASSES", d.NUM_CLASSES),
                             ("MODEL.DETR.NUM_OBJECT_QUERIES", d.NUM_OBJECT_QUERIES), bool(d.ENCODER_ONLY))
        if _subclass(arch, GeneralizedRCNN) and cfg.MODEL.ROI_HEADS.NAME:
            return ModelKeys(("MODEL.ROI_HEADS.NUM_CLASSES", cfg.MODEL.ROI_HEADS.NUM_CLASSES))
        if _subclass(arch, RetinaNet):
            return ModelKeys(("MODEL.RETINANET.NUM_CLASSES", cfg.MODEL.RETINANET.NUM_CLASSES))
        return ModelKeys()
    model = config_value(cfg, "model")
    if model is None:
        return ModelKeys()
    detr_family = _subclass(_target_class(model), SetPredictionDetector)
    return ModelKeys(_first(cfg, _LAZY_CLASS_KEYS), _first(cfg, _LAZY_QUERY_KEYS) if detr_family else None,
                     bool(config_value(cfg, "model.encoder_only", False)))
