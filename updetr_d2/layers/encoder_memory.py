"""What a transformer encoder hands on: the memory of every feature level, flattened,
with what is needed to read it back per level. Both the DETR and the Deformable DETR
transformers return it, so encoder-side losses and heads (pretexts, Co-DETR's pyramid,
mask heads) read one structure whatever the detector."""
from dataclasses import dataclass
from typing import List, Optional

from torch import Tensor

__all__ = ["EncoderMemory"]


@dataclass(eq=False)  # eq=False: tensors have no truth value
class EncoderMemory:
    """memory: [B, S, d], the levels flattened row-major, level 0 first.
    padding_mask: [B, S] bool, True = the position lies in batch padding.
    spatial_shapes: long [L, 2], (H, W) of each level.
    level_start_index: long [L], where each level starts in S.
    pos: [B, S, d] position embedding of each position (None when not kept).
    valid_ratios: [B, L, 2], the valid (w, h) fraction of each level (deformable
        attention's normaliser; None for single-level DETR).
    sources: every level's encoder *input*, [B, d, H, W] each (the projected backbone
        levels; DETR's mask head reads them next to the memory); set by the detector.
    """

    memory: Tensor
    padding_mask: Tensor
    spatial_shapes: Tensor
    level_start_index: Tensor
    pos: Optional[Tensor] = None
    valid_ratios: Optional[Tensor] = None
    sources: Optional[List[Tensor]] = None

    @property
    def num_levels(self) -> int:
        return int(self.spatial_shapes.shape[0])

    def level_maps(self) -> List[Tensor]:
        """The memory cut back into its levels, each [B, d, H, W]."""
        B, _, d = self.memory.shape
        maps = []
        for (h, w), start in zip(self.spatial_shapes.tolist(), self.level_start_index.tolist()):
            maps.append(self.memory[:, start: start + h * w].transpose(1, 2).reshape(B, d, h, w))
        return maps

    def level_padding_masks(self) -> List[Tensor]:
        """The padding mask cut back into its levels, each [B, H, W]."""
        B = self.padding_mask.shape[0]
        return [
            self.padding_mask[:, start: start + h * w].view(B, h, w)
            for (h, w), start in zip(self.spatial_shapes.tolist(), self.level_start_index.tolist())
        ]
