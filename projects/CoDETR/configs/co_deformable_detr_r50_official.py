"""LazyConfig twin of co_deformable_detr_r50_official.yaml: Co-Deformable-DETR-R50 for the
official weights (Sense-X/Co-DETR), with their model (feedforward 2048, no dropout, mixed
query selection, the RoI level mapping of finest_scale 112) and preprocessing (RGB,
ImageNet mean/std, batches padded to their largest image only, test resize 800 / 1333)."""
from detectron2.config import LazyCall as L

from updetr_d2.modeling.queries import ProposalQueries

from ....configs.common.official import use_official_preprocessing
from .co_deformable_detr_r50 import dataloader, lr_multiplier, model, optimizer, train

__all__ = ["dataloader", "lr_multiplier", "model", "optimizer", "train"]  # the base's schedule and optimizer

model.num_classes = 80
model.transformer.dim_feedforward = 2048
model.transformer.dropout = 0.0
# Mixed selection: the learned content queries join the proposals (as many as there were).
model.query_generator = L(ProposalQueries)(num_queries=model.pop("num_queries"), hidden_dim="${..hidden_dim}",
                                          with_indicator=False)
model.aux_heads[0].pooler_canonical_box_size = 224  # FasterRCNNAuxHead: finest_scale 112
use_official_preprocessing(model, dataloader)  # mmdet's to_rgb, Normalize, Pad(size_divisor=1)
train.output_dir = "./output/co_deformable_detr_r50_official_lazy"
