"""LazyConfig twin of detr_effnet_lite0_demo_panoptic_box_from_updetr.yaml: the DETR box stage
from an UP-DETR pretraining (train.init_checkpoint = its model_final.pth): backbone, input
projection and encoder taken, decoder, queries and heads fresh."""
from updetr_d2.methods.updetr.checkpoint import ENCODER_HANDOFF_SKIP

from .detr_effnet_lite0_demo_panoptic_box import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401

train.init_checkpoint_skip = list(ENCODER_HANDOFF_SKIP)
train.output_dir = "./output/panoptic_demo_box_from_updetr_lazy"
