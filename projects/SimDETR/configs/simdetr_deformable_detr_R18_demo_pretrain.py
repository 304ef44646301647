"""LazyConfig twin of simdetr_deformable_detr_R18_demo_pretrain.yaml: SimDETR pretraining of the
demo Deformable DETR (ResNet-18 GN FROM SCRATCH; the pseudo-labels come from stages A/B with
the ImageNet EfficientNet-Lite0 extractor) on 16 pseudo-classes, one self-training round."""
from ....configs.common.data.pseudo_labels import use_pseudo_label_data
from ....configs.common.demo import use_demo_schedule
from ....configs.common.models.simdetr import add_self_training
from ...DeformableDETR.configs.deformable_detr_R18_demo import dataloader, model, optimizer, train  # noqa: F401

TARGETS = "./output/simdetr_demo/targets"
model.num_classes = 16  # = stage B's SIMDETR.CLUSTERING.NUM_CLUSTERS
use_pseudo_label_data(dataloader, "updetr_demo_unlabeled", TARGETS)
add_self_training(model, TARGETS, "updetr_demo_unlabeled", min_size=256, max_size=384, rounds=1)
lr_multiplier = use_demo_schedule(train, max_iter=300, decay_iter=250)
train.output_dir = "./output/simdetr_demo/pretrain_lazy"
