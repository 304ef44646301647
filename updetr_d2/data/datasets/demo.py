"""Generated demo data: textured shapes ("things") on sky/ground backgrounds ("stuff").

No download: it is made on first use in a few seconds, byte-identical on every run.
:func:`register_demo_datasets` registers ``{prefix}_train`` / ``_val`` (COCO instances,
192 / 16 images), ``{prefix}_panoptic_train`` / ``_val`` (COCO panoptic, same images) and
``{prefix}_unlabeled`` (32 images), with ``prefix="updetr_demo"``. Files under
:func:`demo_root` (``$UPDETR_DEMO_ROOT``, else ``~/.cache/updetr_d2/demo_v2``)::

    images/{split}/000000.png                 split: train, val, unlabeled
    annotations/instances_{split}.json        COCO instances (train, val)
    annotations/panoptic_{split}.json         COCO panoptic, with PNGs in panoptic_{split}/
    annotations/image_info_unlabeled.json     image sizes only
    .complete                                 written last: the dataset is whole

Determinism: each image has its own numpy ``Generator`` seeded by (split seed, index), and
pixels come from integer arithmetic and elementwise float + - * / only (no transcendental
functions, reductions or BLAS, whose last bits may differ between CPUs), so the bytes
depend only on the numpy and OpenCV (PNG/zlib) versions.
"""
import argparse
import json
import math
import os
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, List, Optional

import cv2
import numpy as np

__all__ = ["DEMO_THING_CLASSES", "DEMO_STUFF_CLASSES", "ENV_VAR", "demo_root",
           "ensure_demo_dataset", "register_demo_datasets"]

DEMO_THING_CLASSES = ["circle", "square", "triangle", "star"]
DEMO_STUFF_CLASSES = ["sky", "ground"]
DEMO_THING_COLORS = [[220, 20, 60], [0, 114, 189], [237, 177, 32], [119, 172, 48]]
DEMO_STUFF_COLORS = [[135, 206, 235], [139, 105, 60]]
ENV_VAR = "UPDETR_DEMO_ROOT"
# v2: 192 train images (v1: 32, the first 32 of v2), enough for a detector to generalise
# to the val images within the demo's minutes; val and unlabeled are unchanged.
VERSION = "demo_v2"
MARKER = ".complete"

SPLITS = {"train": (192, 1001), "val": (16, 2002), "unlabeled": (32, 3003)}  # (images, seed)
LABELED_SPLITS = ("train", "val")
_SIZES = [(320, 256), (256, 320), (320, 240), (288, 288)]  # (width, height)
_EMPTY_TRAIN_IMAGE = 3  # train image drawn without shapes: loaders must cope with it
_MIN_AREA = 64  # visible pixels a kept shape needs ...
_MIN_VISIBLE = 0.35  # ... and the fraction of it that must stay unoccluded
_DIRECTIONS = [(1, 0), (0, 1), (1, 1), (1, -1), (2, 1), (1, 2), (2, -1), (1, -2)]


# ----------------------------------------------------------------------------- pixels
def _value_noise(rng, h: int, w: int, cell_h: float, cell_w: float) -> np.ndarray:
    """Smooth noise in [0, 1]: a random grid, bilinearly upsampled by gathers (no BLAS)."""
    grid = rng.random((int(h / cell_h) + 2, int(w / cell_w) + 2), dtype=np.float32)
    y = np.arange(h, dtype=np.float32) / np.float32(cell_h)
    x = np.arange(w, dtype=np.float32) / np.float32(cell_w)
    fy, fx = (y - np.floor(y))[:, None], (x - np.floor(x))[None, :]
    y0, x0 = y.astype(np.int64), x.astype(np.int64)
    top = grid[y0][:, x0] * (1 - fx) + grid[y0][:, x0 + 1] * fx
    bottom = grid[y0 + 1][:, x0] * (1 - fx) + grid[y0 + 1][:, x0 + 1] * fx
    return top * (1 - fy) + bottom * fy


def _fractal_noise(rng, h: int, w: int, cell_h: float, cell_w: float, octaves: int = 4):
    """Octaves of value noise, each half the cell size and half the weight."""
    out, total = np.zeros((h, w), np.float32), 0.0
    for k in range(octaves):
        weight = 0.5**k
        out = out + weight * _value_noise(rng, h, w, cell_h / 2**k, cell_w / 2**k)
        total += weight
    return out / total


