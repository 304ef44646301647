"""LazyConfig twin of detr_effnet_lite0_demo.yaml: the demo DETR on an ImageNet-pretrained
EfficientNet-Lite0 (res5: stride 32, 1280 channels; stem and res2 frozen, FrozenBN)."""
from detectron2.config import LazyCall as L

from updetr_d2.modeling.efficientnet import PIXEL_MEAN, PIXEL_STD, EfficientNetLiteBackbone

from .detr_R18_demo import dataloader, lr_multiplier, model, optimizer, train

model.backbone.backbone = L(EfficientNetLiteBackbone)(
    name="lite0", out_features=["res5"], freeze_at=2, norm="FrozenBN", pretrained=True
)
model.backbone.in_features = ["res5"]
# What the TF-converted Lite weights expect: RGB 0-255, (x - 127) / 128.
model.pixel_mean = list(PIXEL_MEAN)
model.pixel_std = list(PIXEL_STD)
# The data loaders already give RGB (image_format="RGB").

optimizer.params.backbone_multiplier = 0.1  # pretrained: DETR's lower backbone learning rate
train.output_dir = "./output/demo_detr_effnet_lite0_lazy"
