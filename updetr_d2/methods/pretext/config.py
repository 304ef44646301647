"""``MODEL.PRETEXT.*``: the encoder pretexts' settings, one home for the corruption (read
by :class:`~.mapper.PretextDatasetMapper`) and the head and loss (read by the
:class:`~.plugin.EncoderPretext` plug-in), so the two can never disagree.

yaml: ``MODEL.DETR.PLUGINS: ["EncoderPretext"]`` + ``INPUT.DATASET_MAPPER:
"PretextDatasetMapper"`` (multi-task), plus ``MODEL.DETR.ENCODER_ONLY: True`` for
encoder-only pretraining. The checks below run on every loaded config before anything
is built.
"""
from detectron2.config import CfgNode as CN

from ...config.registry import register_config, register_config_check

__all__ = ["TASKS", "add_pretext_config", "check_pretext_config"]

# task -> (corruption, target): the five pretexts of the paper's code.
TASKS = {
    "reconstruction": ("none", "pixels"),  # the original's mim-continuous with ratio 0, loss on all
    "mim_continuous": ("mim", "pixels"),
    "mim_discrete": ("mim", "codes"),
    "jigsaw_continuous": ("jigsaw", "pixels"),
    "jigsaw_discrete": ("jigsaw", "positions"),
}
MIM_FILLS = ("mean", "imagenet_constants")
HEADS = ("linear", "mlp_deconv")


@register_config
def add_pretext_config(cfg):
    cfg.MODEL.PRETEXT = CN()
    p = cfg.MODEL.PRETEXT
    p.TASK = "mim_continuous"  # one of TASKS
    p.RATIO = 0.5  # fraction r of the patches masked (MIM) or shuffled (jigsaw)
    # Side of the corrupted patches in input pixels: the stride of the level the head reads
    # (32 for DETR's C5, 8 for Deformable DETR's level 0), or a multiple of every level's.
    p.PATCH_SIZE = 32
    # Encoder memory levels the head reads (indices; DETR has one, level 0).
    p.LEVELS = [0]
    p.HEAD = "linear"  # "linear" (the original's pretraining) or "mlp_deconv" (its multi-task)
    p.LOSS_ON_TRANSFORMED = True  # the loss over the masked / moved tokens only; else all
    p.WEIGHT = 1.0  # of the pretext loss next to the detection loss (multi-task)
    # MIM fill: "mean" = the pixel mean (0 after normalisation); "imagenet_constants" = the
    # original's (0.485, 0.456, 0.406) written into the normalised image.
    p.MIM_FILL = "mean"
    # The original scores the jigsaw tokens that did NOT move (a bug); True reproduces it.
    p.COMPAT_JIGSAW_MASK_BUG = False
    p.CODEBOOK = ""  # mim_discrete: the tokenizer's codebook (tools/pretext.py codebook)
    p.TOKENIZER = "KMeansPatchTokenizer"  # TOKENIZER_REGISTRY name for mim_discrete
    p.BASE_MAPPER = "DetrDatasetMapper"  # the mapper whose output the pretext view is made from
    return cfg


def _is_yaml(cfg) -> bool:
    return hasattr(cfg, "MODEL") and "PRETEXT" in cfg.MODEL


@register_config_check
def check_pretext_config(cfg) -> None:
    """yaml: the plug-in and the mapper come together; valid task, fill, head; a codebook
    for discrete MIM; encoder-only training needs a plug-in that trains something."""
    if not _is_yaml(cfg):
        return
    p = cfg.MODEL.PRETEXT
    plugin_on = "EncoderPretext" in cfg.MODEL.DETR.PLUGINS
    mapper_on = cfg.INPUT.DATASET_MAPPER == "PretextDatasetMapper"
    if cfg.MODEL.DETR.get("ENCODER_ONLY", False) and not cfg.MODEL.DETR.PLUGINS:
        raise ValueError("MODEL.DETR.ENCODER_ONLY trains only plug-in losses, but MODEL.DETR.PLUGINS is empty "
                         "(add \"EncoderPretext\")")
    if not (plugin_on or mapper_on):
        return
    if plugin_on != mapper_on:
        raise ValueError(
            "the encoder pretext needs both MODEL.DETR.PLUGINS containing \"EncoderPretext\" and "
            f"INPUT.DATASET_MAPPER \"PretextDatasetMapper\"; got PLUGINS={list(cfg.MODEL.DETR.PLUGINS)}, "
            f"DATASET_MAPPER={cfg.INPUT.DATASET_MAPPER!r}"
        )
    if p.TASK not in TASKS:
        raise ValueError(f"MODEL.PRETEXT.TASK={p.TASK!r}; choose one of {sorted(TASKS)}")
    if not 0.0 <= p.RATIO <= 1.0:
        raise ValueError(f"MODEL.PRETEXT.RATIO must be in [0, 1], got {p.RATIO}")
    if p.MIM_FILL not in MIM_FILLS:
        raise ValueError(f"MODEL.PRETEXT.MIM_FILL={p.MIM_FILL!r}; choose one of {MIM_FILLS}")
    if p.HEAD not in HEADS:
        raise ValueError(f"MODEL.PRETEXT.HEAD={p.HEAD!r}; choose one of {HEADS}")
    if p.PATCH_SIZE < 1:
        raise ValueError(f"MODEL.PRETEXT.PATCH_SIZE must be >= 1, got {p.PATCH_SIZE}")
    if not p.LEVELS:
        raise ValueError("MODEL.PRETEXT.LEVELS is empty: name the encoder levels the pretext head reads")
    if p.TASK == "mim_discrete" and not p.CODEBOOK:
        raise ValueError("MODEL.PRETEXT.TASK='mim_discrete' needs MODEL.PRETEXT.CODEBOOK (build one with "
                         "`tools/pretext.py codebook`)")
    if p.BASE_MAPPER == "PretextDatasetMapper":
        raise ValueError("MODEL.PRETEXT.BASE_MAPPER cannot be PretextDatasetMapper itself")
