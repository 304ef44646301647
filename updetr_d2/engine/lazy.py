"""The LazyConfig route: train and evaluate a config that defines ``model``,
``dataloader.{train,test,evaluator}``, ``optimizer``, ``lr_multiplier`` and
``train`` (see ``configs/common/train.py``). Hooks: Detectron2's usual ones, the
model's own (``model.training_hooks()``) and any in ``train.hooks`` (a list of
LazyCall'd hooks)."""
import logging

from detectron2.config import instantiate
from detectron2.engine import SimpleTrainer, default_writers, hooks
from detectron2.engine.defaults import create_ddp_model
from detectron2.evaluation import inference_on_dataset, print_csv_format
from detectron2.utils import comm

from ..checkpoint import DetrCheckpointer
from .amp import inference_autocast, with_mixed_precision
from .evaluation import apply_box_rule
from .hooks import model_hooks

logger = logging.getLogger("detectron2")


def do_test(cfg, model):
    if "evaluator" not in cfg.dataloader:
        return {}
    amp = cfg.train.get("amp", {})
    with inference_autocast(cfg.train.device, amp.get("inference", False), amp.get("precision", "auto"),
                            option="train.amp.inference"):
        results = inference_on_dataset(
            model, instantiate(cfg.dataloader.test), apply_box_rule(instantiate(cfg.dataloader.evaluator))
        )
    if comm.is_main_process():
        print_csv_format(results)
    return results


def build_model(cfg):
    model = instantiate(cfg.model)
    model.to(cfg.train.device)
    return model


def build_hooks(cfg, model, checkpointer, evaluate) -> list:
    """Timer, LR schedule, checkpoints (main process), evaluation, the model's and the
    config's extra hooks, then the writers (main process), in Detectron2's order."""
    main = comm.is_main_process()
    return [
        hooks.IterationTimer(),
        hooks.LRScheduler(scheduler=instantiate(cfg.lr_multiplier)),
        hooks.PeriodicCheckpointer(checkpointer, **cfg.train.checkpointer) if main else None,
        hooks.EvalHook(cfg.train.eval_period, evaluate),
        *model_hooks(model),
        *[instantiate(h) for h in cfg.train.get("hooks", [])],
        hooks.PeriodicWriter(default_writers(cfg.train.output_dir, cfg.train.max_iter), period=cfg.train.log_period)
        if main
        else None,
    ]


def build_trainer(cfg, model, train_loader, optimizer) -> SimpleTrainer:
    """``SimpleTrainer``, or with ``train.amp.enabled`` the mixed-precision one (``amp.py``)."""
    amp = cfg.train.get("amp", {})
    trainer = SimpleTrainer(model, train_loader, optimizer)
    if not amp.get("enabled", False):
        return trainer
    return with_mixed_precision(trainer, cfg.train.device, amp.get("precision", "auto"), "train.amp.precision")


def do_train(cfg, resume: bool):
    """Train; returns the results of the last evaluation (the EvalHook runs one at the end)."""
    model = build_model(cfg)
    logger.info("Model:\n%s", model)
    cfg.optimizer.params.model = model
    optimizer = instantiate(cfg.optimizer)
    train_loader = instantiate(cfg.dataloader.train)

    model = create_ddp_model(model, **cfg.train.get("ddp", {}))
    trainer = build_trainer(cfg, model, train_loader, optimizer)
    last_results = {}

    def evaluate():
        last_results.clear()
        last_results.update(do_test(cfg, model))
        return last_results

    checkpointer = DetrCheckpointer(
        model, cfg.train.output_dir, allow_unsafe=cfg.train.get("allow_unsafe_checkpoints", False),
        skip=cfg.train.get("init_checkpoint_skip", ()), trainer=trainer,
    )
    trainer.register_hooks(build_hooks(cfg, model, checkpointer, evaluate))
    checkpointer.resume_or_load(cfg.train.init_checkpoint, resume=resume)
    # A checkpoint stores the iteration that just finished.
    start_iter = trainer.iter + 1 if resume and checkpointer.has_checkpoint() else 0
    trainer.train(start_iter, cfg.train.max_iter)
    return last_results


def do_eval_only(cfg):
    model = create_ddp_model(build_model(cfg))
    DetrCheckpointer(model, allow_unsafe=cfg.train.get("allow_unsafe_checkpoints", False),
                     skip=cfg.train.get("init_checkpoint_skip", ())).load(cfg.train.init_checkpoint)
    return do_test(cfg, model)
