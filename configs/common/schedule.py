"""Learning-rate schedules shared by the LazyConfig files. Functions, so that the config
files that import them get no extra top-level node."""
from detectron2.config import LazyCall as L
from detectron2.solver import WarmupParamScheduler
from fvcore.common.param_scheduler import MultiStepParamScheduler


def multistep_schedule(max_iter, milestones, warmup_iters=0, warmup_factor=1.0, gamma=0.1):
    """``lr_multiplier``: the LR multiplied by ``gamma`` at each of ``milestones`` (iterations)
    over ``max_iter`` iterations, after a linear warmup of ``warmup_iters`` iterations from
    ``warmup_factor`` (none by default)."""
    return L(WarmupParamScheduler)(
        scheduler=L(MultiStepParamScheduler)(
            values=[gamma**i for i in range(len(milestones) + 1)],
            milestones=list(milestones),
            num_updates=max_iter,
        ),
        warmup_length=warmup_iters / max_iter,
        warmup_factor=warmup_factor,
    )


def epoch_schedule(train, epochs, decay_epoch, iters_per_epoch, period=5000, evaluate=True):
    """A full-size run measured in epochs: sets ``train.max_iter`` (``epochs`` epochs of
    ``iters_per_epoch`` iterations), checkpoints every ``period`` iterations (and evaluates as
    often, unless ``evaluate`` is False) and returns ``lr_multiplier``, which divides the LR
    by 10 after ``decay_epoch`` epochs."""
    train.max_iter = epochs * iters_per_epoch
    train.checkpointer.period = period
    if evaluate:
        train.eval_period = period
    return multistep_schedule(train.max_iter, milestones=[decay_epoch * iters_per_epoch])
