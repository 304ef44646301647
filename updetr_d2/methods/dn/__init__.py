"""DN-DETR (Li et al., CVPR 2022): query denoising for any anchor-query DETR. Noised
copies of the ground truth are decoded next to the matching queries and trained to
reconstruct it (training only; inference is the base model)."""
from . import checkpoint  # noqa: F401  (registers the hand-off rule)
from . import convert  # noqa: F401  (registers the official checkpoint layouts)
from .config import add_dn_config
from .groups import DenoisingGroups
from .noise import apply_box_noise, apply_label_noise
from .queries import DenoisingQueries

__all__ = ["DenoisingGroups", "DenoisingQueries", "add_dn_config", "apply_box_noise", "apply_label_noise"]
