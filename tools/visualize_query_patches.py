#!/usr/bin/env python
"""Draw what an UP-DETR pretraining model does with random query patches.

    python tools/visualize_query_patches.py --config-file projects/UPDETR/configs/updetr_R18_demo_pretrain.yaml \
        --input path/to/images_or_folder --output vis/ --num-patches 4 --seed 0 MODEL.WEIGHTS model_final.pth

For each image, ``QueryPatchDatasetMapper`` (test-time resize ``INPUT.MIN_SIZE_TEST``/
``MAX_SIZE_TEST``, no patch augmentation, fixed ``--seed``) samples ``--num-patches``
query patches, and the model (eval mode) looks for them. The model's queries stay grouped
for the ``INPUT.QUERY_PATCH.NUM_PATCHES`` patches it was built (and trained) with, so
``--num-patches`` may be fewer, never more: patch k is looked for by group k, and the
groups without a patch are not decoded (as the original code at test time). The PNG
written to ``OUTPUT/<image name>.png`` shows, one colour per patch k:

* the box where patch k was cut: thin dashed outline;
* the best-scoring query of patch k's group: thick solid outline labelled ``k: score``;
* the patch crops (as the model saw them, ``INPUT.QUERY_PATCH.SIZE`` pixels, shrunk to
  fit) in a strip above the image, framed in their colour (``--no-thumbnails``: none).

Everything is drawn in original-image pixels. Output size: the input image's width, and
its height plus the strip's height (:func:`thumbnail_layout`; 0 with ``--no-thumbnails``).
Folders are searched recursively for the extensions of ``updetr_d2.data.IMAGE_EXTENSIONS``;
an unreadable image is skipped with a warning, and the skipped files are counted at the end.
"""
import argparse
import math
import os
import sys
from typing import Dict, List

import cv2
import numpy as np
import torch

import updetr_d2  # noqa: F401  (compat fixes and registration, before Detectron2 is used)
from updetr_d2.checkpoint import DetrCheckpointer
from detectron2.modeling import build_model
from detectron2.utils.colormap import colormap
from detectron2.utils.visualizer import Visualizer
from updetr_d2.config import load_yaml_config
from updetr_d2.data.image_files import describe_skipped, list_input_images, try_read_image
from updetr_d2.data.images import read_image
from updetr_d2.methods.updetr import QueryPatchDatasetMapper

GAP = 4  # pixels around the thumbnails
MAX_THUMB = 96  # largest thumbnail side
MIN_THUMB = 16  # smallest thumbnail side (thumbnails wrap to more rows below it)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True, metavar="FILE", help="an UP-DETR pretraining yaml config")
    parser.add_argument("--input", required=True, nargs="+", help="image files and/or folders (searched recursively)")
    parser.add_argument("--output", required=True, help="folder for the PNGs")
    parser.add_argument("--num-patches", type=int, default=None,
                        help="query patches per image, at most (and by default) INPUT.QUERY_PATCH.NUM_PATCHES")
    parser.add_argument("--seed", type=int, default=0, help="patch sampling seed (per image, as the mapper)")
    parser.add_argument("--no-thumbnails", action="store_true", help="do not add the patch crops strip")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ...")
    return parser.parse_args(argv)


def setup_cfg(args):
    cfg = load_yaml_config(args.config_file, args.opts)
    cfg.freeze()
    return cfg


