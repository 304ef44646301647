"""The yaml-config route: Detectron2's ``DefaultTrainer`` with the project's choices."""
from detectron2.data import build_detection_test_loader, build_detection_train_loader
from detectron2.engine import DefaultTrainer, hooks

from ..checkpoint import DetrCheckpointer
from ..data.mappers import build_dataset_mapper
from ..solver import build_optimizer
from .amp import inference_autocast, with_mixed_precision
from .evaluation import build_evaluator
from .hooks import model_hooks


class Trainer(DefaultTrainer):
    """``DefaultTrainer`` with the optimiser of ``SOLVER.OPTIMIZER``, data loaders using the
    mapper named by ``INPUT.DATASET_MAPPER``, the evaluator the dataset's metadata asks for
    and the training hooks the model asks for; ``SOLVER.AMP.ENABLED`` trains with mixed
    precision on CPUs too (bf16) and ``TEST.AMP.ENABLED`` evaluates with it (``amp.py``)."""

    def __init__(self, cfg):
        amp = cfg.SOLVER.AMP.ENABLED
        # Detectron2's AMPTrainer would be built for AMP (CUDA only); ours replaces it.
        super().__init__(_with_amp(cfg, False) if amp else cfg)
        if amp:
            self.cfg = _with_amp(self.cfg, True)
            self._trainer = with_mixed_precision(self._trainer, cfg.MODEL.DEVICE, cfg.SOLVER.AMP.PRECISION,
                                                 "SOLVER.AMP.PRECISION")

    @classmethod
    def test(cls, cfg, model, evaluators=None):
        with inference_autocast(cfg.MODEL.DEVICE, cfg.TEST.AMP.ENABLED, cfg.SOLVER.AMP.PRECISION):
            return super().test(cfg, model, evaluators)

    def build_hooks(self):
        # Before the hooks take it: a checkpointer that also reads users' ResNet weights
        # (torchvision, SwAV, DINO, MoCo) and refuses unsafe pickles unless allowed.
        old = self.checkpointer
        self.checkpointer = DetrCheckpointer.from_config(self.cfg, old.model, old.save_dir, **old.checkpointables)
        default = super().build_hooks()
        # The model's own hooks (methods, plug-ins) run before the writers, so what they
        # log in an iteration is written with it.
        writers = [i for i, h in enumerate(default) if isinstance(h, hooks.PeriodicWriter)]
        at = writers[0] if writers else len(default)
        return default[:at] + model_hooks(self.model) + default[at:]

    @classmethod
    def build_optimizer(cls, cfg, model):
        return build_optimizer(cfg, model)

    @classmethod
    def build_train_loader(cls, cfg):
        return build_detection_train_loader(cfg, mapper=build_dataset_mapper(cfg, is_train=True))

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        return build_detection_test_loader(
            cfg, dataset_name, mapper=build_dataset_mapper(cfg, is_train=False)
        )

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        return build_evaluator(dataset_name, output_folder or cfg.OUTPUT_DIR)

    def train(self):
        """Train; returns the results of the last evaluation (run after the last iteration)."""
        super().train()
        return getattr(self, "_last_eval_results", None)


def _with_amp(cfg, enabled: bool):
    cfg = cfg.clone()
    cfg.defrost()
    cfg.SOLVER.AMP.ENABLED = enabled
    cfg.freeze()
    return cfg
