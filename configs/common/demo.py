"""The demo recipe shared by the demo LazyConfig files: small models trained from scratch for
a few hundred iterations on the generated demo data (4 classes: circle, square, triangle,
star). Functions that edit the nodes they are given, so that the config files that use them
get no extra top-level node."""
from detectron2.config import LazyCall as L
from detectron2.data import transforms as T
from detectron2.modeling.backbone import BasicStem

from updetr_d2.modeling.efficientnet import PIXEL_MEAN, PIXEL_STD, EfficientNetLiteBackbone

from .schedule import multistep_schedule

DEMO_NUM_CLASSES = 4
DEMO_MIN_SIZES = (192, 224, 256)  # train short sides
DEMO_MAX_SIZE = 384


def use_resnet18_gn(resnet):
    """A ResNet node (``L(ResNet)``) becomes a ResNet-18 with GroupNorm, trained from scratch
    (a random FrozenBN backbone diverges)."""
    resnet.stem = L(BasicStem)(in_channels=3, out_channels=64, norm="GN")
    resnet.stages.depth = 18
    resnet.stages.norm = "GN"
    del resnet.stages.stride_in_1x1  # a ResNet-18 has no bottleneck blocks
    resnet.freeze_at = 0
    return resnet


def use_efficientnet_lite0(model, freeze_at):
    """The model's ResNet (``model.backbone.backbone``) becomes an ImageNet-pretrained
    EfficientNet-Lite0 (res5: stride 32, 1280 channels; FrozenBN, stages up to ``freeze_at``
    frozen) with the input normalisation its weights expect."""
    model.backbone.backbone = L(EfficientNetLiteBackbone)(
        name="lite0", out_features=["res5"], freeze_at=freeze_at, norm="FrozenBN", pretrained=True
    )
    model.backbone.in_features = ["res5"]
    # What the TF-converted Lite weights expect: RGB 0-255, (x - 127) / 128.
    model.pixel_mean = list(PIXEL_MEAN)
    model.pixel_std = list(PIXEL_STD)
    return model


def use_demo_model(model, num_queries):
    """A DETR-family model node becomes the demo's size: ResNet-18 GN from scratch, a
    128-wide, 4-head, 2+2-layer transformer without dropout, ``num_queries`` queries and the
    demo's classes."""
    use_resnet18_gn(model.backbone.backbone)
    model.position_embedding.num_pos_feats = 64
    model.transformer.update(d_model=128, nhead=4, dim_feedforward=512, num_encoder_layers=2,
                             num_decoder_layers=2, dropout=0.0)
    model.query_generator.update(num_queries=num_queries, hidden_dim=128)
    model.update(num_classes=DEMO_NUM_CLASSES, hidden_dim=128)
    return model


def use_demo_data(dataloader, max_size=DEMO_MAX_SIZE):
    """COCO-style loaders read the demo data instead: its train and val splits, batch 4,
    2 workers, test images resized to a 256 short side (at most ``max_size``). The train
    augmentation is the caller's (see ``use_demo_detr_data``)."""
    dataloader.train.dataset.names = "updetr_demo_train"
    dataloader.train.total_batch_size = 4
    dataloader.train.num_workers = 2
    dataloader.test.dataset.names = "updetr_demo_val"
    dataloader.test.mapper.augmentations = [L(T.ResizeShortestEdge)(short_edge_length=256, max_size=max_size)]
    dataloader.test.num_workers = 2
    return dataloader


def use_demo_detr_data(dataloader):
    """``use_demo_data`` for DETR's loaders (configs/common/data/detr_coco.py), with DETR's
    train augmentation (multi-scale resize, random crop) scaled down to the demo images."""
    use_demo_data(dataloader)
    dataloader.train.mapper.augmentations.update(
        min_sizes=DEMO_MIN_SIZES, max_size=DEMO_MAX_SIZE, crop_pre_resize=(224, 256, 288), crop_size=(160, 256)
    )
    return dataloader


def use_demo_optimizer(optimizer):
    """DETR's AdamW (configs/common/optim.py) for the demo: a higher LR, and the full LR for
    the backbone, which is trained from scratch."""
    optimizer.lr = 5e-4
    optimizer.params.backbone_multiplier = 1.0
    return optimizer


def use_demo_schedule(train, max_iter=500, decay_iter=400):
    """Sets ``train.max_iter``, checkpoints halfway and at the end, and returns
    ``lr_multiplier``: the LR divided by 10 after ``decay_iter`` iterations, no warmup."""
    train.max_iter = max_iter
    train.checkpointer.period = max_iter // 2
    return multistep_schedule(max_iter, milestones=[decay_iter])
