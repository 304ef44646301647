"""LazyConfig twin of co_dino_r50.yaml: Co-DETR's auxiliary heads on DINO-4scale-R50, 12 COCO
epochs at batch 16."""
from ....configs.common.models.co_deformable_detr_r50 import add_co_detr
from ...DINO.configs.dino_r50 import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401

add_co_detr(model, num_decoder_layers=6)
model.positive_queries.update(anchor_queries=True, with_coord_feat=False)
model.query_generator.box_noise_scale = 1.0
optimizer.lr = 2e-4
train.output_dir = "./output/co_dino_r50_lazy"
