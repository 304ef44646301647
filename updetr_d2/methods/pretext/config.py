"""``MODEL.PRETEXT.*``: the encoder pretexts' settings, one home for the corruption (read
by :class:`~.mapper.PretextDatasetMapper`) and the head and loss (read by the
:class:`~.plugin.EncoderPretext` plug-in), so the two can never disagree.

yaml: ``MODEL.DETR.PLUGINS: ["EncoderPretext"]`` + ``INPUT.DATASET_MAPPER:
"PretextDatasetMapper"`` (multi-task), plus ``MODEL.DETR.ENCODER_ONLY: True`` for
encoder-only pretraining. LazyConfig: ``add_encoder_pretext``
(``configs/common/models/encoder_pretext.py``) puts the settings on the plug-in node and
interpolates the mapper's task and patch size from it, so there too one key sets the task.
The checks below run on every loaded config before anything is built.
"""
import inspect

from detectron2.config import CfgNode as CN
from detectron2.utils.registry import locate
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from ...config.registry import register_config, register_config_check

__all__ = ["TASKS", "add_pretext_config", "check_pretext_config", "check_pretext_lazy_config", "pretext_tokenizer"]

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


def pretext_tokenizer(task: str, codebook_path: str = "", name: str = "KMeansPatchTokenizer", *, patch_size: int,
                      pixel_mean, pixel_std):
    """The tokenizer a LazyConfig's ``EncoderPretext`` gets: ``None`` unless ``task``
    predicts codes (discrete MIM), else ``TOKENIZER_REGISTRY.get(name)(...)``, as the yaml
    route builds it. The config calls it with the plug-in's task interpolated, so that
    overriding the task alone switches to or from discrete MIM (plus the codebook)."""
    if TASKS.get(task, ("", ""))[1] != "codes":
        return None
    from .tokenizer import TOKENIZER_REGISTRY  # here: the tokenizer module is not needed for the keys

    if not codebook_path:
        raise ValueError(f"task {task!r} needs a codebook: set the tokenizer's codebook_path (build one with "
                         "`tools/pretext.py codebook`)")
    return TOKENIZER_REGISTRY.get(name)(codebook_path=codebook_path, patch_size=patch_size,
                                         pixel_mean=pixel_mean, pixel_std=pixel_std)


def _calls(node, cls) -> bool:
    """Whether a LazyConfig node calls ``cls`` or a subclass (its ``_target_`` is the class
    or its dotted path, as after a save and load)."""
    try:
        target = node.get("_target_") if isinstance(node, DictConfig) else None
        target = locate(target) if isinstance(target, str) else target
    except Exception:  # an unimportable path is not ours to judge here
        return False
    return isinstance(target, type) and issubclass(target, cls)


def _argument(node, key: str, name: str, target):
    """``node[key]`` with its interpolations resolved, or the callable's default."""
    try:
        if key in node:
            return node[key]
    except OmegaConfBaseException as e:
        raise ValueError(f"{name} cannot be resolved: {e}") from None
    default = inspect.signature(target).parameters.get(key)
    if default is None or default.default is inspect.Parameter.empty:
        raise ValueError(f"{name} is not set")
    return default.default


@register_config_check
def check_pretext_lazy_config(cfg) -> None:
    """LazyConfig: an EncoderPretext in ``model.plugins`` and a PretextDatasetMapper as
    ``dataloader.train.mapper`` come together and agree on the task and the patch size
    (interpolations resolved): a view corrupted for another task or patch grid would
    train the head on wrong targets without any error. ``model.encoder_only`` needs a
    plug-in."""
    if not isinstance(cfg, DictConfig) or not isinstance(cfg.get("model"), DictConfig):
        return
    from .mapper import PretextDatasetMapper  # here: both import this module
    from .plugin import EncoderPretext

    model = cfg.model
    plugins = model.get("plugins") or []
    if model.get("encoder_only", False) and not plugins:
        raise ValueError("model.encoder_only=True trains only plug-in losses, but model.plugins is empty (add an "
                         "EncoderPretext: add_encoder_pretext in configs/common/models/encoder_pretext.py)")
    ours = [i for i, node in enumerate(plugins) if _calls(node, EncoderPretext)]
    train = cfg.get("dataloader", {}).get("train", {})
    mapper = train.get("mapper") if hasattr(train, "get") else None
    if not _calls(mapper, PretextDatasetMapper):
        if ours:
            raise ValueError(f"model.plugins.{ours[0]} is an EncoderPretext, but dataloader.train.mapper is not a "
                             "PretextDatasetMapper, so no input carries the pretext view (wrap the mapper: "
                             "add_encoder_pretext in configs/common/models/encoder_pretext.py)")
        return
    if not ours:
        raise ValueError("dataloader.train.mapper is a PretextDatasetMapper, but model.plugins holds no "
                         "EncoderPretext to train on its view")
    for i in ours:
        plugin = plugins[i]
        for key in ("task", "patch_size"):
            plugin_key, mapper_key = f"model.plugins.{i}.{key}", f"dataloader.train.mapper.{key}"
            ours_value = _argument(plugin, key, plugin_key, EncoderPretext)
            view_value = _argument(mapper, key, mapper_key, PretextDatasetMapper)
            if ours_value != view_value:
                raise ValueError(
                    f"{mapper_key}={view_value!r} differs from {plugin_key}={ours_value!r}: the mapper must corrupt "
                    f"the view for the plug-in's {key} (set it to \"${{{plugin_key}}}\")"
                )
        task = _argument(plugin, "task", f"model.plugins.{i}.task", EncoderPretext)
        if task not in TASKS:
            raise ValueError(f"model.plugins.{i}.task={task!r}; choose one of {sorted(TASKS)}")
        tokenizer = plugin.get("tokenizer")
        if TASKS[task][1] == "codes":
            if tokenizer is None:
                raise ValueError(f"model.plugins.{i}.task={task!r} needs model.plugins.{i}.tokenizer")
            if isinstance(tokenizer, DictConfig) and "codebook_path" in tokenizer and not tokenizer.codebook_path:
                raise ValueError(f"model.plugins.{i}.task={task!r} needs model.plugins.{i}.tokenizer.codebook_path "
                                 "(build one with `tools/pretext.py codebook`)")
