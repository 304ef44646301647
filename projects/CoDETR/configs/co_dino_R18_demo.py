"""LazyConfig twin of co_dino_R18_demo.yaml: the demo DINO (ResNet-18) trained with Co-DETR's
Faster R-CNN and ATSS heads and their positive queries."""
from ....configs.common.models.co_deformable_detr_r50 import add_co_detr
from ...DINO.configs.dino_R18_demo import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401

model.transformer.num_feature_levels = 4  # the auxiliary heads' pyramid: 4 encoder levels + 1
add_co_detr(model, num_decoder_layers=2)
model.positive_queries.update(anchor_queries=True, with_coord_feat=False)
model.query_generator.box_noise_scale = 1.0
train.output_dir = "./output/demo_co_dino_lazy"
