"""Users' own COCO-format data: a json of instances and a folder of images, by name.

:func:`register_coco_json` is Detectron2's ``register_coco_instances`` with the checks
a command-line user needs before hours of training start: both paths exist, the json is
COCO instances, and the name does not silently replace another dataset. It is what
``tools/train_net.py --coco-dataset NAME JSON IMAGE_DIR`` calls, in every process.
"""
import json
import os
from typing import Optional

__all__ = ["CocoDatasetError", "coco_json_summary", "register_coco_json"]

COCO_KEYS = ("images", "annotations", "categories")


class CocoDatasetError(ValueError):
    """A COCO dataset given by a user cannot be registered; the message says why."""


def _prefix(name: str, json_file: str, image_root: str, option: Optional[str]) -> str:
    if option:
        return f"{option} {name} {json_file} {image_root}: "
    return f"COCO dataset {name!r}: "


def coco_json_summary(json_file: str) -> dict:
    """Counts of a COCO instances json (``images``, ``annotations``, ``categories``);
    raises :class:`CocoDatasetError` naming the file when it is not one."""
    try:
        with open(json_file, encoding="utf-8") as f:
            data = json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CocoDatasetError(f"'{json_file}' is not a json file ({e})") from None
    missing = [k for k in COCO_KEYS if not isinstance(data, dict) or not isinstance(data.get(k), list)]
    if missing:
        raise CocoDatasetError(
            f"'{json_file}' is not a COCO instances json: it has no {' / '.join(repr(k) for k in missing)} "
            f"list (a COCO json has top-level 'images', 'annotations' and 'categories')"
        )
    return {k: len(data[k]) for k in COCO_KEYS}


def register_coco_json(name: str, json_file: str, image_root: str,
                       option: Optional[str] = None) -> Optional[dict]:
    """Registers ``name`` as the COCO instances in ``json_file`` with images under
    ``image_root`` (Detectron2's ``register_coco_instances``: ``evaluator_type="coco"``,
    classes read from the json's categories when the dataset is loaded).

    Registering the same name with the same files again does nothing, so it is safe in
    every worker process. Errors (:class:`CocoDatasetError`) name ``option`` (the
    command-line flag the values came from, if any) and the file at fault: a missing json
    or image folder, a json that is not COCO, ``name`` already registered with other files.

    Returns the json's counts (:func:`coco_json_summary`), or None when ``name`` was
    already registered with these files (the json is not read again).
    """
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.data.datasets import register_coco_instances

    prefix = _prefix(name, json_file, image_root, option)
    json_file = os.path.abspath(os.path.expanduser(os.fspath(json_file)))
    image_root = os.path.abspath(os.path.expanduser(os.fspath(image_root)))
    if not os.path.isfile(json_file):
        raise CocoDatasetError(prefix + f"the annotation file '{json_file}' does not exist")
    if not os.path.isdir(image_root):
        raise CocoDatasetError(prefix + f"the image folder '{image_root}' does not exist")
    if name in DatasetCatalog.list():
        meta = MetadataCatalog.get(name)
        registered = (meta.get("json_file", None), meta.get("image_root", None))
        if registered != (json_file, image_root):
            raise CocoDatasetError(
                prefix + f"the name is already registered with json_file={registered[0]!r}, "
                f"image_root={registered[1]!r}; choose another name"
            )
        return None
    try:
        summary = coco_json_summary(json_file)
    except CocoDatasetError as e:
        raise CocoDatasetError(prefix + str(e)) from None
    register_coco_instances(name, {}, json_file, image_root)
    return summary
