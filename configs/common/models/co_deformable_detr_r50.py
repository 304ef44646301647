"""Co-Deformable-DETR-R50 as LazyConfig (projects/CoDETR/configs/co_deformable_detr_r50.yaml):
the two-stage, box-refining Deformable DETR trained with Faster R-CNN and ATSS auxiliary
heads on its encoder pyramid (strides 8-128) and their customized positive queries."""
from detectron2.config import LazyCall as L

from updetr_d2.methods.codetr import ATSSAuxHead, CoDeformableDetr, CoDetr, FasterRCNNAuxHead, PositiveQueries
from updetr_d2.methods.codetr.meta_arch import pyramid_shapes

from .deformable_detr_r50 import model



def add_co_detr(model, num_decoder_layers: int, lambda1: float = 1.0, lambda2: float = 2.0,
                single_scale: bool = False, strides=(8, 16, 32, 64, 128)):
    """Turn a Deformable DETR node into Co-DETR: Faster R-CNN and ATSS heads on the encoder
    pyramid (strides 8-128: 4 encoder levels + 1) and their positive queries; with
    ``single_scale``, a DETR node into ``CoDetr``, whose pyramid (``strides``) is built
    from the encoder's one map. A function, so that the config files that use it get no
    extra top-level node."""
    model._target_ = CoDetr if single_scale else CoDeformableDetr
    if single_scale:
        model.pyramid_strides = list(strides)
    # Interpolations are relative to where the nodes end up (model.aux_heads[i].input_shape).
    pyramid = L(pyramid_shapes)(channels="${....hidden_dim}", strides=list(strides))
    model.aux_heads = [
        L(FasterRCNNAuxHead)(input_shape=pyramid, num_classes="${...num_classes}"),
        L(ATSSAuxHead)(input_shape=pyramid, num_classes="${...num_classes}"),
    ]
    model.positive_queries = L(PositiveQueries)(
        num_aux_heads=2, hidden_dim="${..hidden_dim}", feature_dim="${..hidden_dim}", anchor_queries=False,
        with_coord_feat=True,
    )
    model.aux_loss_weight = lambda2 * num_decoder_layers  # the paper's lambda2 per decoder layer
    model.positive_query_weight = lambda1
    model.min_positive_queries = 9
    model.max_positive_queries = 300
    return model


model.update(with_box_refine=True, two_stage=True, query_generator=None, num_queries=300)
model.transformer.two_stage = True
add_co_detr(model, num_decoder_layers=6)
