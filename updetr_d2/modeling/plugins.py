"""Plug-ins: what a method adds to a DETR-family detector without subclassing it.

A plug-in is an ``nn.Module`` (its parameters train and checkpoint with the model,
under ``plugins.<i>.``) that the meta-architecture calls at fixed points of its phases
(see :mod:`updetr_d2.modeling.meta_arch.base`):

* ``after_encode(model, state)``: the encoder memory is in ``state.memory``; e.g. an
  encoder pretext computes its head here and keeps what its loss needs on itself or in
  ``state.extras``. In an encoder-only model (``MODEL.DETR.ENCODER_ONLY``) nothing ran
  before (``state.memory`` is None) and the plug-in encodes the view it needs with
  ``model.encode_images``;
* ``after_predict(model, state)``: decoder states and the output dict are ready
  (``state.decoded``, ``state.outputs``); e.g. a mask head;
* ``losses(model, state) -> dict``: extra weighted ``loss_*`` terms (training only),
  merged into the model's losses; a key that is already there is an error;
* ``training_hooks() -> list``: Detectron2 hooks both training loops register;
* ``attach(model)``: once, when the whole model is built (e.g. add a loss term to
  ``model.criterion``, freeze the detector's parameters);
* ``after_inference(model, state, results)``: edit or extend the per-image results of
  inference in place (e.g. masks, a panoptic segmentation).

yaml: ``MODEL.DETR.PLUGINS`` lists registered names, each built as
``PLUGIN_REGISTRY.get(name)(cfg)``; LazyConfig: ``model.plugins = [L(MyPlugin)(...)]``.
"""
from typing import Dict, List

from detectron2.utils.registry import Registry
from torch import Tensor, nn

__all__ = ["PLUGIN_REGISTRY", "DetectorPlugin", "build_plugins"]

PLUGIN_REGISTRY = Registry("DETR_PLUGIN")
PLUGIN_REGISTRY.__doc__ = """Detector plug-ins (``DetectorPlugin`` subclasses) named in
``MODEL.DETR.PLUGINS``; built as ``PLUGIN_REGISTRY.get(name)(cfg)``."""


class DetectorPlugin(nn.Module):
    """Base class: every phase callback does nothing unless overridden."""

    def attach(self, model: nn.Module) -> None:
        pass

    def after_encode(self, model: nn.Module, state) -> None:
        pass

    def after_predict(self, model: nn.Module, state) -> None:
        pass

    def losses(self, model: nn.Module, state) -> Dict[str, Tensor]:
        return {}

    def training_hooks(self) -> List:
        return []

    def after_inference(self, model: nn.Module, state, results: List[Dict]) -> None:
        pass


def build_plugins(cfg) -> List[DetectorPlugin]:
    """The plug-ins named in ``cfg.MODEL.DETR.PLUGINS``, in order."""
    plugins = []
    for name in cfg.MODEL.DETR.PLUGINS:
        try:
            plugin_cls = PLUGIN_REGISTRY.get(name)
        except KeyError:
            raise KeyError(
                f"MODEL.DETR.PLUGINS names {name!r}, which is not a registered plug-in; "
                f"registered: {sorted(n for n, _ in PLUGIN_REGISTRY)}"
            ) from None
        plugins.append(plugin_cls(cfg))
    return plugins
