"""``MODEL.PANOPTIC.*``: DETR's mask head, its losses and its panoptic post-processing
(the paper's and the original code's defaults), one home for every number of the
:class:`~.plugin.MaskHead` plug-in.

yaml: ``MODEL.DETR.PLUGINS: ["MaskHead"]`` on any of the project's set-prediction
detectors, ``INPUT.DATASET_MAPPER: "PanopticDetrDatasetMapper"`` for panoptic data and
the backbone returning ``IN_FEATURES`` (e.g. ``MODEL.RESNETS.OUT_FEATURES``).
LazyConfig: ``model.plugins = [L(MaskHead)(...)]`` with the same names in lower case.
"""
from detectron2.config import CfgNode as CN

from ...config.registry import register_config

__all__ = ["add_panoptic_config"]


@register_config
def add_panoptic_config(cfg):
    cfg.MODEL.PANOPTIC = CN()
    p = cfg.MODEL.PANOPTIC
    # The finer backbone levels the mask decoder adds, coarsest first (DETR: res4, res3,
    # res2); masks come out at the stride of the last one.
    p.IN_FEATURES = ["res4", "res3", "res2"]
    # The encoder memory level the queries attend to, by its stride (DETR's C5: 32; a
    # dilated C5: 16; Deformable DETR: the level of that stride among its levels).
    p.ATTENTION_STRIDE = 32
    p.NUM_HEADS = 8  # attention maps per query (the paper's M)
    # Attention maps multiplied by the positions they spread over (heads x H x W), so they
    # average 1 like the features they are concatenated with; the masks then learn in a few
    # hundred steps. False: the original's scale (its checkpoints; its 25-epoch mask stage).
    p.SCALE_ATTENTION_MAPS = True
    # The mask stage of the two-stage recipe: every detector parameter frozen, only the mask
    # head trains (dropout stays active, as in the original). False: joint training.
    p.FREEZE_DETECTOR = False
    p.MASK_WEIGHT = 1.0  # focal mask loss
    p.DICE_WEIGHT = 1.0
    p.PANOPTIC_ON = True  # inference: a "panoptic_seg" output
    p.INSTANCE_MASKS_ON = True  # inference: "pred_masks" on the instances (COCO segm AP)
    # A query makes a segment when its class probability exceeds this (softmax models:
    # no-object included, the original's rule; sigmoid models: the best class's sigmoid).
    p.OBJECT_THRESHOLD = 0.85
    p.MIN_SEGMENT_AREA = 4  # segments of at most this many pixels are removed, their pixels reassigned
    # Contiguous ids of the thing classes; empty: read from DATASETS.TRAIN[0]'s metadata
    # (thing_dataset_id_to_contiguous_id), every class when it has none.
    p.THING_CLASSES = []
    return cfg
