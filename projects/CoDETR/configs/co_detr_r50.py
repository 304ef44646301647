"""LazyConfig twin of co_detr_r50.yaml: Co-DETR's auxiliary heads on the single-scale
DETR-R50 (pyramid 8-128 from the stride-32 encoder map), DETR's schedule."""
from ....configs.common.models.co_deformable_detr_r50 import add_co_detr
from ....configs.detr.detr_r50 import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401

add_co_detr(model, num_decoder_layers=6, single_scale=True)
train.output_dir = "./output/co_detr_r50_lazy"
