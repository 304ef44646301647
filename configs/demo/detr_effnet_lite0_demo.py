"""LazyConfig twin of detr_effnet_lite0_demo.yaml: the demo DETR on an ImageNet-pretrained
EfficientNet-Lite0 (res5: stride 32, 1280 channels; stem and res2 frozen, FrozenBN)."""
from ..common.demo import use_efficientnet_lite0
from .detr_R18_demo import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401

use_efficientnet_lite0(model, freeze_at=2)
# The data loaders already give RGB (image_format="RGB").

optimizer.params.backbone_multiplier = 0.1  # pretrained: DETR's lower backbone learning rate
train.output_dir = "./output/demo_detr_effnet_lite0_lazy"
