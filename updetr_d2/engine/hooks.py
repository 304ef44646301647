"""The hooks a model asks for: methods (and plug-ins) contribute training hooks through
``model.training_hooks()`` (see ``SetPredictionDetector``), and both training loops, the
yaml ``Trainer`` and the LazyConfig loop, register them with this one function, so a
method never needs an edit under ``engine/``."""
from typing import List

from torch import nn
from torch.nn.parallel import DistributedDataParallel

__all__ = ["model_hooks"]


def model_hooks(model: nn.Module) -> List:
    """The hooks ``model`` (unwrapped from DDP) asks for; none for a model without
    ``training_hooks`` (e.g. Detectron2's own meta-architectures)."""
    if isinstance(model, DistributedDataParallel):
        model = model.module
    training_hooks = getattr(model, "training_hooks", None)
    return list(training_hooks()) if callable(training_hooks) else []
