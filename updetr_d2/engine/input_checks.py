"""The input checks of a run, yaml or LazyConfig: every train and test dataset scanned
(:func:`updetr_d2.data.checks.scan_dataset`) against the model's class count and queries
and against what the data loaders' mappers do to image sizes, once, before the data
loaders are built. Errors stop the run with one message naming the files and keys;
warnings are logged; when all is fine, one summary line.

Whether a dataset's labels are the model's targets is read from the train mapper
(``uses_dataset_labels`` where a mapper declares it, else whether it is a Detectron2
``DatasetMapper``, looking through mappers that wrap a ``base_mapper``) and from the
model (an encoder-only model trains no detection head): pretraining on query patches,
pseudo-labels or image folders compares no classes.
"""
import contextlib
import logging
import time
from typing import List

from detectron2.config import instantiate
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data import DatasetMapper as D2DatasetMapper

from ..config.model_keys import config_value, model_keys
from ..data.checks import DatasetReport, DatasetUse, InputCheckError, augmentations_of, scan_dataset
from ..data.mappers import build_dataset_mapper

__all__ = ["dataset_uses", "mapper_uses_dataset_labels", "run_input_checks"]

logger = logging.getLogger("updetr_d2")


def mapper_uses_dataset_labels(mapper) -> bool:
    declared = getattr(mapper, "uses_dataset_labels", None)
    if declared is not None:
        return bool(declared)
    base = getattr(mapper, "base_mapper", None)
    if base is not None:
        return mapper_uses_dataset_labels(base)
    return isinstance(mapper, D2DatasetMapper)


def _names(value) -> List[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


@contextlib.contextmanager
def _quiet_mapper_logs():
    """Mappers log their augmentations when built; the data loaders build them again."""
    log = logging.getLogger("detectron2.data.dataset_mapper")
    level = log.level
    log.setLevel(logging.WARNING)
    try:
        yield
    finally:
        log.setLevel(level)


def _lazy_augmentations_key(node, prefix: str) -> str:
    while node is not None and "augmentations" not in node and "base_mapper" in node:
        node, prefix = node["base_mapper"], prefix + ".base_mapper"
    return prefix + ".augmentations"


def _splits(cfg, eval_only: bool):
    """(split, dataset names, mapper, resize keys) of the loaders the run builds."""
    splits = []
    if hasattr(cfg, "DATASETS"):  # yaml
        crop = ", INPUT.CROP, INPUT.DETR_CROP" if cfg.INPUT.CROP.ENABLED else ""
        if not eval_only and cfg.DATASETS.TRAIN:
            splits.append(("train", _names(cfg.DATASETS.TRAIN), build_dataset_mapper(cfg, True),
                           f"INPUT.MIN_SIZE_TRAIN={tuple(cfg.INPUT.MIN_SIZE_TRAIN)}, "
                           f"INPUT.MAX_SIZE_TRAIN={cfg.INPUT.MAX_SIZE_TRAIN}{crop}"))
        if cfg.DATASETS.TEST:
            splits.append(("test", _names(cfg.DATASETS.TEST), build_dataset_mapper(cfg, False),
                           f"INPUT.MIN_SIZE_TEST={cfg.INPUT.MIN_SIZE_TEST}, INPUT.MAX_SIZE_TEST={cfg.INPUT.MAX_SIZE_TEST}"))
        return splits
    for split in (("test",) if eval_only else ("train", "test")):
        loader = config_value(cfg, f"dataloader.{split}")
        names = _names(config_value(loader, "dataset.names")) if loader is not None else []
        if not names:
            continue
        node = config_value(loader, "mapper")
        mapper = instantiate(node) if node is not None else None
        key = _lazy_augmentations_key(node, f"dataloader.{split}.mapper") if node is not None else ""
        splits.append((split, names, mapper, key))
    return splits


def dataset_uses(cfg, eval_only: bool = False) -> List[DatasetUse]:
    """How the run uses each of its datasets (train ones only when it trains)."""
    keys = model_keys(cfg)
    uses = []
    with _quiet_mapper_logs():
        splits = _splits(cfg, eval_only)
    for split, names, mapper, resize_keys in splits:
        labels_used = split == "test" or (mapper_uses_dataset_labels(mapper) and not keys.encoder_only)
        for name in names:
            uses.append(DatasetUse(name, split, labels_used=labels_used, classes=keys.classes, queries=keys.queries,
                                   augmentations=augmentations_of(mapper), resize_keys=resize_keys))
    return uses


def _summary(reports: List[DatasetReport], seconds: float, loading: float) -> str:
    parts = [f"{r.use.name} ({r.use.split}: {r.images} images, {r.boxes} boxes)" for r in reports]
    checked = ["files exist", "sizes fit the resize"]
    classes = [r.use.classes for r in reports if r.use.classes is not None and r.labelled and r.use.labels_used]
    if classes:
        checked.append(f"classes match {classes[0][0]}={classes[0][1]}")
    most = [(r.max_objects, r.use.queries) for r in reports if r.use.queries is not None and r.use.split == "train"
            and r.use.labels_used]
    if most:
        objects, (key, value) = max(most, key=lambda m: m[0])
        checked.append(f"at most {objects} objects an image for {key}={value}")
    return (f"Input checks passed in {seconds:.2f} s ({loading:.2f} s loading the records): {', '.join(parts)}; "
            f"{', '.join(checked)}")


def run_input_checks(cfg, eval_only: bool = False) -> List[DatasetReport]:
    """Scans the datasets of ``cfg``; raises :class:`InputCheckError` listing every error
    found, logs the warnings, else one summary line. Returns the reports."""
    start = time.perf_counter()
    reports, loading = [], 0.0
    for use in dataset_uses(cfg, eval_only):
        if use.name not in DatasetCatalog.list():
            raise InputCheckError(f"{use.split} dataset '{use.name}' is not registered (DatasetCatalog)")
        loaded = time.perf_counter()
        records = DatasetCatalog.get(use.name)
        loading += time.perf_counter() - loaded
        reports.append(scan_dataset(records, use, MetadataCatalog.get(use.name)))
    errors = [e for r in reports for e in r.errors()]
    for warning in (w for r in reports for w in r.warnings()):
        logger.warning(warning)
    if errors:
        raise InputCheckError("Input checks failed (skip them with --skip-input-checks):\n- " + "\n- ".join(errors))
    if reports:
        logger.info(_summary(reports, time.perf_counter() - start, loading))
    return reports
