"""LazyConfig twin of co_detr_R18_demo.yaml: the demo DETR (ResNet-18) trained with Co-DETR's
Faster R-CNN and ATSS heads on a pyramid built from its one encoder map."""
from ....configs.common.models.co_deformable_detr_r50 import add_co_detr
from ....configs.demo.detr_R18_demo import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401

add_co_detr(model, num_decoder_layers=2, single_scale=True)
train.output_dir = "./output/demo_co_detr_lazy"
