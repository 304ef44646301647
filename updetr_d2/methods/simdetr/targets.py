"""The pseudo-label rounds on disk, and the dataset mapper that serves the current one.

A targets folder holds ``round_000.json`` (stage B: clustered proposals), one
``round_<r>.json`` per self-training round (stage D), each an ordinary COCO-format file
(categories 1..K, no segmentation), ``rounds.json`` (the iteration each round was made
after) and ``current.json`` naming the round training reads now. Every file is written whole and then renamed into place, so a killed run never
leaves a half-written round and a reader never sees one.

The mapper looks at ``current.json`` on every call (one ``stat``): when a self-training
round replaces it, every data loader worker, in every process, switches to the new
targets at its next image, without the data loader being rebuilt.
"""
import json
import logging
import os
from typing import Dict, List, Optional, Tuple

import numpy as np
from detectron2.config import configurable
from detectron2.structures import BoxMode

from ...data.mappers.build import MAPPER_REGISTRY
from ...data.mappers.detr_mapper import DetrDatasetMapper
from .clustering import coco_boxes_xyxy
from ...utils.files import write_json_atomic

logger = logging.getLogger(__name__)

__all__ = ["PseudoLabelDatasetMapper", "PseudoLabelRounds"]

POINTER = "current.json"
INDEX = "rounds.json"  # round -> the iteration it was made after


class PseudoLabelRounds:
    """Reads and writes the rounds of one targets folder."""

    def __init__(self, directory: str):
        self.directory = directory
        self.pointer = os.path.join(directory, POINTER)
        self.index = os.path.join(directory, INDEX)

    def path(self, round_index: int) -> str:
        return os.path.join(self.directory, f"round_{round_index:03d}.json")

    def write(self, round_index: int, coco: Dict, iteration: int = 0) -> str:
        """Write round ``round_index`` and make it the current one. ``iteration``: the
        training iteration after which it was made (0 for stage B), so a resumed run can
        go back to the round that was current at its start."""
        path = self.path(round_index)
        write_json_atomic(coco, path)
        made = dict(self.rounds())
        made[round_index] = iteration
        write_json_atomic({str(r): it for r, it in sorted(made.items())}, self.index)
        self.set_current(round_index, iteration, len(coco["categories"]))
        return path

    def set_current(self, round_index: int, iteration: int, num_classes: int) -> None:
        write_json_atomic(
            {"round": round_index, "file": os.path.basename(self.path(round_index)),
             "iteration": iteration, "num_classes": num_classes},
            self.pointer,
        )

    def current(self) -> Dict:
        with open(self.pointer) as f:
            return json.load(f)

    def rounds(self) -> List[Tuple[int, int]]:
        """(round, iteration it was made after) of every round written, in order (from
        the small index file, so the rounds themselves, which can be large, are not read)."""
        if not os.path.exists(self.index):
            return []
        with open(self.index) as f:
            return sorted((int(r), int(it)) for r, it in json.load(f).items())

    def base_round(self) -> int:
        """The last round made outside a training run (stage B, the relabel tool: iteration
        0); a run numbers its own rounds after it."""
        offline = [r for r, it in self.rounds() if it == 0]
        if not offline:
            raise FileNotFoundError(f"{self.directory} has no round_000.json (stage B's pseudo-labels)")
        return max(offline)

    def rewind(self, start_iter: int) -> int:
        """Make current the round made last at or before iteration ``start_iter`` (a resumed
        run must not train on a round made after its checkpoint, nor a fresh run on rounds a
        previous run left); returns that round."""
        usable = [(it, r) for r, it in self.rounds() if it <= start_iter]
        if not usable:
            raise FileNotFoundError(f"{self.directory} has no round_000.json (stage B's pseudo-labels)")
        iteration, chosen = max(usable)
        current = self.current()
        if current["round"] != chosen:
            logger.info("Pseudo-labels: resuming at iteration %d with round %d", start_iter, chosen)
            # Every round has the same K classes (stage B's), so the pointer's count holds.
            self.set_current(chosen, iteration, current["num_classes"])
        return chosen

    def load(self, round_index: Optional[int] = None) -> Tuple[int, Dict[str, Tuple[np.ndarray, np.ndarray]]]:
        """(round, file name -> (xyxy boxes, 0-based labels)) of ``round_index`` (default:
        the current one)."""
        if round_index is None:
            round_index = self.current()["round"]
        with open(self.path(round_index)) as f:
            coco = json.load(f)
        by_id = coco_boxes_xyxy(coco)
        return round_index, {os.path.abspath(img["file_name"]): by_id[img["id"]] for img in coco["images"]}


@MAPPER_REGISTRY.register()
class PseudoLabelDatasetMapper(DetrDatasetMapper):
    """DETR's training mapper over images whose targets are the current pseudo-label
    round of ``targets_dir`` (their boxes and cluster classes replace whatever the
    dataset's records hold). An image with fewer than ``min_targets`` targets is skipped
    (``None``: Detectron2's loader draws another image), as DETReg skips images with fewer
    than 2 proposals. Without ``targets_dir`` it is ``DetrDatasetMapper``."""

    @configurable
    def __init__(self, is_train: bool = True, *, targets_dir: str = "", min_targets: int = 2, **kwargs):
        super().__init__(is_train, **kwargs)
        self.rounds = PseudoLabelRounds(targets_dir) if targets_dir else None
        self.min_targets = min_targets
        self._stamp = None
        self._targets: Dict[str, Tuple[np.ndarray, np.ndarray]] = {}

    @property
    def uses_dataset_labels(self) -> bool:
        """Whether the records' own annotations are the targets (read by the input checks,
        which then compare the dataset's classes with the model's): not while serving
        pseudo-labels."""
        return self.rounds is None or not self.is_train

    @classmethod
    def from_config(cls, cfg, is_train: bool = True):
        ret = super().from_config(cfg, is_train)
        ret["targets_dir"] = cfg.SIMDETR.TARGETS_DIR if is_train else ""
        ret["min_targets"] = cfg.SIMDETR.PROPOSALS.MIN_PROPOSALS
        return ret

    def _refresh(self) -> None:
        stat = os.stat(self.rounds.pointer)
        stamp = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
        if stamp != self._stamp:
            round_index, self._targets = self.rounds.load()
            self._stamp = stamp
            logger.info("Pseudo-labels: serving round %d (%d images)", round_index, len(self._targets))

    def __call__(self, dataset_dict):
        if self.rounds is not None and self.is_train:
            self._refresh()
            empty = (np.zeros((0, 4)), np.zeros(0))
            boxes, labels = self._targets.get(os.path.abspath(dataset_dict["file_name"]), empty)
            if len(boxes) < self.min_targets:
                return None
            dataset_dict = dict(dataset_dict)
            dataset_dict["annotations"] = [
                {"bbox": [float(v) for v in box], "bbox_mode": BoxMode.XYXY_ABS,
                 "category_id": int(label), "iscrowd": 0}
                for box, label in zip(boxes, labels)
            ]
        return super().__call__(dataset_dict)
