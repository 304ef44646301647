"""LazyConfig twin of co_deformable_detr_R18_demo.yaml: the demo Deformable DETR (4 levels)
trained with Faster R-CNN and ATSS auxiliary heads and their positive queries."""
from detectron2.config import LazyCall as L

from updetr_d2.methods.codetr import ATSSAuxHead, CoDeformableDetr, FasterRCNNAuxHead, PositiveQueries
from updetr_d2.methods.codetr.meta_arch import pyramid_shapes

from ...DeformableDETR.configs.deformable_detr_R18_demo import (  # noqa: F401
    dataloader,
    lr_multiplier,
    model,
    optimizer,
    train,
)

model._target_ = CoDeformableDetr
model.transformer.num_feature_levels = 4
pyramid = L(pyramid_shapes)(channels="${....hidden_dim}", strides=[8, 16, 32, 64, 128])
model.aux_heads = [
    L(FasterRCNNAuxHead)(input_shape=pyramid, num_classes="${...num_classes}"),
    L(ATSSAuxHead)(input_shape=pyramid, num_classes="${...num_classes}"),
]
model.positive_queries = L(PositiveQueries)(
    num_aux_heads=2, hidden_dim="${..hidden_dim}", feature_dim="${..hidden_dim}", anchor_queries=False,
    with_coord_feat=True,
)
model.aux_loss_weight = 4.0  # lambda2 (2) x 2 decoder layers
model.positive_query_weight = 1.0
model.min_positive_queries = 9
model.max_positive_queries = 300
train.output_dir = "./output/demo_co_deformable_detr_lazy"
