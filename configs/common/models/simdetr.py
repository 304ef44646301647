"""SimDETR's self-training (stage D) as a LazyConfig edit of a DETR-family model node."""
from detectron2.config import LazyCall as L

from updetr_d2.methods.simdetr import SelfTraining, SelfTrainingParams


def add_self_training(model, targets_dir, names, min_size, max_size, rounds=1, period=0, num_workers=2, **params):
    """The model relabels the images of ``names`` (resized to a short side ``min_size``, at
    most ``max_size``) ``rounds`` times during training, every ``period`` iterations (0:
    spread over the run), writing each round to ``targets_dir``; ``params``: the other
    fields of ``SelfTrainingParams`` (score_thresh, nms_iou, max_dets, ...)."""
    model.plugins = [
        L(SelfTraining)(
            targets_dir=targets_dir, dataset_names=[names] if isinstance(names, str) else list(names),
            params=L(SelfTrainingParams)(rounds=rounds, **params), period=period,
            min_size=min_size, max_size=max_size, num_workers=num_workers,
        )
    ]
    return model
