"""LazyConfig twin of updetr_r50_pretrain.yaml: UP-DETR pretraining with a ResNet-50
(frozen; initialise it with train.init_checkpoint), 10 patches, 100 queries."""
from detectron2.config import LazyCall as L
from detectron2.solver import WarmupParamScheduler
from fvcore.common.param_scheduler import MultiStepParamScheduler

from updetr_d2.data.mappers import QueryPatchDatasetMapper
from updetr_d2.methods.updetr import FeatureReconstruction, PatchQueries, UPDETR

from ....configs.common.data.detr_coco import dataloader
from ....configs.common.models.detr_r50 import model
from ....configs.common.optim import AdamW as optimizer
from ....configs.common.train import train

model._target_ = UPDETR
model.num_classes = 1
model.transformer.normalize_before = True  # UP-DETR pretrains (and fine-tunes) pre-norm
model.query_generator = L(PatchQueries)(
    num_queries=100, hidden_dim="${..hidden_dim}", patch_feature_dim=2048, query_dropout=0.1
)
model.criterion.loss_terms.append(L(FeatureReconstruction)())
model.criterion.weight_dict["loss_feature"] = 1.0
model.freeze_backbone = True
model.feature_reconstruction = True

# Any registered dataset (labels ignored) or a folder of images.
dataloader.train.dataset.names = "imagenet_unlabeled"
dataloader.train.mapper = L(QueryPatchDatasetMapper)(
    is_train=True, num_patches=10, patch_size=128, min_side=8,
    min_sizes=(320, 336, 352, 368, 400, 416, 432, 448, 464, 480), max_size=600, image_format="RGB",
)
dataloader.train.total_batch_size = 256
del dataloader.test, dataloader.evaluator

# 60 epochs of ImageNet at batch 256 (5004 iterations an epoch), LR drop after 40.
lr_multiplier = L(WarmupParamScheduler)(
    scheduler=L(MultiStepParamScheduler)(values=[1.0, 0.1], milestones=[200160], num_updates=300240),
    warmup_length=0.0,
    warmup_factor=1.0,
)
train.max_iter = 300240
train.checkpointer.period = 5000
train.output_dir = "./output/updetr_r50_pretrain_lazy"
