"""LazyConfig twin of updetr_R18_demo_pretrain.yaml: UP-DETR pretraining of the demo DETR
on the demo's unlabeled images."""
from detectron2.config import LazyCall as L

from updetr_d2.data.mappers import QueryPatchDatasetMapper
from updetr_d2.methods.updetr import FeatureReconstruction, PatchQueries, UPDETR

from ....configs.demo.detr_R18_demo import dataloader, lr_multiplier, model, optimizer, train

NUM_PATCHES = 4

model._target_ = UPDETR
model.num_classes = 1  # "patch"; the no-object class is added by the heads
model.query_generator = L(PatchQueries)(
    num_queries=20, hidden_dim="${..hidden_dim}", patch_feature_dim=512, query_dropout=0.1  # res5 of a ResNet-18
)
model.criterion.loss_terms.append(L(FeatureReconstruction)())
model.criterion.weight_dict["loss_feature"] = 1.0
model.freeze_backbone = True
model.feature_reconstruction = True

dataloader.train.dataset.names = "updetr_demo_unlabeled"
dataloader.train.mapper = L(QueryPatchDatasetMapper)(
    is_train=True, num_patches=NUM_PATCHES, patch_size=64, min_side=8,
    min_sizes=(192, 224, 256), max_size=384, image_format="RGB",
)
del dataloader.test, dataloader.evaluator  # nothing to evaluate during pretraining

lr_multiplier.scheduler.update(milestones=[250], num_updates=300)
train.max_iter = 300
train.checkpointer.period = 150
train.output_dir = "./output/demo_updetr_pretrain_lazy"