def _mix(c1, c2, t: np.ndarray) -> np.ndarray:
    """Per-pixel blend of two RGB colours, t in [0, 1] of shape (H, W)."""
    c1 = np.asarray(c1, np.float32)
    return c1 + (np.asarray(c2, np.float32) - c1) * t[..., None]


def _background(rng, h: int, w: int):
    """Sky gradient with clouds over a fractal ground, split by a hilly horizon.

    Returns the RGB float image and the sky mask.
    """
    ys = np.arange(h, dtype=np.float32)[:, None]
    # Horizon: a few random heights joined by straight lines, i.e. gentle hills.
    knots = rng.uniform(0.3, 0.65) * h + rng.uniform(-0.06, 0.06, 6) * h
    horizon = np.round(np.interp(np.arange(w), np.linspace(0, w - 1, 6), knots))
    horizon = horizon.astype(np.float32)[None, :]
    sky = ys < horizon
    zenith = rng.choice([[40, 90, 180], [20, 50, 120], [90, 140, 200]]) + rng.integers(-20, 21, 3)
    haze = rng.choice([[200, 225, 245], [240, 200, 150], [215, 215, 220]])
    haze = (haze + rng.integers(-15, 16, 3)).astype(np.float32)  # pale sky at the horizon
    cover = np.clip((_fractal_noise(rng, h, w, 40, 90) - rng.uniform(0.45, 0.65)) * 4, 0, 1)
    # Ground: stretched noise (flat land seen at a low angle), hazier towards the horizon.
    soil = rng.choice([[80, 120, 45], [150, 120, 70], [200, 180, 130], [110, 105, 100]])
    soil = soil + rng.integers(-20, 21, 3)
    coarse, fine = _fractal_noise(rng, h, w, 24, 72), _value_noise(rng, h, w, 2, 4)
    depth = np.clip((ys - horizon) / (h - horizon + 1), 0, 1)  # 0 at horizon, 1 at bottom
    shade = 0.55 + 0.7 * coarse + 0.3 * depth * (fine - 0.5)
    fog = np.clip(0.6 - 2.5 * depth, 0, 1)
    sky_rgb = _mix(zenith, haze, np.clip(ys / horizon, 0, 1))
    sky_rgb += (245 - sky_rgb) * cover[..., None]
    ground = np.asarray(soil, np.float32) * shade[..., None]
    ground += (haze - ground) * fog[..., None]
    return np.where(sky[..., None], sky_rgb, ground), sky


