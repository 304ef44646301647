"""Stage A's frozen feature extractor: any Detectron2 backbone, one of its outputs.

The default is the ImageNet EfficientNet-Lite0 (its weights come with the package, and it
runs on a CPU); a user's SwAV / DINO / MoCo ResNet-50 loads through ``MODEL.WEIGHTS`` and
the project's checkpointer, which converts those files. The extractor only makes the
proposals and their embeddings: it need not be the detector's backbone (the detector may
even be trained from scratch).
"""
import logging
from typing import Sequence

import torch
from detectron2.modeling import build_backbone
from detectron2.modeling.backbone import Backbone
from torch import nn

logger = logging.getLogger(__name__)

__all__ = ["FeatureExtractor"]


class FeatureExtractor(nn.Module):
    """``backbone`` in eval mode without gradients, returning the ``feature`` output for
    one image given as Detectron2 passes it (``[3, H, W]``, 0-255, in ``INPUT.FORMAT``)."""

    def __init__(self, backbone: Backbone, feature: str, pixel_mean: Sequence[float], pixel_std: Sequence[float]):
        super().__init__()
        shapes = backbone.output_shape()
        if feature not in shapes:
            raise ValueError(
                f"SIMDETR.FEATURE={feature!r} is not an output of {type(backbone).__name__}; "
                f"it gives {sorted(shapes)}"
            )
        self.backbone = backbone
        self.feature = feature
        self.stride = shapes[feature].stride
        self.channels = shapes[feature].channels
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean, dtype=torch.float32).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std, dtype=torch.float32).view(-1, 1, 1), False)
        self.eval()
        self.requires_grad_(False)

    @classmethod
    def from_config(cls, cfg) -> "FeatureExtractor":
        """The backbone of a yaml config (``MODEL.BACKBONE``), its output
        ``SIMDETR.FEATURE``, weights from ``MODEL.WEIGHTS`` when set (backbones that load
        their own, as EfficientNet-Lite with ``PRETRAINED``, need none)."""
        from ...checkpoint import DetrCheckpointer

        extractor = cls(build_backbone(cfg), cfg.SIMDETR.FEATURE, cfg.MODEL.PIXEL_MEAN, cfg.MODEL.PIXEL_STD)
        if cfg.MODEL.WEIGHTS:
            # The checkpointer suffix-matches converted ResNet names into ``backbone.*``.
            DetrCheckpointer.from_config(cfg, extractor).load(cfg.MODEL.WEIGHTS)
        extractor.to(cfg.MODEL.DEVICE)
        return extractor

    def train(self, mode: bool = True):
        # Frozen: BatchNorm statistics must not move, whatever a caller asks.
        return super().train(False)

    @torch.no_grad()
    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = (image.to(self.pixel_mean.device, torch.float32) - self.pixel_mean) / self.pixel_std
        return self.backbone(x[None])[self.feature][0]
