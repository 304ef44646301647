"""Co-DETR (Zong et al., ICCV 2023): collaborative hybrid assignment training. Auxiliary
one-to-many heads on the encoder's pyramid (``AUX_HEAD_REGISTRY``: ATSS, FCOS, Faster
R-CNN) and their customized positive queries, training only; ``CoDeformableDetr`` (Deformable
DETR, DN, DINO) and ``CoDetr`` (single-scale DETR)."""
from .atss import ATSSAuxHead
from .aux_heads import AUX_HEAD_REGISTRY, AuxHead, PositiveSamples, build_aux_head
from .config import add_codetr_config
from .convert import convert_official_codetr
from .fcos import FCOSAuxHead
from .meta_arch import CoDeformableDetr, CoDetr
from .positive_queries import PositiveQueries, SelectedQueries, select_positive_queries
from .rcnn import FasterRCNNAuxHead

__all__ = [
    "AUX_HEAD_REGISTRY",
    "ATSSAuxHead",
    "AuxHead",
    "CoDeformableDetr",
    "CoDetr",
    "FCOSAuxHead",
    "FasterRCNNAuxHead",
    "PositiveQueries",
    "PositiveSamples",
    "SelectedQueries",
    "add_codetr_config",
    "build_aux_head",
    "convert_official_codetr",
    "select_positive_queries",
]
