"""``MODEL.CO_DETR.*``: Co-DETR's switches and weights (paper defaults) and each
auxiliary head's own node."""
from detectron2.config import CfgNode as CN

from ...config.registry import register_config

from .atss import add_atss_config
from .fcos import add_fcos_config
from .rcnn import add_rcnn_config

__all__ = ["add_codetr_config"]


@register_config
def add_codetr_config(cfg):
    cfg.MODEL.CO_DETR = CN()
    c = cfg.MODEL.CO_DETR
    # Registered names (AUX_HEAD_REGISTRY); Co-Deformable-DETR uses Faster R-CNN and ATSS.
    c.AUX_HEADS = ["FasterRCNNAuxHead", "ATSSAuxHead"]
    c.LAMBDA1 = 1.0  # weight of the customized positive queries' losses
    c.LAMBDA2 = 2.0  # weight of the auxiliary heads' losses, per decoder layer
    c.POSITIVE_QUERIES = True
    c.MIN_POSITIVE_QUERIES = 9
    c.MAX_POSITIVE_QUERIES = 300
    c.WITH_COORD_FEAT = True  # the candidate's feature enters its query (paper; Co-DINO leaves it out)
    # CoDetr (single-scale DETR): the pyramid strides built from the encoder's one map.
    c.SINGLE_SCALE_STRIDES = [8, 16, 32, 64, 128]
    add_atss_config(cfg)
    add_fcos_config(cfg)
    add_rcnn_config(cfg)
    return cfg
