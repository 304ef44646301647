"""LazyConfig twin of faster_rcnn_R18_FPN.yaml: a small Faster R-CNN (ResNet-18 +
FPN, GroupNorm, from scratch) on the generated demo data."""
from detectron2.layers import ShapeSpec
from detectron2.model_zoo import get_config

from ..common.demo import DEMO_NUM_CLASSES, use_demo_data, use_resnet18_gn
from ..common.schedule import multistep_schedule
from ..common.train import train

model = get_config("common/models/mask_rcnn_fpn.py").model
use_resnet18_gn(model.backbone.bottom_up)
model.backbone.out_channels = 128
model.backbone.norm = "GN"
model.proposal_generator.head.in_channels = 128
model.proposal_generator.anchor_generator.sizes = [[16], [32], [64], [128], [256]]
model.proposal_generator.pre_nms_topk = (1000, 500)
model.proposal_generator.post_nms_topk = (500, 250)
model.roi_heads.num_classes = DEMO_NUM_CLASSES
model.roi_heads.batch_size_per_image = 128
model.roi_heads.box_head.input_shape = ShapeSpec(channels=128, height=7, width=7)
model.roi_heads.box_head.fc_dims = [256, 256]
model.roi_heads.mask_in_features = None
model.roi_heads.mask_pooler = None
model.roi_heads.mask_head = None

# Detectron2's COCO loaders (BGR, multi-scale resize + flip), boxes only, at the demo's sizes.
dataloader = get_config("common/data/coco.py").dataloader
use_demo_data(dataloader, max_size=480)
dataloader.train.mapper.augmentations[0].update(short_edge_length=(224, 256, 288, 320), max_size=480)
del dataloader.train.mapper.use_instance_mask

optimizer = get_config("common/optim.py").SGD
optimizer.lr = 0.02

train.max_iter = 300
train.checkpointer.period = 100
lr_multiplier = multistep_schedule(train.max_iter, milestones=[240], warmup_iters=50, warmup_factor=0.001)
train.output_dir = "./output/demo_faster_rcnn_lazy"
