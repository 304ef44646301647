"""LazyConfig twin of deformable_detr_R18_demo.yaml: a small Deformable DETR (ResNet-18 GN from
scratch, 3 levels, 128-wide 2+2-layer deformable transformer, 30 queries, box refinement) on
the generated demo data."""
from detectron2.config import LazyCall as L
from detectron2.data import transforms as T
from detectron2.modeling.backbone import BasicStem
from detectron2.solver import WarmupParamScheduler
from fvcore.common.param_scheduler import MultiStepParamScheduler

from ....configs.common.data.detr_coco import dataloader
from ....configs.common.models.deformable_detr_r50 import model
from ....configs.common.optim import AdamW as optimizer
from ....configs.common.train import train

resnet = model.backbone.backbone
resnet.stem = L(BasicStem)(in_channels=3, out_channels=64, norm="GN")
resnet.stages.depth = 18
resnet.stages.norm = "GN"
del resnet.stages.stride_in_1x1  # a ResNet-18 has no bottleneck blocks
resnet.freeze_at = 0
model.position_embedding.num_pos_feats = 64
model.transformer.update(d_model=128, nhead=4, dim_feedforward=512, num_encoder_layers=2,
                         num_decoder_layers=2, dropout=0.0, num_feature_levels=3)
model.query_generator.update(num_queries=30, hidden_dim=128)
model.update(num_classes=4, hidden_dim=128, num_queries=30, with_box_refine=True)

dataloader.train.dataset.names = "updetr_demo_train"
dataloader.train.mapper.augmentations.update(
    min_sizes=(192, 224, 256), max_size=384, crop_pre_resize=(224, 256, 288), crop_size=(160, 256)
)
dataloader.train.total_batch_size = 4
dataloader.train.num_workers = 2
dataloader.test.dataset.names = "updetr_demo_val"
dataloader.test.mapper.augmentations = [L(T.ResizeShortestEdge)(short_edge_length=256, max_size=384)]
dataloader.test.num_workers = 2

optimizer.lr = 5e-4
optimizer.params.backbone_multiplier = 1.0  # trained from scratch
optimizer.params.offset_multiplier = 0.1

lr_multiplier = L(WarmupParamScheduler)(
    scheduler=L(MultiStepParamScheduler)(values=[1.0, 0.1], milestones=[400], num_updates=500),
    warmup_length=0.0,
    warmup_factor=1.0,
)
train.max_iter = 500
train.checkpointer.period = 250
train.output_dir = "./output/demo_deformable_detr_lazy"
