"""LazyConfig twin of detr_effnet_lite0_demo_panoptic_mask.yaml: the mask stage (the MaskHead
plug-in alone, every detector parameter frozen; train.init_checkpoint = the box stage's
model_final.pth). Joint training: freeze_detector=False."""
from ....configs.common.data.panoptic import add_mask_head
from ....configs.common.demo import use_demo_schedule
from .detr_effnet_lite0_demo_panoptic_box import dataloader, model, optimizer, train  # noqa: F401

add_mask_head(model, thing_classes=[0, 1, 2, 3], freeze_detector=True)
lr_multiplier = use_demo_schedule(train, max_iter=500, decay_iter=300)
train.checkpointer.period = 250
train.eval_period = 250
train.output_dir = "./output/panoptic_demo_mask_lazy"
