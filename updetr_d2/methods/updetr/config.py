"""``MODEL.UPDETR.*`` and ``INPUT.QUERY_PATCH.*`` / ``INPUT.ONE_SHOT.*``: UP-DETR's random
query patch pretraining (paper defaults); the rest of the model is ``MODEL.DETR``.

The number of patches belongs to the data (``INPUT.QUERY_PATCH.NUM_PATCHES``: the
mapper samples them; the model takes whatever count its inputs carry). It must not
exceed the number of queries, since every patch needs its group of queries; the check
below runs once on every loaded config, yaml or LazyConfig, before anything is built.
"""
from detectron2.config import CfgNode as CN

from ...config.registry import register_config, register_config_check

__all__ = ["add_updetr_pretraining_config", "check_patches_fit_queries"]


@register_config
def add_updetr_pretraining_config(cfg):
    cfg.MODEL.UPDETR = CN()
    u = cfg.MODEL.UPDETR
    u.FREEZE_BACKBONE = True  # the paper: freezing the CNN is a prerequisite
    u.FEATURE_RECONSTRUCTION = True
    u.RECONSTRUCTION_WEIGHT = 1.0
    # Probability that a query slot loses its patch feature during training.
    u.QUERY_DROPOUT = 0.1

    cfg.INPUT.QUERY_PATCH = CN()
    p = cfg.INPUT.QUERY_PATCH
    p.NUM_PATCHES = 10  # random patches per image (at most MODEL.DETR.NUM_OBJECT_QUERIES)
    p.SIZE = 128  # patches are resized to SIZE x SIZE
    p.MIN_SIDE = 8  # pixels, on the original image
    p.MAX_FRACTION = 1.0  # of the image side
    p.ASPECT_RANGE = ()  # () = sides drawn independently, as the paper
    p.AUGMENT = True  # colour jitter, grayscale, blur on the patches
    p.SEED = -1  # >= 0: the same patches for a given image every time

    # One-shot detection (UP-DETR's query-crop detection; OneShotDatasetMapper).
    cfg.INPUT.ONE_SHOT = CN()
    cfg.INPUT.ONE_SHOT.SEEN_CLASSES = ()  # class names trained on; empty: all classes
    cfg.INPUT.ONE_SHOT.AUGMENT = False  # the pretraining patch augmentation on query crops
    return cfg


def _patches_and_queries(cfg):
    """(number of patches, number of queries, their key names) of a UP-DETR pretraining
    config, or None when the config does not pretrain with query patches."""
    if hasattr(cfg, "MODEL"):  # yaml
        if cfg.INPUT.DATASET_MAPPER != "QueryPatchDatasetMapper":
            return None
        return (cfg.INPUT.QUERY_PATCH.NUM_PATCHES, cfg.MODEL.DETR.NUM_OBJECT_QUERIES,
                "INPUT.QUERY_PATCH.NUM_PATCHES", "MODEL.DETR.NUM_OBJECT_QUERIES")
    mapper = cfg.get("dataloader", {}).get("train", {}).get("mapper", {})
    generator = cfg.get("model", {}).get("query_generator", {})
    try:
        patches, queries = mapper["num_patches"], generator["num_queries"]
    except (KeyError, TypeError):
        return None
    return (patches, queries, "dataloader.train.mapper.num_patches", "model.query_generator.num_queries")


@register_config_check
def check_patches_fit_queries(cfg) -> None:
    found = _patches_and_queries(cfg)
    if found is None:
        return
    patches, queries, patch_key, query_key = found
    if isinstance(patches, int) and isinstance(queries, int) and patches > queries:
        raise ValueError(
            f"{patch_key}={patches} is more than {query_key}={queries}: every query patch needs "
            "at least one query"
        )
