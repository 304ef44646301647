"""LazyConfig twin of deformable_detr_effnet_lite0_demo_panoptic_box.yaml: the box stage of the
panoptic recipe with the demo's Deformable DETR (frozen ImageNet EfficientNet-Lite0, levels
res3-res5 plus one stride-64 level, box refinement, 30 queries) on the demo's panoptic data."""
from ....configs.common.data.panoptic import use_panoptic_data
from ....configs.common.demo import use_demo_schedule, use_efficientnet_lite0
from ...DeformableDETR.configs.deformable_detr_R18_demo import dataloader, model, optimizer, train  # noqa: F401

use_efficientnet_lite0(model, freeze_at=5)
model.backbone.backbone.out_features = ["res2", "res3", "res4", "res5"]  # res2 for the mask stage
model.backbone.in_features = ["res3", "res4", "res5"]
model.transformer.num_feature_levels = 4
model.num_classes = 6
optimizer.params.backbone_multiplier = 0.1
use_panoptic_data(dataloader, "updetr_demo_panoptic_train", "updetr_demo_panoptic_val")
lr_multiplier = use_demo_schedule(train, max_iter=800, decay_iter=650)
train.checkpointer.period = 400
train.eval_period = 400
train.seed = 1
train.output_dir = "./output/panoptic_demo_deformable_box_lazy"
