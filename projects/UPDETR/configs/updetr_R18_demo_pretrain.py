"""LazyConfig twin of updetr_R18_demo_pretrain.yaml: UP-DETR pretraining of the demo DETR
(20 patch queries, 4 patches an image) on the demo's unlabeled images."""
from ....configs.common.data.query_patches import use_query_patch_data
from ....configs.common.demo import DEMO_MAX_SIZE, DEMO_MIN_SIZES, use_demo_schedule
from ....configs.common.models.updetr import add_updetr
from ....configs.demo.detr_R18_demo import dataloader, model, optimizer, train  # noqa: F401

add_updetr(model, patch_feature_dim=512)  # res5 of a ResNet-18
use_query_patch_data(dataloader, "updetr_demo_unlabeled", num_patches=4, patch_size=64,
                     min_sizes=DEMO_MIN_SIZES, max_size=DEMO_MAX_SIZE)
lr_multiplier = use_demo_schedule(train, max_iter=300, decay_iter=250)
train.output_dir = "./output/demo_updetr_pretrain_lazy"
