"""Panoptic data for the LazyConfig files: DETR's loaders (detr_coco.py) reading panoptic
datasets through PanopticDetrDatasetMapper (every segment, things and stuff, becomes a box,
a class and a mask), evaluated by the project's ``build_evaluator`` (PQ + box/segm AP of
the things), and the MaskHead plug-in on a model node."""
from detectron2.config import LazyCall as L

from updetr_d2.engine.evaluation import build_evaluator
from updetr_d2.methods.panoptic import MaskHead
from updetr_d2.methods.panoptic.mapper import PanopticDetrDatasetMapper


def use_panoptic_data(dataloader, train_names, test_names):
    """DETR's train and test loaders read panoptic datasets, with the augmentations, image
    format and batch they had."""
    for split, names in (("train", train_names), ("test", test_names)):
        loader = dataloader[split]
        loader.dataset.names = names
        old = loader.mapper
        loader.mapper = L(PanopticDetrDatasetMapper)(
            is_train=old.is_train, augmentations=old.augmentations, image_format=old.image_format
        )
    dataloader.evaluator = L(build_evaluator)(dataset_name="${..test.dataset.names}")
    return dataloader


def add_mask_head(model, thing_classes, freeze_detector=False, in_features=("res4", "res3", "res2"),
                  scale_attention_maps=True):
    """The model node gets the MaskHead plug-in (yaml: MODEL.PANOPTIC.*, same defaults) and
    its backbone returns the finer levels the mask decoder adds. ``freeze_detector``: the
    mask stage of the two-stage recipe."""
    backbone = model.backbone.backbone
    backbone.out_features = sorted(set(backbone.out_features) | set(in_features))
    model.plugins = [
        L(MaskHead)(in_features=list(in_features), thing_classes=list(thing_classes),
                    freeze_detector=freeze_detector, scale_attention_maps=scale_attention_maps)
    ]
    return model