def _texture(rng, box) -> np.ndarray:
    """An RGB float texture for the box ``(x0, y0, x1, y1)``: solid, stripes, checker,
    noise or gradient. Patterns use image coordinates; the gradient spans the box."""
    x0, y0, x1, y1 = box
    h, w = y1 - y0, x1 - x0
    ys, xs = np.mgrid[y0:y1, x0:x1]
    c1 = rng.integers(0, 256, 3)
    c2 = rng.integers(0, 256, 3) if rng.random() < 0.6 else c1 // 3  # other colour or darker
    kind = int(rng.integers(5))
    if kind == 0:
        t = np.zeros((h, w), np.float32)
    elif kind == 1:
        a, b = _DIRECTIONS[int(rng.integers(len(_DIRECTIONS)))]
        t = ((a * xs + b * ys) // int(rng.integers(4, 12)) % 2).astype(np.float32)
    elif kind == 2:
        s = int(rng.integers(4, 12))
        t = ((xs // s + ys // s) % 2).astype(np.float32)
    elif kind == 3:
        t = _fractal_noise(rng, h, w, rng.uniform(4, 12), rng.uniform(4, 12), octaves=2)
    else:  # along x, y or the diagonal (random colours make either way round equally likely)
        a, b = _DIRECTIONS[int(rng.integers(3))]
        t = np.clip((a * (xs - x0) + b * (ys - y0)) / max(1, a * w + b * h), 0, 1)
        t = t.astype(np.float32)
    return _mix(c1, c2, t)


# ----------------------------------------------------------------------------- shapes
def _shape_mask(rng, kind: int, h: int, w: int, near=None):
    """A filled shape (bool mask, centre), centred at random or ``near`` a given point."""
    size = rng.uniform(26, 0.42 * min(h, w))
    if near is None:
        cx, cy = rng.uniform(0.05 * w, 0.95 * w), rng.uniform(0.05 * h, 0.95 * h)
    else:
        cx, cy = near[0] + rng.uniform(-0.6, 0.6) * size, near[1] + rng.uniform(-0.6, 0.6) * size
    mask = np.zeros((h, w), np.uint8)
    if DEMO_THING_CLASSES[kind] == "circle":
        cv2.circle(mask, (round(cx), round(cy)), round(size / 2), 1, thickness=-1)
        return mask.astype(bool), (cx, cy)
    rot = rng.uniform(0, 2 * math.pi)
    if DEMO_THING_CLASSES[kind] == "square":
        polar = [(size / math.sqrt(2), k * math.pi / 2) for k in range(4)]
    elif DEMO_THING_CLASSES[kind] == "triangle":
        polar = [(size * rng.uniform(0.5, 0.65), k * 2 * math.pi / 3 + rng.uniform(-0.3, 0.3))
                 for k in range(3)]
    else:  # five-pointed star: alternate outer and inner radius
        inner = rng.uniform(0.4, 0.55)
        polar = [(size / 2 * (1 if k % 2 == 0 else inner), k * math.pi / 5) for k in range(10)]
    # Vertices are rounded to whole pixels, so the libm's last bit cannot matter.
    pts = [(round(cx + r * math.cos(a + rot)), round(cy + r * math.sin(a + rot))) for r, a in polar]
    cv2.fillPoly(mask, [np.array(pts, np.int32)], 1)
    return mask.astype(bool), (cx, cy)


def _layout_ok(ids: np.ndarray, full_areas: List[int]) -> bool:
    """Every shape keeps enough visible pixels, and no hole (a shape on top of another,
    strictly inside it), since COCO polygons cannot describe holes."""
    for k, full in enumerate(full_areas, 1):
        visible = (ids == k).astype(np.uint8)
        area = int(np.count_nonzero(visible))
        if area < _MIN_AREA or area < _MIN_VISIBLE * full:
            return False
        _, hierarchy = cv2.findContours(visible, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
        if (hierarchy[0][:, 3] != -1).any():  # a contour with a parent bounds a hole
            return False
    return True


def _place_shapes(rng, h: int, w: int, count: int):
    """Adds shapes one at a time, later ones on top; a candidate that would leave any
    shape too occluded, too small or holed is redrawn. Returns (id map, class indices):
    ``ids[y, x] = k`` when shape k (1-based) is visible there, 0 for background."""
    ids, kinds, full_areas, centres = np.zeros((h, w), np.int32), [], [], []
    for _ in range(count):
        for _attempt in range(20):
            kind = int(rng.integers(len(DEMO_THING_CLASSES)))
            near = None
            if centres and rng.random() < 0.4:  # overlap an earlier shape, for occlusion
                near = centres[int(rng.integers(len(centres)))]
            mask, centre = _shape_mask(rng, kind, h, w, near)
            candidate = np.where(mask, len(kinds) + 1, ids).astype(np.int32)
            if _layout_ok(candidate, full_areas + [int(np.count_nonzero(mask))]):
                ids = candidate
                kinds.append(kind)
                full_areas.append(int(np.count_nonzero(mask)))
                centres.append(centre)
                break
    return ids, kinds


# ----------------------------------------------------------------------------- export
def _bbox(mask: np.ndarray) -> List[int]:
    """Tight COCO box [x, y, w, h] of a non-empty mask, in whole pixels."""
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    return [int(cols[0]), int(rows[0]), int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1)]


def _polygons(mask: np.ndarray) -> List[List[float]]:
    """COCO polygons of a hole-free mask. Contours traced on the 2x-upsampled mask put
    the vertices 1/4 px inside the pixel edges, so pycocotools rasterises them back to
    exactly this mask (contours through pixel centres would lose half a pixel all round)."""
    up = mask.astype(np.uint8).repeat(2, 0).repeat(2, 1)
    contours, _ = cv2.findContours(up, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    return [((c.reshape(-1) + 0.5) / 2).tolist() for c in contours if len(c) >= 3]


def _make_image(split: str, index: int, seed: int):
    """One image: RGB uint8, shape id map, shape class indices, sky mask."""
    rng = np.random.default_rng([seed, index])
    w, h = _SIZES[int(rng.integers(len(_SIZES)))]
    image, sky = _background(rng, h, w)
    empty = split == "train" and index == _EMPTY_TRAIN_IMAGE
    ids, kinds = _place_shapes(rng, h, w, 0 if empty else int(rng.integers(1, 7)))
    for k in range(1, len(kinds) + 1):
        x, y, bw, bh = _bbox(ids == k)
        crop = (slice(y, y + bh), slice(x, x + bw))
        visible = (ids[crop] == k)[..., None]
        image[crop] = np.where(visible, _texture(rng, (x, y, x + bw, y + bh)), image[crop])
    grain = rng.integers(-4, 5, (h, w, 1))  # sensor-like noise, integers only
    image = np.clip(np.rint(image).astype(np.int64) + grain, 0, 255).astype(np.uint8)
    return image, ids, kinds, sky


def _categories(with_stuff: bool) -> List[Dict]:
    """COCO categories: things get ids 1..K, stuff (panoptic only) K+1.. after them."""
    names = DEMO_THING_CLASSES + (DEMO_STUFF_CLASSES if with_stuff else [])
    colors = DEMO_THING_COLORS + DEMO_STUFF_COLORS
    return [{"id": i + 1, "name": n, "isthing": int(n in DEMO_THING_CLASSES), "color": colors[i],
             "supercategory": "shape" if n in DEMO_THING_CLASSES else "background"}
            for i, n in enumerate(names)]


def _write_json(path: str, obj) -> None:
    with open(path, "w") as f:
        f.write(json.dumps(obj, separators=(",", ":")))  # dumps: C encoder, dump: pure Python


def _export_image(tmp: str, split: str, index: int):
    """Draws image ``index`` of ``split`` and writes its PNGs. Returns its COCO image
    entry, its instance annotations (ids assigned later) and its panoptic entry."""
    image, ids, kinds, sky = _make_image(split, index, SPLITS[split][1])
    (h, w), name = ids.shape, f"{index:06d}.png"
    png = [cv2.IMWRITE_PNG_COMPRESSION, 3]
    cv2.imwrite(os.path.join(tmp, "images", split, name), image[..., ::-1], png)
    entry = {"id": index + 1, "file_name": name, "width": w, "height": h}
    if split not in LABELED_SPLITS:
        return entry, [], None
    # Panoptic segment ids: shape k keeps id k; sky and ground follow.
    instances, segments, pan = [], [], ids.copy()
    for k, kind in enumerate(kinds, 1):
        visible = ids == k
        common = {"category_id": kind + 1, "area": int(np.count_nonzero(visible)),
                  "bbox": _bbox(visible), "iscrowd": 0}
        instances.append({"image_id": index + 1, **common, "segmentation": _polygons(visible)})
        segments.append({"id": k, **common})
    for j, region in enumerate((sky & (ids == 0), ~sky & (ids == 0))):
        if region.any():
            sid, cid = len(kinds) + 1 + j, len(DEMO_THING_CLASSES) + 1 + j
            pan[region] = sid
            segments.append({"id": sid, "category_id": cid, "area": int(np.count_nonzero(region)),
                             "bbox": _bbox(region), "iscrowd": 0})
    rgb = np.stack([pan % 256, pan // 256 % 256, pan // 65536], -1).astype(np.uint8)
    cv2.imwrite(os.path.join(tmp, "annotations", f"panoptic_{split}", name), rgb[..., ::-1], png)
    return entry, instances, {"image_id": index + 1, "file_name": name, "segments_info": segments}


def _generate_split(tmp: str, split: str, pool: ThreadPoolExecutor) -> None:
    """Writes one split's images and, for labeled splits, its instances and panoptic files.
    Images are made in parallel; each has its own seed, so the result does not depend on it."""
    os.makedirs(os.path.join(tmp, "images", split))
    if split in LABELED_SPLITS:
        os.makedirs(os.path.join(tmp, "annotations", f"panoptic_{split}"))
    made = list(pool.map(lambda i: _export_image(tmp, split, i), range(SPLITS[split][0])))
    images = [entry for entry, _, _ in made]
    info = {"description": f"updetr_d2 generated demo data ({VERSION}), split {split}"}
    ann_dir = os.path.join(tmp, "annotations")
    if split not in LABELED_SPLITS:
        _write_json(os.path.join(ann_dir, f"image_info_{split}.json"),
                    {"info": info, "images": images, "categories": _categories(False)})
        return
    instances = [dict(id=i, **a) for i, a in enumerate((a for _, anns, _ in made for a in anns), 1)]
    _write_json(os.path.join(ann_dir, f"instances_{split}.json"),
                {"info": info, "licenses": [], "images": images, "annotations": instances,
                 "categories": _categories(False)})
    _write_json(os.path.join(ann_dir, f"panoptic_{split}.json"),
                {"info": info, "licenses": [], "images": images,
                 "annotations": [pan for _, _, pan in made], "categories": _categories(True)})


# ----------------------------------------------------------------------------- API
def demo_root(root: Optional[str] = None) -> str:
    """The dataset folder: ``root``, else ``$UPDETR_DEMO_ROOT``, else
    ``~/.cache/updetr_d2/demo_v2``, made absolute."""
    root = root or os.environ.get(ENV_VAR) or os.path.join("~", ".cache", "updetr_d2", VERSION)
    return os.path.abspath(os.path.expanduser(os.fspath(root)))


def ensure_demo_dataset(root: Optional[str] = None) -> str:
    """Generates the dataset in ``root`` (see :func:`demo_root`) unless it is there; returns it.

    It is written into a temporary folder beside ``root`` that is renamed to ``root`` at
    the end, so an interrupted run leaves no half-made dataset, and concurrent runs (e.g.
    one per GPU) all end up with one complete copy.
    """
    root = demo_root(root)
    marker = os.path.join(root, MARKER)
    if os.path.isfile(marker):
        return root
    if os.path.isdir(root) and os.listdir(root) and not os.path.isfile(marker):
        raise RuntimeError(f"{root} exists but holds no complete demo dataset (no {MARKER} "
                           "file); remove it or choose another root.")
    os.makedirs(os.path.dirname(root), exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(root)}.tmp", dir=os.path.dirname(root))
    try:
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; the dataset is not
        os.makedirs(os.path.join(tmp, "annotations"))
        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
            for split in SPLITS:
                _generate_split(tmp, split, pool)
        with open(os.path.join(tmp, MARKER), "w") as f:
            f.write(VERSION + "\n")
        try:
            if os.path.isdir(root):
                os.rmdir(root)  # an empty folder (e.g. a fresh temp dir) is replaced
            os.rename(tmp, root)
        except OSError:
            if not os.path.isfile(marker):  # else another process finished first: fine
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def _split_paths(root: str, split: str) -> Dict[str, str]:
    return {
        "image_root": os.path.join(root, "images", split),
        "json_file": os.path.join(root, "annotations", f"instances_{split}.json"),
        "panoptic_json": os.path.join(root, "annotations", f"panoptic_{split}.json"),
        "panoptic_root": os.path.join(root, "annotations", f"panoptic_{split}"),
    }


def _load_instances(root: str, split: str, name: str) -> List[Dict]:
    from detectron2.data.datasets import load_coco_json

    ensure_demo_dataset(root)
    paths = _split_paths(root, split)
    return load_coco_json(paths["json_file"], paths["image_root"], name)


def _load_panoptic(root: str, split: str, meta: Dict) -> List[Dict]:
    """The records ``detectron2.data.datasets.coco_panoptic.load_coco_panoptic_json``
    makes (plus height/width); that function assumes ``.jpg`` images, ours are PNG."""
    ensure_demo_dataset(root)
    paths = _split_paths(root, split)
    with open(paths["panoptic_json"]) as f:
        data = json.load(f)
    images = {im["id"]: im for im in data["images"]}
    things = meta["thing_dataset_id_to_contiguous_id"]
    stuff = meta["stuff_dataset_id_to_contiguous_id"]
    records = []
    for ann in data["annotations"]:
        image = images[ann["image_id"]]
        segments = [dict(s, category_id=things.get(s["category_id"], stuff.get(s["category_id"])),
                         isthing=s["category_id"] in things) for s in ann["segments_info"]]
        records.append({
            "file_name": os.path.join(paths["image_root"], image["file_name"]),
            "image_id": image["id"], "height": image["height"], "width": image["width"],
            "pan_seg_file_name": os.path.join(paths["panoptic_root"], ann["file_name"]),
            "segments_info": segments,
        })
    return records


def _load_unlabeled(root: str) -> List[Dict]:
    ensure_demo_dataset(root)
    with open(os.path.join(root, "annotations", "image_info_unlabeled.json")) as f:
        images = json.load(f)["images"]
    image_root = os.path.join(root, "images", "unlabeled")
    return [{"file_name": os.path.join(image_root, im["file_name"]), "image_id": im["id"],
             "height": im["height"], "width": im["width"]} for im in images]


def register_demo_datasets(root: Optional[str] = None, prefix: str = "updetr_demo") -> List[str]:
    """Registers the five ``{prefix}_*`` datasets (see the module docstring) and
    returns their names. Nothing is generated now: each loader calls
    :func:`ensure_demo_dataset` when ``DatasetCatalog.get(name)`` first runs. The root
    is resolved now, so set ``$UPDETR_DEMO_ROOT`` before registering. Names already
    registered are left alone."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    root = demo_root(root)
    n_things = len(DEMO_THING_CLASSES)
    thing_ids = {i + 1: i for i in range(n_things)}
    # As Detectron2's "coco_panoptic_standard": stuff follows things in one contiguous range.
    stuff_ids = {n_things + i + 1: n_things + i for i in range(len(DEMO_STUFF_CLASSES))}
    datasets = {}
    for split in LABELED_SPLITS:
        paths = _split_paths(root, split)
        name = f"{prefix}_{split}"
        datasets[name] = (
            lambda split=split, name=name: _load_instances(root, split, name),
            dict(thing_classes=list(DEMO_THING_CLASSES), thing_colors=DEMO_THING_COLORS,
                 thing_dataset_id_to_contiguous_id=thing_ids, json_file=paths["json_file"],
                 image_root=paths["image_root"], evaluator_type="coco"),
        )
        meta = dict(
            thing_classes=list(DEMO_THING_CLASSES), thing_colors=DEMO_THING_COLORS,
            stuff_classes=DEMO_THING_CLASSES + DEMO_STUFF_CLASSES,
            stuff_colors=DEMO_THING_COLORS + DEMO_STUFF_COLORS,
            thing_dataset_id_to_contiguous_id=thing_ids,
            stuff_dataset_id_to_contiguous_id=stuff_ids,
            evaluator_type="coco_panoptic_seg", ignore_label=255, label_divisor=1000, **paths,
        )
        datasets[f"{prefix}_panoptic_{split}"] = (
            lambda split=split, meta=meta: _load_panoptic(root, split, meta), meta)
    datasets[f"{prefix}_unlabeled"] = (
        lambda: _load_unlabeled(root),
        dict(thing_classes=[], image_root=os.path.join(root, "images", "unlabeled")),
    )
    for name, (loader, meta) in datasets.items():
        if name not in DatasetCatalog.list():
            DatasetCatalog.register(name, loader)
            MetadataCatalog.get(name).set(**meta)
    return list(datasets)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Generate the updetr_d2 demo dataset.")
    parser.add_argument("--root", default=None, help=f"target folder (default: ${ENV_VAR} "
                        "or ~/.cache/updetr_d2/demo_v2)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    root = ensure_demo_dataset(args.root)
    print(f"demo dataset: {root} (ready in {time.perf_counter() - start:.2f} s)")
    for split in SPLITS:
        line = f"  {split}: {len(os.listdir(os.path.join(root, 'images', split)))} images"
        if split in LABELED_SPLITS:
            with open(_split_paths(root, split)["json_file"]) as f:
                line += f", {len(json.load(f)['annotations'])} objects"
        print(line)


if __name__ == "__main__":
    main()
