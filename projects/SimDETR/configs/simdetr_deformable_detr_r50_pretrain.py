"""LazyConfig twin of simdetr_deformable_detr_r50_pretrain.yaml: Deformable DETR-R50 pretrained on
256 pseudo-classes, backbone trained at 0.1x the learning rate, one self-training round.
Backbone weights: ``train.init_checkpoint`` (a SwAV / DINO ResNet-50 is converted on load)."""
from ....configs.common.data.pseudo_labels import use_pseudo_label_data
from ....configs.common.models.simdetr import add_self_training
from ...DeformableDETR.configs.deformable_detr_r50 import (  # noqa: F401
    dataloader,
    lr_multiplier,
    model,
    optimizer,
    train,
)

TARGETS = "./output/simdetr_r50/targets"
model.num_classes = 256
use_pseudo_label_data(dataloader, "coco_2017_train", TARGETS)  # any images; labels ignored
add_self_training(model, TARGETS, "coco_2017_train", min_size=800, max_size=1333, rounds=1)
optimizer.params.backbone_multiplier = 0.1
train.output_dir = "./output/simdetr_r50/pretrain_lazy"
