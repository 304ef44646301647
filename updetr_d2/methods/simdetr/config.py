"""``SIMDETR.*``: SimDETR's pretraining stages, one node per stage.

The numbers live once, in the stages' parameter dataclasses (``ProposalParams``,
``ClusteringParams``, ``SelfTrainingParams``); the yaml nodes are made from them, so a
LazyConfig (which passes the dataclasses' fields as keyword arguments) and a yaml config
start from the same defaults. They are proposed defaults, not the paper's values: the
paper's details past its first page are not public (``docs``: README "SimDETR").
"""
import dataclasses
import json
import os

from detectron2.config import CfgNode as CN

from ...config.registry import register_config, register_config_check
from .clustering import ClusteringParams
from .proposals import ProposalParams
from .relabel import SelfTrainingParams

__all__ = [
    "add_simdetr_config",
    "check_pseudo_label_classes",
    "clustering_params",
    "proposal_params",
    "self_training_params",
]

# The dataset mapper that serves the current round's pseudo-labels.
MAPPER_NAME = "PseudoLabelDatasetMapper"


def _node(params_cls) -> CN:
    node = CN()
    for f in dataclasses.fields(params_cls):
        value = f.default
        node[f.name.upper()] = tuple(value) if isinstance(value, (list, tuple)) else value
    return node


def _params(params_cls, node):
    return params_cls(**{f.name: node[f.name.upper()] for f in dataclasses.fields(params_cls)})


@register_config
def add_simdetr_config(cfg):
    cfg.SIMDETR = CN()
    s = cfg.SIMDETR
    # Stage A: the extractor's feature map that is clustered (a Detectron2 backbone
    # output name, e.g. res5), and how its regions become proposals.
    s.FEATURE = "res5"
    s.PROPOSALS = _node(ProposalParams)
    # Stage B: dataset-level spherical k-means; NUM_CLUSTERS is the K of the pseudo-classes
    # (MODEL.DETR.NUM_CLASSES of the pretraining detector must equal it).
    s.CLUSTERING = _node(ClusteringParams)
    # Stage D: a round relabels the pretraining images every PERIOD iterations, ROUNDS times
    # (0: no self-training); PERIOD 0 spreads the rounds evenly over SOLVER.MAX_ITER.
    s.SELF_TRAINING = _node(SelfTrainingParams)
    s.SELF_TRAINING.PERIOD = 0
    # Where the rounds' targets live (round_000.json from stage B, then one file per
    # self-training round, and current.json naming the one the mapper serves).
    s.TARGETS_DIR = ""
    return cfg


def proposal_params(cfg) -> ProposalParams:
    return _params(ProposalParams, cfg.SIMDETR.PROPOSALS)


def clustering_params(cfg) -> ClusteringParams:
    return _params(ClusteringParams, cfg.SIMDETR.CLUSTERING)


def self_training_params(cfg) -> SelfTrainingParams:
    return _params(SelfTrainingParams, cfg.SIMDETR.SELF_TRAINING)


def _classes_and_targets(cfg):
    """(detector classes, targets dir, key names) of a pseudo-label pretraining config,
    or None for any other config."""
    if hasattr(cfg, "MODEL"):  # yaml
        if cfg.INPUT.DATASET_MAPPER != MAPPER_NAME:
            return None
        return (cfg.MODEL.DETR.NUM_CLASSES, cfg.SIMDETR.TARGETS_DIR,
                "MODEL.DETR.NUM_CLASSES", "SIMDETR.TARGETS_DIR")
    mapper = cfg.get("dataloader", {}).get("train", {}).get("mapper", {})
    try:
        target = mapper.get("_target_", "")
        if not str(getattr(target, "__name__", target)).endswith(MAPPER_NAME):
            return None
        return (cfg["model"]["num_classes"], mapper["targets_dir"],
                "model.num_classes", "dataloader.train.mapper.targets_dir")
    except (KeyError, TypeError, AttributeError):
        return None


@register_config_check
def check_pseudo_label_classes(cfg) -> None:
    """The detector's class count must be the pseudo-labels' K: a smaller one fails only
    when a batch holds a higher label, a larger one trains classes that never occur."""
    found = _classes_and_targets(cfg)
    if found is None:
        return
    num_classes, targets_dir, classes_key, dir_key = found
    if not targets_dir:
        raise ValueError(f"{dir_key} is empty: it must name the folder stage B wrote the pseudo-labels to")
    pointer = os.path.join(targets_dir, "current.json")
    if not os.path.isfile(pointer):
        raise FileNotFoundError(
            f"{dir_key}={targets_dir!r} has no current.json: run stage B "
            "(tools/simdetr.py cluster) into that folder first"
        )
    with open(pointer) as f:
        k = json.load(f)["num_classes"]
    if isinstance(num_classes, int) and num_classes != k:
        raise ValueError(
            f"{classes_key}={num_classes} but the pseudo-labels in {targets_dir} have {k} classes "
            f"(SIMDETR.CLUSTERING.NUM_CLUSTERS of stage B); set {classes_key}={k}"
        )
