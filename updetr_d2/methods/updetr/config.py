"""``MODEL.UPDETR.*`` and ``INPUT.QUERY_PATCH.*`` / ``INPUT.ONE_SHOT.*``: UP-DETR's random
query patch pretraining (paper defaults); the rest of the model is ``MODEL.DETR``.

The number of patches has one home, ``INPUT.QUERY_PATCH.NUM_PATCHES``: the mapper samples
that many and the model groups its queries for that many (``PatchQueries.from_config``;
LazyConfigs interpolate ``dataloader.train.mapper.num_patches`` into
``model.query_generator.num_patches``). A model given fewer patches decodes only the
queries of the first groups, as the original at test time (``groups.py``). The count
must not exceed the number of queries, since every patch needs its group of queries; the
check below runs once on every loaded config, yaml or LazyConfig, before anything is built.
"""
from detectron2.config import CfgNode as CN

from ...config.registry import register_config, register_config_check

__all__ = ["add_updetr_pretraining_config", "check_patches_fit_queries"]

# Meta-architecture names whose queries are grouped by INPUT.QUERY_PATCH.NUM_PATCHES.
_UPDETR_ARCHS = ("UpDetr", "UPDETR", "DeformableUpDetr")


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
    # Random patches per image, and the query groups of the model (at most
    # MODEL.DETR.NUM_OBJECT_QUERIES; the original needs queries divisible by it).
    p.NUM_PATCHES = 10
    p.SIZE = 128  # patches are resized to SIZE x SIZE
    # Patch sides in pixels of the original image: U_int[MIN_SIDE, min(floor(MAX_FRACTION *
    # side), side - MIN_SIDE)], so the defaults are the original's U_int[8, side - 8]
    # (a patch is never the whole image side); patch_sampling.py has the small-image cases.
    p.MIN_SIDE = 8
    p.MAX_FRACTION = 1.0  # of the image side; < 1 caps big patches below the original's
    p.ASPECT_RANGE = ()  # () = sides drawn independently, as the paper
    p.AUGMENT = True  # colour jitter, grayscale, blur on the patches
    p.SEED = -1  # >= 0: the same patches for a given image every time

    # One-shot detection (UP-DETR's query-crop detection; OneShotDatasetMapper).
    cfg.INPUT.ONE_SHOT = CN()
    cfg.INPUT.ONE_SHOT.SEEN_CLASSES = ()  # class names trained on; empty: all classes
    cfg.INPUT.ONE_SHOT.AUGMENT = False  # the pretraining patch augmentation on query crops
    return cfg


def _patches_and_queries(cfg):
    """(number of patches, number of queries, their key names) of a config whose model
    groups queries by patch or whose data samples query patches, or None otherwise."""
    if hasattr(cfg, "MODEL"):  # yaml
        if (cfg.INPUT.DATASET_MAPPER != "QueryPatchDatasetMapper"
                and cfg.MODEL.META_ARCHITECTURE not in _UPDETR_ARCHS):
            return None
        return (cfg.INPUT.QUERY_PATCH.NUM_PATCHES, cfg.MODEL.DETR.NUM_OBJECT_QUERIES,
                "INPUT.QUERY_PATCH.NUM_PATCHES", "MODEL.DETR.NUM_OBJECT_QUERIES")
    mapper = cfg.get("dataloader", {}).get("train", {}).get("mapper", {})
    generator = cfg.get("model", {}).get("query_generator", {})
    for node, key, name in ((generator, "num_patches", "model.query_generator.num_patches"),
                            (mapper, "num_patches", "dataloader.train.mapper.num_patches")):
        try:
            return node[key], generator["num_queries"], name, "model.query_generator.num_queries"
        except (KeyError, TypeError):
            continue
    return None


def _lazy_counts_disagree(cfg):
    """(mapper's count, model's count) when a LazyConfig's mapper samples more patches than
    its model has groups for (an override of one without the other), else None."""
    if hasattr(cfg, "MODEL"):
        return None  # yaml: both read INPUT.QUERY_PATCH.NUM_PATCHES
    try:
        sampled = cfg["dataloader"]["train"]["mapper"]["num_patches"]
        grouped = cfg["model"]["query_generator"]["num_patches"]
    except (KeyError, TypeError):
        return None
    if isinstance(sampled, int) and isinstance(grouped, int) and sampled > grouped:
        return sampled, grouped
    return None


@register_config_check
def check_patches_fit_queries(cfg) -> None:
    found = _patches_and_queries(cfg)
    if found is not None:
        patches, queries, patch_key, query_key = found
        if isinstance(patches, int) and isinstance(queries, int) and patches > queries:
            raise ValueError(
                f"{patch_key}={patches} is more than {query_key}={queries}: every query patch needs "
                "at least one query"
            )
    disagree = _lazy_counts_disagree(cfg)
    if disagree is not None:
        raise ValueError(
            f"dataloader.train.mapper.num_patches={disagree[0]} is more than the "
            f"model.query_generator.num_patches={disagree[1]} groups the model's queries are split "
            "into; set the model's to '${dataloader.train.mapper.num_patches}' (add_updetr does)"
        )