def thumbnail_layout(width: int, num_patches: int, patch_size: int) -> Dict[str, int]:
    """Thumbnail side, columns, rows and the strip's height for an image ``width`` wide."""
    side = min(patch_size, MAX_THUMB, max(MIN_THUMB, (width - GAP * (num_patches + 1)) // max(num_patches, 1)))
    side = max(1, min(side, width - 2 * GAP))
    cols = max(1, min(num_patches, (width - GAP) // (side + GAP)))
    rows = math.ceil(num_patches / cols)
    return {"side": side, "cols": cols, "rows": rows, "height": rows * (side + GAP) + GAP}


def build_mapper(cfg, num_patches: int, seed: int) -> QueryPatchDatasetMapper:
    """The pretraining mapper with the test-time resize, no augmentation and a fixed seed."""
    kwargs = QueryPatchDatasetMapper.from_config(cfg, is_train=False)
    kwargs.update(num_patches=num_patches, patch_augment=False, seed=seed)
    return QueryPatchDatasetMapper(**kwargs)


def best_per_patch(instances, num_patches: int):
    """For each patch k: (box XYXY, score) of the top-scoring query of its group, or None."""
    boxes = instances.pred_boxes.tensor.cpu()
    scores = instances.scores.cpu()
    groups = instances.pred_classes.cpu()
    best = []
    for k in range(num_patches):
        idx = torch.nonzero(groups == k).flatten()
        if len(idx) == 0:
            best.append(None)
            continue
        i = idx[scores[idx].argmax()]
        best.append((boxes[i].tolist(), float(scores[i])))
    return best


def draw(image_rgb: np.ndarray, patch_boxes, best, patches_rgb, thumbnails: bool = True):
    """The visualisation (RGB uint8) and the strip height above the image."""
    h, w = image_rgb.shape[:2]
    num = len(patch_boxes)
    layout = thumbnail_layout(w, num, patches_rgb.shape[1]) if thumbnails and num else None
    offset = layout["height"] if layout else 0
    canvas = np.full((h + offset, w, 3), 255, dtype=np.uint8)
    canvas[offset:] = image_rgb
    if layout:
        side = layout["side"]
        for k, patch in enumerate(patches_rgb):
            r, c = divmod(k, layout["cols"])
            x, y = GAP + c * (side + GAP), GAP + r * (side + GAP)
            canvas[y:y + side, x:x + side] = cv2.resize(patch, (side, side), interpolation=cv2.INTER_AREA)
    colors = colormap(rgb=True, maximum=1)
    vis = Visualizer(canvas)
    font = vis._default_font_size
    thin, thick = max(1.0, font / 6), max(2.5, font / 3)
    import matplotlib.patches as mpatches

    def rect(box, color, lw, style):
        x0, y0, x1, y1 = box
        vis.output.ax.add_patch(mpatches.Rectangle((x0, y0 + offset), x1 - x0, y1 - y0, fill=False,
                                                   edgecolor=color, linewidth=lw, linestyle=style))

    for k, box in enumerate(patch_boxes):
        color = colors[k % len(colors)]
        rect(box, color, thin, (0, (4, 2)))
        if best[k] is not None:
            bbox, score = best[k]
            rect(bbox, color, thick, "-")
            vis.draw_text(f"{k}: {score:.2f}", (bbox[0], bbox[1] + offset), color=color,
                          horizontal_alignment="left", font_size=font * 0.8)
        if layout:
            side = layout["side"]
            r, c = divmod(k, layout["cols"])
            x, y = GAP + c * (side + GAP), GAP + r * (side + GAP)
            vis.output.ax.add_patch(mpatches.Rectangle((x - 1, y - 1), side + 2, side + 2, fill=False,
                                                       edgecolor=color, linewidth=2))
            vis.draw_text(str(k), (x + 1, y + 1), color=color, horizontal_alignment="left",
                          font_size=max(6, font * 0.7))
    out = vis.output.get_image()
    if out.shape[:2] != canvas.shape[:2]:  # matplotlib rounding: keep the documented size
        out = cv2.resize(out, (canvas.shape[1], canvas.shape[0]), interpolation=cv2.INTER_NEAREST)
    return out, offset


def visualize_file(model, mapper, file_name: str, image_id: int = 0, thumbnails: bool = True,
                   image: np.ndarray = None) -> Dict:
    """Runs mapper and model on one image; returns the drawing and what it shows. ``image``:
    the file already read (RGB), or None to read it here."""
    data = mapper({"file_name": file_name, "image_id": image_id})
    h, w = data["height"], data["width"]
    rh, rw = data["image"].shape[1:]
    scale = torch.tensor([w / rw, h / rh, w / rw, h / rh])
    patch_boxes = (data["instances"].gt_boxes.tensor * scale).tolist()  # resized -> original pixels
    with torch.no_grad():
        inputs = {k: data[k] for k in ("file_name", "image_id", "height", "width", "image", "patches")}
        instances = model([inputs])[0]["instances"]
    best = best_per_patch(instances, len(patch_boxes))
    groups = instances.pred_classes.cpu()  # the patch (group) of each decoded query
    patches = data["patches"].permute(0, 2, 3, 1).numpy()
    if mapper.image_format == "BGR":
        patches = patches[..., ::-1]
    if image is None:
        image = read_image(file_name, format="RGB")
    vis, offset = draw(image, patch_boxes, best, np.ascontiguousarray(patches), thumbnails)
    return {"file_name": file_name, "image": vis, "offset": offset, "patch_boxes": patch_boxes,
            "best": best, "queries_per_patch": torch.bincount(groups, minlength=len(patch_boxes)).tolist(),
            "height": h, "width": w}


def main(argv=None) -> List[Dict]:
    """Writes one PNG per readable input image; returns, per image, ``file_name``, ``output``,
    ``offset`` (strip height: image row y is drawn at y + offset), ``patch_boxes`` and
    ``best`` (``(box, score)`` per patch), all in original-image pixels, and
    ``queries_per_patch`` (the size of each patch's query group)."""
    args = parse_args(argv)
    files = list_input_images(args.input)
    cfg = setup_cfg(args)
    built_for = cfg.INPUT.QUERY_PATCH.NUM_PATCHES
    num_patches = args.num_patches or built_for
    if not 1 <= num_patches <= built_for:
        # The query groups are the model's (INPUT.QUERY_PATCH.NUM_PATCHES): it has none for
        # an extra patch, and rebuilding it for more would not match its trained weights.
        raise SystemExit(f"--num-patches {num_patches}: the model's queries are grouped for "
                         f"INPUT.QUERY_PATCH.NUM_PATCHES={built_for} patches; give 1 to {built_for}")
    model = build_model(cfg)
    if cfg.MODEL.WEIGHTS:
        DetrCheckpointer.from_config(cfg, model).load(cfg.MODEL.WEIGHTS)
    else:
        print("warning: MODEL.WEIGHTS is empty, the model is randomly initialised", file=sys.stderr)
    model.eval()
    mapper = build_mapper(cfg, num_patches, args.seed)
    os.makedirs(args.output, exist_ok=True)
    results, used, skipped = [], set(), []
    for i, file_name in enumerate(files):
        # Read before the mapper does, so that only a bad file is skipped, not an error of the model.
        image, error = try_read_image(file_name, format="RGB")
        if error:
            print(f"warning: {file_name}: cannot read the image ({error}); skipped", file=sys.stderr)
            skipped.append(file_name)
            continue
        result = visualize_file(model, mapper, file_name, i, thumbnails=not args.no_thumbnails, image=image)
        stem = os.path.splitext(os.path.basename(file_name))[0]
        name, n = stem, 1
        while name in used:  # same name in two input folders
            name, n = f"{stem}_{n}", n + 1
        used.add(name)
        result["output"] = os.path.join(args.output, name + ".png")
        cv2.imwrite(result["output"], result.pop("image")[..., ::-1])
        scores = ", ".join(f"{k}: {b[1]:.2f}" for k, b in enumerate(result["best"]) if b is not None)
        print(f"{file_name} -> {result['output']} (best scores {scores})")
        results.append(result)
    print(f"{len(results)} images drawn, {len(skipped)} skipped (unreadable){describe_skipped(skipped)}")
    if not results:
        raise SystemExit(f"error: none of the {len(files)} input images could be read")
    return results


if __name__ == "__main__":
    main()
