"""Stage D, self-training: the detector relabels its own pretraining images and training
goes on with the new targets.

``relabel`` runs a detector over a dataset and picks each image's targets from its own
queries (:func:`.relabel.select_targets`); ``SelfTrainingHook`` does it every ``period``
iterations inside one training run and writes the result as the next round of the
targets folder, which the pseudo-label mapper then serves (:mod:`.targets`); the
``SelfTraining`` plug-in gives a detector that hook (yaml ``MODEL.DETR.PLUGINS:
["SelfTraining"]``, lazy ``model.plugins``). ``tools/simdetr.py relabel`` is the same
step as a standalone tool. Every round stays on disk.
"""
import logging
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from detectron2.config import configurable
from detectron2.data import DatasetCatalog, DatasetMapper, build_detection_test_loader
from detectron2.data import transforms as T
from detectron2.engine import HookBase
from detectron2.utils import comm
from torch.nn.parallel import DistributedDataParallel

from ...modeling.plugins import PLUGIN_REGISTRY, DetectorPlugin
from .clustering import pseudo_label_coco
from .proposal_shards import coco_images
from .relabel import SelfTrainingParams, per_query_scores, round_statistics, select_targets
from .targets import PseudoLabelRounds

logger = logging.getLogger(__name__)

__all__ = ["SelfTraining", "SelfTrainingHook", "relabel", "relabel_loader"]


def relabel_loader(dataset_names: Sequence[str], min_size: int, max_size: int, image_format: str = "RGB",
                   num_workers: int = 2):
    """(records, test-time loader over them, sharded across processes as Detectron2 does)."""
    records = [r for name in dataset_names for r in DatasetCatalog.get(name)]
    mapper = DatasetMapper(is_train=False, augmentations=[T.ResizeShortestEdge(min_size, max_size)],
                           image_format=image_format)
    indexed = [dict(r, _index=i) for i, r in enumerate(records)]
    return records, build_detection_test_loader(indexed, mapper=mapper, num_workers=num_workers)


@torch.no_grad()
def relabel(model, records: Sequence[Dict], loader, params: SelfTrainingParams, num_classes: int,
            info: Optional[Dict] = None) -> Optional[Dict]:
    """The next round's COCO dict (on the main process; None on the others): each image's
    targets are its own queries, scored by their most probable class, after class-agnostic
    NMS, threshold, cap and fallback."""
    if isinstance(model, DistributedDataParallel):
        model = model.module
    was_training = model.training
    model.eval()
    found = {}
    try:
        for batch in loader:
            state = model.run_phases(batch)
            logits = state.outputs["pred_logits"]
            # Sigmoid heads have K logits (focal loss), softmax heads K + no-object.
            scores, classes = per_query_scores(logits, sigmoid=logits.shape[-1] == model.num_classes)
            detections = model.detections(state.outputs["pred_boxes"], scores, classes, batch, state.images)
            for item, det in zip(batch, detections):
                inst = det["instances"].to("cpu")
                keep, fell_back = select_targets(inst.pred_boxes.tensor, inst.scores, inst.pred_classes, params,
                                                 return_fallback=True)
                found[item["_index"]] = (inst.pred_boxes.tensor[keep].numpy(), inst.pred_classes[keep].numpy(),
                                         inst.scores[keep].numpy(), bool(fell_back))
    finally:
        model.train(was_training)
    gathered = comm.gather(found, dst=0)
    if not comm.is_main_process():
        return None
    merged = {k: v for part in gathered for k, v in part.items()}
    empty = (np.zeros((0, 4), np.float32), np.zeros(0, np.int64), np.zeros(0, np.float32), False)
    per_image = [merged.get(i, empty) for i in range(len(records))]
    stats = round_statistics([len(p[0]) for p in per_image], [p[3] for p in per_image])
    coco = pseudo_label_coco(coco_images(records), [p[0] for p in per_image], [p[1] for p in per_image],
                             num_classes, scores_per_image=[p[2] for p in per_image],
                             info=dict(info or {}, statistics=stats))
    return coco


