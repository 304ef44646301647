"""LazyConfig twin of updetr_effnet_lite0_demo_pretrain.yaml: UP-DETR pretraining of the
demo DETR on a frozen, ImageNet-pretrained EfficientNet-Lite0."""
from ....configs.common.demo import use_efficientnet_lite0
from .updetr_R18_demo_pretrain import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401

use_efficientnet_lite0(model, freeze_at=5)  # stem to res5: all frozen
model.query_generator.patch_feature_dim = 1280  # res5 of EfficientNet-Lite (its head conv)
train.output_dir = "./output/demo_updetr_effnet_lite0_pretrain_lazy"
