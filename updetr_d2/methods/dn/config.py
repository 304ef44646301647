"""``MODEL.DN.*``: DN-DETR's denoising training (paper defaults), and how a yaml config
switches it on: every anchor-query generator is wrapped in :class:`DenoisingQueries`
when ``MODEL.DN.ENABLED``."""
from detectron2.config import CfgNode as CN

from ...config.registry import register_config
from ...modeling.queries import register_query_wrapper
from .queries import DenoisingQueries

__all__ = ["add_dn_config"]


@register_config
def add_dn_config(cfg):
    cfg.MODEL.DN = CN()
    dn = cfg.MODEL.DN
    dn.ENABLED = False
    dn.NUM_GROUPS = 5
    dn.LABEL_NOISE_PROB = 0.2  # each denoising label flipped to another class with this probability
    dn.BOX_NOISE_SCALE = 0.4  # centre shift up to SCALE/2 of the side, sides scaled by 1 +- SCALE
    # Hide the padding slots of the denoising groups from every query (DN-DETR leaves them visible).
    dn.MASK_PADDING = True
    # DINO's contrastive denoising: each group also holds a negative copy of every object,
    # its box noise between BOX_NOISE_SCALE and twice that (in half box sides), trained as
    # "no object". With it, BOX_NOISE_SCALE bounds each corner's move (DINO: 0.4 -> 0.4 of
    # half a side for positives, 0.4-0.8 for negatives).
    dn.CONTRASTIVE = False
    # > 0: groups per batch = max(1, NUM_QUERIES // (copies per object * most objects in an
    # image)), so the denoising part stays near this size (DINO: 200); 0: NUM_GROUPS always.
    dn.NUM_QUERIES = 0
    return cfg


@register_query_wrapper
def wrap_with_denoising(cfg, generator):
    """``MODEL.DN.ENABLED``: the model's query generator inside :class:`DenoisingQueries`."""
    dn, d = cfg.MODEL.DN, cfg.MODEL.DETR
    if not dn.ENABLED:
        return generator
    if not cfg.MODEL.DEFORMABLE_DETR.ANCHOR_QUERIES:
        raise ValueError(
            "MODEL.DN.ENABLED needs anchor queries (noised boxes are the denoising queries' "
            "anchors): set MODEL.DEFORMABLE_DETR.ANCHOR_QUERIES True"
        )
    return DenoisingQueries(
        generator,
        num_classes=d.NUM_CLASSES,
        hidden_dim=d.HIDDEN_DIM,
        num_heads=d.NHEADS,
        num_groups=dn.NUM_GROUPS,
        label_noise_prob=dn.LABEL_NOISE_PROB,
        box_noise_scale=dn.BOX_NOISE_SCALE,
        mask_padding=dn.MASK_PADDING,
        contrastive=dn.CONTRASTIVE,
        num_dn_queries=dn.NUM_QUERIES,
        # DN content has the indicator exactly when the matching content does.
        with_indicator=cfg.MODEL.DEFORMABLE_DETR.ANCHOR_INDICATOR,
    )
