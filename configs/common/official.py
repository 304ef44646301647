"""The preprocessing that the official DETR-family weights expect, for the ``*_official``
LazyConfig files: RGB normalised with the ImageNet mean and std, each batch padded only to
its largest image (rounding up to a multiple of 32 moves the official DETR's logits by up
to 0.28), and the official test resize. A function, so that the config files that use it
get no extra top-level node."""

IMAGENET_MEAN = [123.675, 116.280, 103.530]
IMAGENET_STD = [58.395, 57.120, 57.375]


def use_official_preprocessing(model, dataloader, short_edge: int = 800, max_size: int = 1333):
    model.pixel_mean = IMAGENET_MEAN
    model.pixel_std = IMAGENET_STD
    model.size_divisibility = 0
    dataloader.test.mapper.image_format = "RGB"
    resize = dataloader.test.mapper.augmentations[0]
    resize.short_edge_length = short_edge
    resize.max_size = max_size
