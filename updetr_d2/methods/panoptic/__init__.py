"""Panoptic and instance segmentation with DETR's mask head (Carion et al. 2020, section
4.4) on any of the project's set-prediction detectors: the ``MaskHead`` plug-in, its
focal + dice losses, DETR's panoptic post-processing with the padding fixed, the
panoptic dataset mapper and the config keys. Two-stage recipe: train the detector on the
boxes of every segment (things and stuff), then the mask head alone
(``MODEL.PANOPTIC.FREEZE_DETECTOR``); or both jointly."""
from . import convert  # noqa: F401  (registers the official DETR panoptic checkpoint layout)
from . import mapper  # noqa: F401  (registers PanopticDetrDatasetMapper)
from .config import add_panoptic_config
from .losses import MaskFocalDice, dice_loss, focal_mask_loss
from .mask_head import MHAttentionMap, MaskHeadSmallConv
from .plugin import MaskContext, MaskHead

__all__ = [
    "MHAttentionMap",
    "MaskContext",
    "MaskFocalDice",
    "MaskHead",
    "MaskHeadSmallConv",
    "add_panoptic_config",
    "dice_loss",
    "focal_mask_loss",
]
