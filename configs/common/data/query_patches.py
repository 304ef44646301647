"""UP-DETR's pretraining data as a LazyConfig edit of COCO-style loaders (projects/UPDETR/configs)."""
from detectron2.config import LazyCall as L

from updetr_d2.methods.updetr import QueryPatchDatasetMapper


def use_query_patch_data(dataloader, names, num_patches, patch_size, min_sizes, max_size):
    """The train loader reads ``names`` (any registered dataset, labels ignored, or a folder
    of images) through ``QueryPatchDatasetMapper``: ``num_patches`` random crops per image,
    resized to ``patch_size``, as the queries' targets; images resized to a short side in
    ``min_sizes`` (at most ``max_size``). Nothing is evaluated during pretraining: the test
    loader and evaluator are removed."""
    dataloader.train.dataset.names = names
    dataloader.train.mapper = L(QueryPatchDatasetMapper)(
        is_train=True, num_patches=num_patches, patch_size=patch_size, min_side=8,
        min_sizes=min_sizes, max_size=max_size, image_format="RGB",
    )
    del dataloader.test, dataloader.evaluator
    return dataloader
