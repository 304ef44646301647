"""Small COCO datasets written into a test's folder and registered under unique names, for
the input-check tests."""
import json
import os
import uuid

import numpy as np
from PIL import Image


def write_coco(folder, images, annotations, classes=("thing",), image_files=True):
    """Writes ``instances.json`` (``images``: ``(file, height, width)``; ``annotations``:
    ``(image index, [x, y, w, h], category index)``, ids from 1) and, with
    ``image_files``, a real image per entry of its recorded size. Returns (json, root)."""
    folder = str(folder)
    root = os.path.join(folder, "images")
    os.makedirs(root, exist_ok=True)
    coco = {
        "images": [{"id": i + 1, "file_name": f, "height": h, "width": w} for i, (f, h, w) in enumerate(images)],
        "annotations": [{"id": k + 1, "image_id": i + 1, "bbox": list(box), "category_id": c + 1,
                         "area": float(abs(box[2] * box[3])), "iscrowd": 0}
                        for k, (i, box, c) in enumerate(annotations)],
        "categories": [{"id": c + 1, "name": n} for c, n in enumerate(classes)],
    }
    json_file = os.path.join(folder, "instances.json")
    with open(json_file, "w") as f:
        json.dump(coco, f)
    if image_files:
        for f, h, w in images:
            Image.fromarray(np.full((h, w, 3), 128, np.uint8)).save(os.path.join(root, f))
    return json_file, root


def register(folder, images, annotations, classes=("thing",), image_files=True, prefix="check"):
    """:func:`write_coco`, then ``register_coco_instances`` under a new name; returns it."""
    from detectron2.data.datasets import register_coco_instances

    json_file, root = write_coco(folder, images, annotations, classes, image_files)
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    register_coco_instances(name, {}, json_file, root)
    return name
