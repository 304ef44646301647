"""SimDETR-style pretraining (Metaxas et al., arXiv 2307.15697): pseudo-labelled
detection pretraining of the whole detector, backbone included.

Stages (README "SimDETR"; ``tools/simdetr.py`` runs A, B and D as tools):

A. :mod:`.proposals` / :mod:`.proposal_shards`: a frozen feature extractor
   (:mod:`.extractor`) over every image, its feature grid clustered into connected
   regions at several granularities, regions to boxes, each with its region embedding;
B. :mod:`.clustering` / :mod:`.pseudo_labels`: dataset-level spherical k-means of the
   embeddings into K pseudo-classes, written as a COCO file (round 0 of a targets folder);
C. ordinary supervised training of a DETR-family detector with K classes on those
   targets (:class:`PseudoLabelDatasetMapper`, configs in ``projects/SimDETR/configs``);
D. :mod:`.relabel` / :mod:`.self_training`: rounds in which the detector relabels the
   images and training continues on its own predictions;
E. :mod:`.checkpoint`: fine-tuning loads everything but the class head.

:mod:`.pretext_metrics` checks that the pretext was learned: the detector's AP against
held-out pseudo-labels (held-out proposals assigned to the stage-B centroids).

Only the paper's first page is public: every procedure and default past it is the
project's proposal, exposed in ``SIMDETR.*``.
"""
from . import checkpoint  # noqa: F401  (registers the hand-off rule)
from .clustering import ClusteringParams, cluster_size_warning, pseudo_label_coco, spherical_kmeans
from .config import add_simdetr_config, clustering_params, proposal_params, self_training_params
from .extractor import FeatureExtractor
from .proposal_shards import ProposalSet, extract_proposals, load_proposals, write_class_agnostic_json
from .pretext_metrics import assign_to_centroids, held_out_pseudo_labels, pseudo_label_ap
from .proposals import ProposalParams, RegionProposals, region_proposals
from .pseudo_labels import cluster_proposals
from .relabel import SelfTrainingParams, per_query_scores, select_targets
from .self_training import SelfTraining, SelfTrainingHook, relabel, relabel_loader
from .targets import PseudoLabelDatasetMapper, PseudoLabelRounds

__all__ = [
    "ClusteringParams",
    "FeatureExtractor",
    "ProposalParams",
    "ProposalSet",
    "PseudoLabelDatasetMapper",
    "PseudoLabelRounds",
    "RegionProposals",
    "SelfTraining",
    "SelfTrainingHook",
    "SelfTrainingParams",
    "add_simdetr_config",
    "assign_to_centroids",
    "cluster_proposals",
    "cluster_size_warning",
    "clustering_params",
    "extract_proposals",
    "held_out_pseudo_labels",
    "load_proposals",
    "per_query_scores",
    "proposal_params",
    "pseudo_label_ap",
    "pseudo_label_coco",
    "region_proposals",
    "relabel",
    "relabel_loader",
    "select_targets",
    "self_training_params",
    "spherical_kmeans",
    "write_class_agnostic_json",
]
