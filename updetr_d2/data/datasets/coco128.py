"""coco128: 128 real COCO train2017 images with instance and panoptic labels.

The project's CI keeps this set in ``../shared/data/coco128`` beside the
checkout (see its README.md); users point ``UPDETR_COCO128`` at their own copy.

Datasets registered by :func:`register_coco128`:

==========================  ===========================================  ======
name                        annotations                                  images
==========================  ===========================================  ======
``coco128_train``           ``annotations/instances_train.json``             96
``coco128_val``             ``annotations/instances_val.json``               32
``coco128_all``             ``annotations/instances.json``                  128
``coco128_panoptic_train``  ``annotations/panoptic_train.json``              75
``coco128_panoptic_val``    ``annotations/panoptic_val.json``                25
==========================  ===========================================  ======

Images are in ``images/``, panoptic PNGs in ``annotations/panoptic/``.
"""
import os
from pathlib import Path
from typing import List, Optional

__all__ = [
    "ENV_VAR",
    "INSTANCES_SPLITS",
    "PANOPTIC_SPLITS",
    "coco128_available",
    "coco128_root",
    "register_coco128",
]

ENV_VAR = "UPDETR_COCO128"

# dataset name -> instances json, relative to the root
INSTANCES_SPLITS = {
    "coco128_train": "annotations/instances_train.json",
    "coco128_val": "annotations/instances_val.json",
    "coco128_all": "annotations/instances.json",
}
# dataset name -> (panoptic json, instances json), relative to the root
PANOPTIC_SPLITS = {
    "coco128_panoptic_train": (
        "annotations/panoptic_train.json",
        "annotations/instances_train.json",
    ),
    "coco128_panoptic_val": ("annotations/panoptic_val.json", "annotations/instances_val.json"),
}
IMAGE_DIR = "images"
PANOPTIC_DIR = "annotations/panoptic"


def _candidate_roots() -> List[str]:
    import updetr_d2

    repo_root = Path(updetr_d2.__file__).resolve().parents[1]
    return [
        os.path.normpath(os.path.join(repo_root, "..", "shared", "data", "coco128")),
        os.path.abspath(os.path.join(os.curdir, "..", "shared", "data", "coco128")),
    ]


def coco128_root() -> str:
    """Where coco128 is: ``$UPDETR_COCO128`` if set, else the first existing of
    ``<repo root>/../shared/data/coco128`` and ``./../shared/data/coco128``
    (relative to the working directory), else the first of those (so that
    errors name it)."""
    env = os.environ.get(ENV_VAR)
    if env:
        return os.path.expanduser(env)
    candidates = _candidate_roots()
    for c in candidates:
        if os.path.isdir(c):
            return c
    return candidates[0]


def _required_paths(root: str) -> List[str]:
    rel = [IMAGE_DIR, PANOPTIC_DIR, *INSTANCES_SPLITS.values()]
    rel += [p for p, _ in PANOPTIC_SPLITS.values()]
    return [os.path.join(root, r) for r in rel]


def coco128_available(root: Optional[str] = None) -> bool:
    """Whether ``root`` (default: :func:`coco128_root`) holds the images folder,
    the panoptic PNG folder and all the json files the datasets use."""
    root = coco128_root() if root is None else os.fspath(root)
    return all(os.path.exists(p) for p in _required_paths(root))


def _missing_error(name: str, root: str, path: str) -> FileNotFoundError:
    what = "folder" if path == root else "file"
    return FileNotFoundError(
        f"Dataset '{name}' needs the coco128 data, but the {what} '{path}' does not exist "
        f"(coco128 root: '{root}'). Set the {ENV_VAR} environment variable to a coco128 "
        "folder (images/ and annotations/, as in the project's shared/data/coco128)."
    )


def _guard(name: str, root: str, needed: List[str], load):
    """Wraps a registered loader so that missing data raises a clear error."""

    def guarded():
        for path in [root, *needed]:
            if not os.path.exists(path):
                raise _missing_error(name, root, path)
        return load()

    return guarded


def register_coco128(root: Optional[str] = None) -> List[str]:
    """Registers the coco128 datasets (see the module doc) in Detectron2's catalogs.

    Names that are already registered are left as they are, so calling this
    twice is harmless. Nothing under ``root`` is read (only
    :func:`coco128_root`, when ``root`` is None, checks which candidate folder
    exists); loading a dataset whose files are missing raises
    ``FileNotFoundError`` naming the path and ``UPDETR_COCO128``.

    Returns:
        the names registered by this call.
    """
    from detectron2.data import DatasetCatalog
    from detectron2.data.datasets import register_coco_instances, register_coco_panoptic
    from detectron2.data.datasets.builtin_meta import _get_builtin_metadata

    root = coco128_root() if root is None else os.fspath(root)
    image_root = os.path.join(root, IMAGE_DIR)
    registered = []

    for name, rel_json in INSTANCES_SPLITS.items():
        if name in DatasetCatalog:
            continue
        json_file = os.path.join(root, rel_json)
        # the builtin COCO metadata gives the 80 thing classes and colors before
        # loading; load_coco_json then sets the same values from the json
        register_coco_instances(name, _get_builtin_metadata("coco"), json_file, image_root)
        _wrap_registered(name, _guard(name, root, [json_file, image_root], DatasetCatalog[name]))
        registered.append(name)

    panoptic_root = os.path.join(root, PANOPTIC_DIR)
    for name, (rel_panoptic_json, rel_instances_json) in PANOPTIC_SPLITS.items():
        if name in DatasetCatalog:
            continue
        panoptic_json = os.path.join(root, rel_panoptic_json)
        register_coco_panoptic(
            name,
            _get_builtin_metadata("coco_panoptic_standard"),
            image_root,
            panoptic_root,
            panoptic_json,
            os.path.join(root, rel_instances_json),
        )
        _wrap_registered(
            name,
            _guard(name, root, [panoptic_json, image_root, panoptic_root], DatasetCatalog[name]),
        )
        registered.append(name)
    return registered


def _wrap_registered(name, func):
    from detectron2.data import DatasetCatalog

    DatasetCatalog.remove(name)
    DatasetCatalog.register(name, func)
