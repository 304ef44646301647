"""UP-DETR (Dai et al., CVPR 2021): unsupervised pretraining of DETR by random query
patch detection. Everything only UP-DETR needs lives here: the meta-architectures
(``UpDetr`` on DETR, ``DeformableUpDetr`` on Deformable DETR, sharing
``QueryPatchPretraining``), their patch-conditioned queries and query groups, the feature
reconstruction loss, the query patch and one-shot dataset mappers, one-shot
evaluation, the pretext's held-out metrics, its config keys and its pretraining ->
fine-tuning checkpoint hand-off."""
from . import checkpoint  # noqa: F401  (registers the hand-off rule)
from . import convert  # noqa: F401  (registers the official checkpoint layouts)
from .config import add_updetr_pretraining_config
from .deformable_meta_arch import DeformableUpDetr
from .groups import contiguous_group_sizes, contiguous_groups, patch_query_groups, updetr_group_mask
from .losses import FeatureReconstruction
from .meta_arch import UPDETR, UpDetr
from .one_shot_eval import evaluate_one_shot, format_one_shot_results
from .one_shot_mapper import OneShotDatasetMapper
from .patch_augmentation import augment_patches
from .patch_sampling import crop_and_resize_patches, sample_patch_boxes
from .pretext_metrics import feature_reconstruction_loss, held_out_patch_metrics, patch_localisation_ap, split_by_group
from .pretraining import QueryPatchPretraining
from .queries import PatchPointQueries, PatchQueries
from .query_patch_mapper import (
    UPDETR_MAX_SIZE,
    UPDETR_MIN_SIZES,
    QueryPatchDatasetMapper,
    patch_detection_input,
    patches_to_tensor,
)

__all__ = [
    "DeformableUpDetr",
    "FeatureReconstruction",
    "OneShotDatasetMapper",
    "PatchPointQueries",
    "PatchQueries",
    "QueryPatchDatasetMapper",
    "QueryPatchPretraining",
    "UPDETR",
    "UPDETR_MAX_SIZE",
    "UPDETR_MIN_SIZES",
    "UpDetr",
    "add_updetr_pretraining_config",
    "augment_patches",
    "contiguous_group_sizes",
    "contiguous_groups",
    "crop_and_resize_patches",
    "evaluate_one_shot",
    "feature_reconstruction_loss",
    "format_one_shot_results",
    "held_out_patch_metrics",
    "patch_localisation_ap",
    "patch_query_groups",
    "patch_detection_input",
    "patches_to_tensor",
    "sample_patch_boxes",
    "split_by_group",
    "updetr_group_mask",
]
