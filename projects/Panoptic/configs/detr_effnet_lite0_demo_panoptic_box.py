"""LazyConfig twin of detr_effnet_lite0_demo_panoptic_box.yaml: the box stage of DETR's
panoptic recipe on the demo data (4 things + 2 stuff classes, a box and a class for every
segment)."""
from ....configs.common.data.panoptic import use_panoptic_data
from ....configs.common.demo import use_demo_schedule
from ....configs.demo.detr_effnet_lite0_demo import dataloader, model, optimizer, train  # noqa: F401

model.backbone.backbone.out_features = ["res2", "res3", "res4", "res5"]  # for the mask stage
model.num_classes = 6
use_panoptic_data(dataloader, "updetr_demo_panoptic_train", "updetr_demo_panoptic_val")
lr_multiplier = use_demo_schedule(train, max_iter=2000, decay_iter=1600)
train.eval_period = 500
train.output_dir = "./output/panoptic_demo_box_lazy"
