"""LazyConfig twin of deformable_detr_effnet_lite0_demo_panoptic_mask.yaml: the mask head alone on
the frozen Deformable DETR of the box stage (train.init_checkpoint = its model_final.pth)."""
from ....configs.common.data.panoptic import add_mask_head
from ....configs.common.demo import use_demo_schedule
from .deformable_detr_effnet_lite0_demo_panoptic_box import dataloader, model, optimizer, train  # noqa: F401

add_mask_head(model, thing_classes=[0, 1, 2, 3], freeze_detector=True)
# Sigmoid (focal-loss) class scores run lower than DETR's softmax ones.
model.plugins[0].object_threshold = 0.3
lr_multiplier = use_demo_schedule(train, max_iter=500, decay_iter=400)
train.checkpointer.period = 250
train.eval_period = 250
train.output_dir = "./output/panoptic_demo_deformable_mask_lazy"
