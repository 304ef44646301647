"""LazyConfig twin of updetr_effnet_lite0_demo_pretrain.yaml: UP-DETR pretraining of the
demo DETR on a frozen, ImageNet-pretrained EfficientNet-Lite0."""
from detectron2.config import LazyCall as L

from updetr_d2.modeling.efficientnet import PIXEL_MEAN, PIXEL_STD, EfficientNetLiteBackbone

from .updetr_R18_demo_pretrain import dataloader, lr_multiplier, model, optimizer, train

model.backbone.backbone = L(EfficientNetLiteBackbone)(
    name="lite0", out_features=["res5"], freeze_at=5, norm="FrozenBN", pretrained=True
)
model.backbone.in_features = ["res5"]
model.query_generator.patch_feature_dim = 1280  # res5 of EfficientNet-Lite (its head conv)
model.pixel_mean = list(PIXEL_MEAN)
model.pixel_std = list(PIXEL_STD)
model.freeze_backbone = True

train.output_dir = "./output/demo_updetr_effnet_lite0_pretrain_lazy"
