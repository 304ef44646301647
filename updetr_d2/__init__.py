"""DETR-family detectors, their unsupervised pretraining and training accelerators
for Detectron2.

``import updetr_d2`` makes Detectron2 v0.6 work on today's Python stack
(:mod:`updetr_d2.compat`) and registers the project's components into
Detectron2's registries and catalogs. It creates no files: datasets are made
or read when first loaded.
"""
__version__ = "0.1.0"

from . import compat

compat.apply()

from . import config, data, methods, modeling  # noqa: E402  (registration by import)
from .config import add_updetr_config  # noqa: E402

__all__ = ["add_updetr_config", "compat", "config", "data", "methods", "modeling"]
