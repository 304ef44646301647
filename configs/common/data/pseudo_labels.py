"""SimDETR's pretraining data as a LazyConfig edit of DETR's COCO-style loaders
(configs/common/data/detr_coco.py; projects/SimDETR/configs)."""
from updetr_d2.methods.simdetr import PseudoLabelDatasetMapper


def use_pseudo_label_data(dataloader, names, targets_dir, min_targets=2):
    """The train loader reads the images of ``names`` (a registered dataset, labels ignored,
    or an image folder) with DETR's augmentation, their targets being the current
    pseudo-label round of ``targets_dir`` (images with fewer than ``min_targets`` are
    skipped). Nothing is evaluated during pretraining: the test loader and evaluator go."""
    dataloader.train.dataset.names = names
    dataloader.train.mapper._target_ = PseudoLabelDatasetMapper
    dataloader.train.mapper.update(targets_dir=targets_dir, min_targets=min_targets)
    del dataloader.test, dataloader.evaluator
    return dataloader
