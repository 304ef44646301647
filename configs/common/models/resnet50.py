"""The ImageNet ResNet-50 of the paper-size configs (Detectron2's R-50, frozen BN, stem and
first stage frozen) wrapped as a DETR feature extractor reading ``levels``."""
from detectron2.config import LazyCall as L
from detectron2.modeling.backbone import BasicStem, ResNet

from updetr_d2.modeling.backbone import MaskedBackbone


def masked_resnet50(levels):
    return L(MaskedBackbone)(
        backbone=L(ResNet)(
            stem=L(BasicStem)(in_channels=3, out_channels=64, norm="FrozenBN"),
            stages=L(ResNet.make_default_stages)(depth=50, stride_in_1x1=False, norm="FrozenBN"),
            out_features=list(levels),
            freeze_at=2,
        ),
        in_features=list(levels),
    )
