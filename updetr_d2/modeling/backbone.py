"""Any Detectron2 backbone as a DETR feature extractor: feature maps plus the padding
masks (True = padded pixel) that position embeddings and attention need."""
import re
from typing import Dict, List, Sequence, Tuple

import torch
import torch.nn.functional as F
from detectron2.modeling import Backbone
from detectron2.structures import ImageList
from torch import nn

from ..layers.folded_norm import fold_frozen_batchnorm


def padding_mask(images: ImageList) -> torch.Tensor:
    """[B, H, W] bool mask of the padded batch: True where a pixel is padding."""
    batch, _, height, width = images.tensor.shape
    mask = torch.ones(batch, height, width, dtype=torch.bool, device=images.tensor.device)
    for i, (h, w) in enumerate(images.image_sizes):
        mask[i, :h, :w] = False
    return mask


def level_padding_mask(mask: torch.Tensor, size) -> torch.Tensor:
    """A padding mask [B, H, W] resized (nearest) to a feature map's size."""
    return F.interpolate(mask[None].float(), size=size).to(torch.bool)[0]


def level_strides(backbone_strides: Sequence[int], num_levels: int) -> List[int]:
    """Stride of every level of a feature pyramid that continues the backbone's levels
    with stride-2 levels: the backbone's strides, then x2 per extra level."""
    extra = num_levels - len(backbone_strides)
    return list(backbone_strides) + [backbone_strides[-1] * 2 ** (k + 1) for k in range(extra)]


class MaskedBackbone(nn.Module):
    """Runs ``backbone`` and returns ``[(feature, mask), ...]`` for ``in_features``,
    each mask downsampled to its feature map's size."""

    def __init__(self, backbone: Backbone, in_features: Sequence[str]):
        super().__init__()
        shapes = backbone.output_shape()
        missing = [f for f in in_features if f not in shapes]
        if missing:
            raise ValueError(
                f"Backbone {type(backbone).__name__} has no output {missing}; it gives {sorted(shapes)}"
            )
        # Frozen norms computed inside their convolutions: the same function, fewer passes
        # over the activations (layers/folded_norm.py).
        fold_frozen_batchnorm(backbone)
        # Channels-last (NHWC) convolutions: oneDNN's native layout on CPUs, so no reorder
        # around each convolution (measured in benchmarks/detr_train_step.py and
        # updetr_pretrain_step.py); results are the same function.
        backbone.to(memory_format=torch.channels_last)
        self.backbone = backbone
        self.in_features = list(in_features)
        self.num_channels = [shapes[f].channels for f in self.in_features]
        self.strides = [shapes[f].stride for f in self.in_features]

    @property
    def size_divisibility(self) -> int:
        return getattr(self.backbone, "size_divisibility", 0)

    def forward_all(self, images: ImageList) -> Tuple[Dict[str, torch.Tensor], List[Tuple[torch.Tensor, torch.Tensor]]]:
        """Every output of the backbone by name (finer levels for a mask head), and
        ``[(feature, mask), ...]`` for ``in_features``."""
        features = self.backbone(images.tensor.contiguous(memory_format=torch.channels_last))
        mask = padding_mask(images)
        levels = [(features[n], level_padding_mask(mask, features[n].shape[-2:])) for n in self.in_features]
        return features, levels

    def forward(self, images: ImageList) -> List[Tuple[torch.Tensor, torch.Tensor]]:
        return self.forward_all(images)[1]


def config_feature_strides(cfg, names: Sequence[str]) -> List[int]:
    """Strides of backbone outputs named in a yaml config, without building the backbone
    when the names say it (Detectron2's ``resN`` / ``pN``: stride 2^N)."""
    strides = {}
    for name in names:
        match = re.fullmatch(r"(?:res|p)(\d)", name)
        if match:
            strides[name] = 2 ** int(match.group(1))
    if len(strides) < len(names):
        from detectron2.modeling import build_backbone

        shapes = build_backbone(cfg).output_shape()
        strides.update({n: shapes[n].stride for n in names if n in shapes})
    missing = [n for n in names if n not in strides]
    if missing:
        raise ValueError(f"the backbone has no output {missing}")
    return [strides[n] for n in names]
