"""yaml-config keys of the shared DETR core (``add_detr_config``,
``add_deformable_detr_config``) and ``add_updetr_config``, which adds them and every
method's keys (each method registers its own ``add_<method>_config``, see
:mod:`.registry`). LazyConfig files under ``configs/`` set the same constructor
arguments directly."""
import torch
from detectron2.config import CfgNode as CN

from ..modeling.efficientnet import add_efficientnet_config
from .registry import registered_configs


def default_device() -> str:
    """The device a config runs on unless it says otherwise: the GPU when there is one."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def add_detr_config(cfg):
    """``MODEL.DETR.*``: DETR's model, matcher and loss settings (paper defaults), and
    ``SOLVER.*`` additions for its optimiser."""
    cfg.MODEL.DETR = CN()
    d = cfg.MODEL.DETR
    d.NUM_CLASSES = 80
    d.IN_FEATURE = "res5"
    d.POSITION_EMBEDDING = "sine"  # or "learned"
    d.HIDDEN_DIM = 256
    d.NHEADS = 8
    d.DROPOUT = 0.1
    d.DIM_FEEDFORWARD = 2048
    d.ENC_LAYERS = 6
    d.DEC_LAYERS = 6
    d.PRE_NORM = False
    d.NUM_OBJECT_QUERIES = 100  # the one home of the query count, for every DETR variant
    # A registered query generator (QUERY_GENERATOR_REGISTRY); "" = the model's own default.
    d.QUERY_GENERATOR = ""
    # Registered plug-ins (PLUGIN_REGISTRY) that add phases' work and losses to the model.
    d.PLUGINS = []
    # Encoder pretraining: keep backbone, input projection and encoder only, and train the
    # plug-ins' losses (e.g. EncoderPretext); the checkpoint loads into the full detector.
    d.ENCODER_ONLY = False
    d.SIZE_DIVISIBILITY = 32
    # Loss weights, also the matcher's cost weights (as in DETR).
    d.CLASS_WEIGHT = 1.0
    # The matcher's class cost when it differs from the class loss weight (< 0: CLASS_WEIGHT).
    # DINO matches with 2.0 and weighs its focal loss 1.0.
    d.MATCHER_CLASS_WEIGHT = -1.0
    # Temperature of the sine position embedding of the image features (DINO: 20).
    d.POSITION_TEMPERATURE = 10000.0
    d.L1_WEIGHT = 5.0
    d.GIOU_WEIGHT = 2.0
    d.NO_OBJECT_WEIGHT = 0.1
    d.DEEP_SUPERVISION = True  # auxiliary losses on every decoder layer

    # AdamW with a lower backbone learning rate and full-model gradient-norm clipping.
    # "SGD" keeps Detectron2's own optimiser for existing configs; DETR configs set "ADAMW".
    cfg.SOLVER.OPTIMIZER = "SGD"
    cfg.SOLVER.BACKBONE_MULTIPLIER = 0.1
    # Mixed precision (SOLVER.AMP.ENABLED is Detectron2's; updetr_d2/engine/amp.py): "auto" is
    # bf16 on a CPU that has it and fp16 with a gradient scaler on CUDA; "bfloat16" on CUDA
    # drops the scaler. TEST.AMP.ENABLED evaluates with the same precision.
    cfg.SOLVER.AMP.PRECISION = "auto"
    cfg.TEST.AMP = CN({"ENABLED": False})
    return cfg


def add_deformable_detr_config(cfg):
    """``MODEL.DEFORMABLE_DETR.*``: what Deformable DETR adds to ``MODEL.DETR`` (which
    keeps the width, heads, layers, queries and loss weights; Deformable configs set
    DIM_FEEDFORWARD 1024, NUM_OBJECT_QUERIES 300, CLASS_WEIGHT 2). Paper defaults."""
    cfg.MODEL.DEFORMABLE_DETR = CN()
    dd = cfg.MODEL.DEFORMABLE_DETR
    dd.IN_FEATURES = ["res3", "res4", "res5"]  # strides 8, 16, 32
    dd.NUM_FEATURE_LEVELS = 4  # levels beyond IN_FEATURES come from stride-2 convs
    dd.ENC_N_POINTS = 4
    dd.DEC_N_POINTS = 4
    dd.WITH_BOX_REFINE = False
    dd.TWO_STAGE = False
    # Anchor queries (DAB-Deformable-DETR): learned content + box per query, positional
    # query from the box in every layer. Needed by DN.
    dd.ANCHOR_QUERIES = False
    # Anchor queries' content ends with DN's indicator (0: matching query, 1: denoising), so
    # the same weights serve with denoising on or off.
    dd.ANCHOR_INDICATOR = True
    # Anchor queries: the positional query of layers after the first is scaled by MLP(content)
    # (DAB-DETR); DINO leaves the scale out.
    dd.ANCHOR_QUERY_SCALE = True
    # Box refinement: a layer's box is relative to the previous layer's box before its
    # detach, so each layer's loss also trains the layer before (DINO's look forward twice).
    dd.LOOK_FORWARD_TWICE = False
    # Two-stage: content queries learned (NUM_OBJECT_QUERIES of them), boxes (and, without
    # anchor queries, positional queries) from the top encoder proposals: DINO's mixed
    # query selection (with ANCHOR_QUERIES) and the official Co-Deformable-DETR's.
    dd.MIXED_SELECTION = False
    # Two-stage: score proposals by their best class and supervise them with the classes
    # (DINO), instead of as one "object" class (Deformable DETR).
    dd.TWO_STAGE_CLASS_AWARE = False
    dd.FOCAL_ALPHA = 0.25
    dd.TEST_TOPK = 100  # detections kept per image: the best (query, class) pairs
    # Sample again in backward instead of keeping deformable attention's samples: less memory, slower steps.
    dd.RECOMPUTE_SAMPLING = False
    # Learning rate multiplier of the sampling offsets and reference point projections.
    cfg.SOLVER.OFFSET_LR_MULTIPLIER = 1.0
    return cfg


def add_updetr_config(cfg):
    """Add all of the project's keys and defaults to a Detectron2 ``CfgNode`` (in place).

    Idempotent, so method-specific ``add_*_config`` functions can call it first.
    """
    add_detr_config(cfg)
    add_deformable_detr_config(cfg)
    add_efficientnet_config(cfg)
    for add_method_config in registered_configs().values():
        add_method_config(cfg)
    # Detectron2 defaults to CUDA; we run wherever the machine can.
    cfg.MODEL.DEVICE = default_device()
    # Load MODEL.WEIGHTS files that pickle arbitrary objects (e.g. official DETR / UP-DETR
    # checkpoints); only for files you trust. Off: tensors and plain containers only.
    cfg.MODEL.ALLOW_UNSAFE_CHECKPOINTS = False
    # Parameter-name prefixes that MODEL.WEIGHTS does not fill (they start fresh), e.g.
    # ("transformer.decoder.", "query_generator.query_embed.") to take a pretraining's
    # backbone and encoder only (updetr_d2.checkpoint.skip). A resumed run loads all.
    cfg.MODEL.WEIGHTS_SKIP = ()

    # Which registered dataset mapper the data loaders use (updetr_d2.data.MAPPER_REGISTRY).
    cfg.INPUT.DATASET_MAPPER = "DatasetMapper"
    # DETR's crop branch (used when INPUT.CROP.ENABLED): resize the short side to one of
    # PRE_RESIZE, crop to INPUT.CROP.SIZE, then the multi-scale resize; taken with prob PROB.
    cfg.INPUT.DETR_CROP = CN()
    cfg.INPUT.DETR_CROP.PRE_RESIZE = (400, 500, 600)
    cfg.INPUT.DETR_CROP.PROB = 0.5
    return cfg


def load_yaml_config(config_file: str, opts=()):
    """Detectron2's defaults + the project's keys, then ``config_file`` (none when empty)
    and ``opts`` (KEY VALUE pairs) merged in; not frozen."""
    from detectron2.config import get_cfg

    cfg = get_cfg()
    add_updetr_config(cfg)
    if config_file:
        cfg.merge_from_file(config_file)
    cfg.merge_from_list(list(opts))
    return cfg
