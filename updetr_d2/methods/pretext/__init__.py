"""Self-supervised pretexts on the encoder tokens of DETR and Deformable DETR (an
empirical study of reconstruction, masked image modelling and jigsaw for detection
transformers, Kumar et al. 2022): the corrupted view as a dataset mapper, pretext heads
and losses as a detector plug-in (``EncoderPretext``), encoder-only pretraining
(``MODEL.DETR.ENCODER_ONLY``) and its hand-off to a detector, a tokenizer for discrete
masked image modelling with a codebook the project builds itself."""
from . import checkpoint  # noqa: F401  (registers the hand-off rule)
from .config import TASKS, add_pretext_config
from .corruption import CorruptedView, corrupt
from .geometry import crop_to_patches, expand_grid, patch_grid, patchify, unpatchify
from .heads import PRETEXT_HEAD_REGISTRY
from .mapper import PretextDatasetMapper
from .plugin import EncoderPretext, loss_mask
from .tokenizer import TOKENIZER_REGISTRY, KMeansPatchTokenizer, PatchTokenizer

__all__ = [
    "CorruptedView",
    "EncoderPretext",
    "KMeansPatchTokenizer",
    "PRETEXT_HEAD_REGISTRY",
    "PatchTokenizer",
    "PretextDatasetMapper",
    "TASKS",
    "TOKENIZER_REGISTRY",
    "add_pretext_config",
    "corrupt",
    "crop_to_patches",
    "expand_grid",
    "loss_mask",
    "patch_grid",
    "patchify",
    "unpatchify",
]
