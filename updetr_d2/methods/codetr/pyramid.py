"""The feature pyramid Co-DETR's auxiliary heads read, built from the encoder's output.

A multi-scale encoder (Deformable DETR, DINO) already has levels: its memory is cut back
into them and one stride-2 level is added (``CoDeformableDetr``). A single-scale encoder
(DETR) has one map, at the backbone's last stride; :class:`SingleScaleAdapter` builds the
pyramid from it as the Co-DETR paper does for single-scale DETRs (a ViTDet-style simple
pyramid, as the method notes describe it: finer levels by bilinear 2x upsampling and a
3x3 conv, coarser ones by 3x3 stride-2 convs, each followed by GroupNorm, no activation,
like the multi-scale models' extra level).
"""
import math
from typing import Dict, List, Sequence

import torch
from detectron2.layers import ShapeSpec
from torch import nn
from torch.nn import functional as F

__all__ = ["SingleScaleAdapter", "pyramid_level_names", "pyramid_shapes"]


def pyramid_level_names(strides: List[int]) -> List[str]:
    """``p{log2(stride)}`` for every level, e.g. strides 8..128 -> p3..p7."""
    names = []
    for s in strides:
        level = int(round(math.log2(s)))
        if 2**level != s:
            raise ValueError(f"pyramid strides must be powers of two, got {strides}")
        names.append(f"p{level}")
    return names


def pyramid_shapes(channels: int, strides: List[int]) -> Dict[str, ShapeSpec]:
    """The encoder pyramid's level names -> shapes, as the auxiliary heads are built for."""
    return {n: ShapeSpec(channels=channels, stride=s) for n, s in zip(pyramid_level_names(strides), strides)}


def _conv_norm(channels: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(channels, channels, kernel_size=3, stride=stride, padding=1),
        nn.GroupNorm(math.gcd(32, channels), channels),
    )


class SingleScaleAdapter(nn.Module):
    """One encoder map at ``in_stride`` -> levels at ``strides`` (powers of two, in
    increasing order): the map itself where a stride equals ``in_stride``; each finer level
    from the next coarser one by bilinear 2x upsampling + conv; each coarser one from the
    next finer by a stride-2 conv. ``forward(x)`` -> {p{log2 s}: [B, C, H_s, W_s]}."""

    def __init__(self, channels: int, in_stride: int, strides: Sequence[int]):
        super().__init__()
        strides = list(strides)
        pyramid_level_names(strides + [in_stride])  # powers of two, or a clear error
        if strides != sorted(set(strides)) or not strides:
            raise ValueError(f"MODEL.CO_DETR.SINGLE_SCALE_STRIDES must increase strictly; got {strides}")
        self.in_stride = in_stride
        self.strides = strides
        finer = [s for s in strides if s < in_stride]
        coarser = [s for s in strides if s > in_stride]
        # Every level between the finest requested one and the input must exist to chain through.
        self.up = nn.ModuleList(_conv_norm(channels, 1) for _ in range(int(math.log2(in_stride // min(finer))))
                                ) if finer else nn.ModuleList()
        self.down = nn.ModuleList(_conv_norm(channels, 2) for _ in range(int(math.log2(max(coarser) // in_stride)))
                                  ) if coarser else nn.ModuleList()
        self.names = dict(zip(strides, pyramid_level_names(strides)))

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        levels = {self.in_stride: x}
        current, stride = x, self.in_stride
        for block in self.up:
            current = block(F.interpolate(current, scale_factor=2.0, mode="bilinear", align_corners=False))
            stride //= 2
            levels[stride] = current
        current, stride = x, self.in_stride
        for block in self.down:
            current = block(current)
            stride *= 2
            levels[stride] = current
        return {self.names[s]: levels[s] for s in self.strides}