class SelfTrainingHook(HookBase):
    """Every ``period`` iterations, ``rounds`` times: relabel the pretraining images with
    the model being trained and make the result the current round of ``targets_dir``.
    Before training it rewinds the targets folder to the round that was current at the
    start iteration, so a resumed run trains on what the uninterrupted one did."""

    def __init__(self, targets_dir: str, params: SelfTrainingParams, period: int, dataset_names: Sequence[str],
                 min_size: int, max_size: int, image_format: str = "RGB", num_workers: int = 2):
        self.rounds = PseudoLabelRounds(targets_dir)
        self.params = params
        self.period = period
        self.loader_args = (list(dataset_names), min_size, max_size, image_format, num_workers)

    def _period(self) -> int:
        if self.period > 0:
            return self.period
        # Rounds spread evenly: the last one still leaves a round's worth of training.
        return max(1, self.trainer.max_iter // (self.params.rounds + 1))

    def round_iterations(self) -> List[int]:
        """Iterations (1-based counts of finished steps) after which a round is made."""
        period = self._period()
        return [period * r for r in range(1, self.params.rounds + 1) if period * r < self.trainer.max_iter]

    def before_train(self):
        if comm.is_main_process():
            self.rounds.rewind(self.trainer.iter)
        comm.synchronize()
        self.base_round = self.rounds.base_round()

    def after_step(self):
        done = self.trainer.iter + 1
        schedule = self.round_iterations()
        if done not in schedule:
            return
        round_index = self.base_round + schedule.index(done) + 1
        model = self.trainer.model
        num_classes = (model.module if isinstance(model, DistributedDataParallel) else model).num_classes
        records, loader = relabel_loader(*self.loader_args)
        coco = relabel(model, records, loader, self.params, num_classes,
                       info={"description": "SimDETR self-training", "round": round_index, "iteration": done})
        if coco is not None:
            path = self.rounds.write(round_index, coco, iteration=done)
            stats = coco["info"]["statistics"]
            logger.info("Self-training round %d after iteration %d: %s -> %s", round_index, done, stats, path)
            storage = self.trainer.storage
            storage.put_scalar("self_training/targets_per_image", stats["median"], smoothing_hint=False)
            storage.put_scalar("self_training/fallback_fraction", stats["fallback_fraction"], smoothing_hint=False)
        comm.synchronize()


@PLUGIN_REGISTRY.register()
class SelfTraining(DetectorPlugin):
    """Gives a detector the :class:`SelfTrainingHook` (no parameters, nothing at
    inference)."""

    @configurable
    def __init__(self, *, targets_dir: str, dataset_names: Sequence[str], params: SelfTrainingParams = SelfTrainingParams(),
                 period: int = 0, min_size: int = 800, max_size: int = 1333, image_format: str = "RGB",
                 num_workers: int = 2):
        super().__init__()
        self.hook_args = dict(targets_dir=targets_dir, params=params, period=period,
                              dataset_names=list(dataset_names), min_size=min_size, max_size=max_size,
                              image_format=image_format, num_workers=num_workers)

    @classmethod
    def from_config(cls, cfg):
        from .config import self_training_params

        return {
            "targets_dir": cfg.SIMDETR.TARGETS_DIR, "dataset_names": list(cfg.DATASETS.TRAIN),
            "params": self_training_params(cfg), "period": cfg.SIMDETR.SELF_TRAINING.PERIOD,
            "min_size": cfg.INPUT.MIN_SIZE_TEST, "max_size": cfg.INPUT.MAX_SIZE_TEST,
            "image_format": cfg.INPUT.FORMAT, "num_workers": cfg.DATALOADER.NUM_WORKERS,
        }

    def training_hooks(self) -> List:
        if self.hook_args["params"].rounds <= 0:
            return []
        return [SelfTrainingHook(**self.hook_args)]
