"""UP-DETR (Dai et al., CVPR 2021): unsupervised pretraining of DETR by random query
patch detection. The data side is ``updetr_d2.data.mappers.QueryPatchDatasetMapper``."""
from .losses import FeatureReconstruction
from .meta_arch import UPDETR
from .one_shot import OneShotDatasetMapper, evaluate_one_shot
from .queries import PatchQueries

__all__ = ["FeatureReconstruction", "PatchQueries", "UPDETR",
           "OneShotDatasetMapper", "evaluate_one_shot"]
