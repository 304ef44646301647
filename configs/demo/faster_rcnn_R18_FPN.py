"""LazyConfig twin of faster_rcnn_R18_FPN.yaml: a small Faster R-CNN (ResNet-18 +
FPN, GroupNorm, from scratch) on the generated demo data."""
import detectron2.data.transforms as T
from detectron2.config import LazyCall as L
from detectron2.data import (
    DatasetMapper,
    build_detection_test_loader,
    build_detection_train_loader,
    get_detection_dataset_dicts,
)
from detectron2.evaluation import COCOEvaluator
from detectron2.layers import ShapeSpec
from detectron2.model_zoo import get_config
from detectron2.modeling.backbone import BasicStem
from detectron2.solver import WarmupParamScheduler
from fvcore.common.param_scheduler import MultiStepParamScheduler

from ..common.train import train

model = get_config("common/models/mask_rcnn_fpn.py").model
# ResNet-18 with GroupNorm (a random FrozenBN backbone diverges from scratch).
model.backbone.bottom_up.stem = L(BasicStem)(in_channels=3, out_channels=64, norm="GN")
model.backbone.bottom_up.stages.depth = 18
model.backbone.bottom_up.stages.norm = "GN"
del model.backbone.bottom_up.stages.stride_in_1x1
model.backbone.bottom_up.freeze_at = 0
model.backbone.out_channels = 128
model.backbone.norm = "GN"
model.proposal_generator.head.in_channels = 128
model.proposal_generator.anchor_generator.sizes = [[16], [32], [64], [128], [256]]
model.proposal_generator.pre_nms_topk = (1000, 500)
model.proposal_generator.post_nms_topk = (500, 250)
model.roi_heads.num_classes = 4
model.roi_heads.batch_size_per_image = 128
model.roi_heads.box_head.input_shape = ShapeSpec(channels=128, height=7, width=7)
model.roi_heads.box_head.fc_dims = [256, 256]
model.roi_heads.mask_in_features = None
model.roi_heads.mask_pooler = None
model.roi_heads.mask_head = None

dataloader = dict(
    train=L(build_detection_train_loader)(
        dataset=L(get_detection_dataset_dicts)(names="updetr_demo_train"),
        mapper=L(DatasetMapper)(
            is_train=True,
            augmentations=[
                L(T.ResizeShortestEdge)(
                    short_edge_length=(224, 256, 288, 320), max_size=480, sample_style="choice"
                ),
                L(T.RandomFlip)(horizontal=True),
            ],
            image_format="BGR",
        ),
        total_batch_size=4,
        num_workers=2,
    ),
    test=L(build_detection_test_loader)(
        dataset=L(get_detection_dataset_dicts)(names="updetr_demo_val", filter_empty=False),
        mapper=L(DatasetMapper)(
            is_train=False,
            augmentations=[L(T.ResizeShortestEdge)(short_edge_length=256, max_size=480)],
            image_format="BGR",
        ),
        num_workers=2,
    ),
    evaluator=L(COCOEvaluator)(dataset_name="${..test.dataset.names}"),
)

optimizer = get_config("common/optim.py").SGD
optimizer.lr = 0.02

lr_multiplier = L(WarmupParamScheduler)(
    scheduler=L(MultiStepParamScheduler)(values=[1.0, 0.1], milestones=[240], num_updates=300),
    warmup_length=50 / 300,
    warmup_factor=0.001,
)

train.max_iter = 300
train.checkpointer.period = 100
train.output_dir = "./output/demo_faster_rcnn_lazy"
