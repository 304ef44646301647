"""LazyConfig twin of updetr_r50_pretrain.yaml: UP-DETR pretraining with a ResNet-50
(frozen; initialise it with train.init_checkpoint), 10 patches, 100 queries."""
from ....configs.common.data.detr_coco import dataloader
from ....configs.common.data.query_patches import use_query_patch_data
from ....configs.common.models.detr_r50 import model
from ....configs.common.models.updetr import add_updetr
from ....configs.common.optim import AdamW as optimizer
from ....configs.common.schedule import epoch_schedule
from ....configs.common.train import train

add_updetr(model, patch_feature_dim=2048)  # res5 of a ResNet-50; DETR-R50's 100 queries
model.transformer.normalize_before = True  # UP-DETR pretrains (and fine-tunes) pre-norm

# Any registered dataset (labels ignored) or a folder of images.
use_query_patch_data(dataloader, "imagenet_unlabeled", num_patches=10, patch_size=128,
                     min_sizes=(320, 336, 352, 368, 400, 416, 432, 448, 464, 480), max_size=600)
dataloader.train.total_batch_size = 256

# 60 epochs of ImageNet at batch 256 (5004 iterations an epoch), LR drop after 40.
lr_multiplier = epoch_schedule(train, epochs=60, decay_epoch=40, iters_per_epoch=5004, evaluate=False)
train.output_dir = "./output/updetr_r50_pretrain_lazy"
