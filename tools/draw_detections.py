#!/usr/bin/env python
"""Draw a detector's detections on images.

    python tools/draw_detections.py --config-file configs/demo/detr_R18_demo.yaml \
        --weights output/demo/detr/model_final.pth --input path/to/images_or_folder --output vis/
    python tools/draw_detections.py --config-file configs/demo/detr_R18_demo.py \
        --weights model_final.pth --input a.jpg b.png --output vis/ --threshold 0.3 train.device=cpu

The model is built from a yaml config (trailing KEY VALUE overrides) or a LazyConfig ``.py``
file (trailing key=value overrides), on the CPU when CUDA is missing, and loaded from
``--weights`` (default: the config's ``MODEL.WEIGHTS`` / ``train.init_checkpoint``; with
neither, the model stays randomly initialised). Each image is read in the config's input
format and resized as at test time (yaml: ``ResizeShortestEdge`` from ``INPUT.MIN_SIZE_TEST``
/ ``MAX_SIZE_TEST``, as Detectron2's ``DefaultPredictor``; lazy: the test mapper's
augmentations); the detections scoring above ``--threshold`` are drawn with Detectron2's
``Visualizer`` (class names from the first test dataset's ``thing_classes``, when it has
them) to ``OUTPUT/<image name>.png``. A model that gives a panoptic segmentation (the
``MaskHead`` plug-in, projects/Panoptic) has it drawn instead, every segment coloured and
named (things and stuff; ``--threshold`` does not apply). Folders are searched recursively for the image
extensions of ``updetr_d2.data.IMAGE_EXTENSIONS`` (hidden files and folders left out); an
unreadable image is skipped with a warning, and the skipped files are counted at the end.
"""
import argparse
import os
import sys
from typing import Dict, Sequence

import cv2
import numpy as np
import torch

import updetr_d2  # noqa: F401  (compat fixes and registration, before Detectron2 is used)
from detectron2.config import LazyConfig, instantiate
from detectron2.data import MetadataCatalog
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from detectron2.data.catalog import Metadata
from detectron2.modeling import build_model
from detectron2.structures import Instances
from detectron2.utils.visualizer import Visualizer
from updetr_d2.checkpoint import DetrCheckpointer
from updetr_d2.config import apply_lazy_overrides, load_yaml_config
from updetr_d2.data.image_files import describe_skipped, list_input_images, try_read_image
from updetr_d2.engine.launch import device_or_cpu, is_lazy_config


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True, metavar="FILE", help="a yaml or LazyConfig .py config")
    parser.add_argument("--weights", default="", metavar="FILE",
                        help="model weights (default: the config's MODEL.WEIGHTS / train.init_checkpoint)")
    parser.add_argument("--input", required=True, nargs="+", help="image files and/or folders (searched recursively)")
    parser.add_argument("--output", required=True, help="folder for the PNGs")
    parser.add_argument("--threshold", type=float, default=0.5, help="draw detections scoring above this")
    parser.add_argument("opts", nargs=argparse.REMAINDER,
                        help="config overrides: KEY VALUE ... (yaml) or key=value ... (LazyConfig)")
    return parser.parse_args(argv)


def load_predictor(config_file: str, opts: Sequence[str], weights: str = "") -> Dict:
    """The model (eval mode, weights loaded) and what inference needs from the config:
    ``model``, ``image_format``, ``augmentations`` (test-time resize) and ``metadata``."""
    if not os.path.isfile(config_file):
        raise FileNotFoundError(f"--config-file {config_file}: no such file")
    if is_lazy_config(config_file):
        cfg = apply_lazy_overrides(LazyConfig.load(config_file), list(opts))
        device = device_or_cpu(cfg.train.get("device", "cpu"))
        model = instantiate(cfg.model)
        test = cfg.get("dataloader", {}).get("test", {})
        mapper = test.get("mapper", {})
        image_format = mapper.get("image_format", "BGR")
        augmentations = instantiate(mapper.get("augmentations", []))
        names = test.get("dataset", {}).get("names", ())
        weights = weights or cfg.train.get("init_checkpoint", "")
        allow_unsafe = cfg.train.get("allow_unsafe_checkpoints", False)
    else:
        cfg = load_yaml_config(config_file, opts)
        cfg.MODEL.DEVICE = device = device_or_cpu(cfg.MODEL.DEVICE)
        cfg.freeze()
        model = build_model(cfg)
        image_format = cfg.INPUT.FORMAT
        # What DefaultPredictor uses
        augmentations = [T.ResizeShortestEdge([cfg.INPUT.MIN_SIZE_TEST] * 2, cfg.INPUT.MAX_SIZE_TEST)]
        names = cfg.DATASETS.TEST
        weights = weights or cfg.MODEL.WEIGHTS
        allow_unsafe = cfg.MODEL.ALLOW_UNSAFE_CHECKPOINTS
    model.to(device)
    if weights:
        if "://" not in weights and not os.path.isfile(weights):
            raise FileNotFoundError(f"--weights {weights}: no such file")
        # No MODEL.WEIGHTS_SKIP here: it names parts left out when a training run starts
        # from other weights; a model drawn from its checkpoint needs all of them.
        DetrCheckpointer(model, allow_unsafe=allow_unsafe).load(weights)
    else:
        print("warning: no weights given (MODEL.WEIGHTS / train.init_checkpoint, or --weights where the tool has it): "
              "the model is randomly initialised", file=sys.stderr)
    model.eval()
    names = [names] if isinstance(names, str) else list(names)
    metadata = MetadataCatalog.get(names[0]) if names else Metadata()
    return {"model": model, "image_format": image_format, "augmentations": list(augmentations),
            "metadata": metadata}


def predict(predictor: Dict, image: np.ndarray) -> Instances:
    """The detections on ``image`` (in ``predictor["image_format"]``, HWC), in its pixels,
    on the CPU: test-time resize, then the model, as Detectron2's ``DefaultPredictor``."""
    return predict_outputs(predictor, image)["instances"].to("cpu")


def predict_outputs(predictor: Dict, image: np.ndarray) -> Dict:
    """The model's whole output for ``image`` (``instances``, and ``panoptic_seg`` when it
    gives one), as :func:`predict` computes it."""
    height, width = image.shape[:2]
    aug_input = T.AugInput(image)
    T.AugmentationList(predictor["augmentations"])(aug_input)  # resizes aug_input.image
    tensor = torch.as_tensor(np.ascontiguousarray(aug_input.image.astype("float32").transpose(2, 0, 1)))
    with torch.no_grad():
        return predictor["model"]([{"image": tensor, "height": height, "width": width}])[0]


def draw(image_rgb: np.ndarray, instances: Instances, metadata=None, threshold: float = 0.5) -> np.ndarray:
    """``image_rgb`` (HWC uint8) with the ``instances`` scoring above ``threshold`` drawn on
    it by Detectron2's ``Visualizer``; same size as the input."""
    instances = instances.to("cpu")
    if instances.has("scores"):
        instances = instances[instances.scores > threshold]
    metadata = metadata if metadata is not None else Metadata()
    names = metadata.get("thing_classes", None)
    if names is not None and instances.has("pred_classes") and len(instances) \
            and int(instances.pred_classes.max()) >= len(names):
        # The model has more classes than the dataset names (another dataset's model):
        # class numbers instead of names, rather than an IndexError in the Visualizer.
        print(f"warning: class {int(instances.pred_classes.max())} has no name in the metadata "
              f"({len(names)} thing_classes): drawing class numbers", file=sys.stderr)
        metadata = Metadata()
    vis = Visualizer(image_rgb, metadata).draw_instance_predictions(instances).get_image()
    if vis.shape[:2] != image_rgb.shape[:2]:  # matplotlib rounding: keep the input's size
        vis = cv2.resize(vis, (image_rgb.shape[1], image_rgb.shape[0]), interpolation=cv2.INTER_NEAREST)
    return vis


def draw_panoptic(image_rgb: np.ndarray, panoptic_seg, metadata=None) -> np.ndarray:
    """``image_rgb`` with a panoptic segmentation ``(ids [H, W], segments_info)`` drawn by
    Detectron2's ``Visualizer`` (names from the metadata's thing_ / stuff_classes)."""
    ids, segments = panoptic_seg
    vis = Visualizer(image_rgb, metadata if metadata is not None else Metadata())
    vis = vis.draw_panoptic_seg(ids.to("cpu"), segments).get_image()
    if vis.shape[:2] != image_rgb.shape[:2]:
        vis = cv2.resize(vis, (image_rgb.shape[1], image_rgb.shape[0]), interpolation=cv2.INTER_NEAREST)
    return vis


def output_name(file_name: str, used: set) -> str:
    """``<image name>.png``, with ``_1``, ``_2``... for a name already written this run
    (the same name in two folders)."""
    stem = os.path.splitext(os.path.basename(file_name))[0]
    name, n = stem, 1
    while name in used:
        name, n = f"{stem}_{n}", n + 1
    used.add(name)
    return name + ".png"


def main(argv=None) -> Dict:
    """Writes one PNG per readable image; returns ``outputs`` (input file -> PNG written)
    and ``skipped`` (the unreadable files)."""
    args = parse_args(argv)
    files = list_input_images(args.input)
    try:
        predictor = load_predictor(args.config_file, args.opts, args.weights)
    except FileNotFoundError as e:
        raise SystemExit(f"error: {e}")
    os.makedirs(args.output, exist_ok=True)
    outputs, skipped, used = {}, [], set()
    for file_name in files:
        image, error = try_read_image(file_name, format=predictor["image_format"])
        if error:
            print(f"warning: {file_name}: cannot read the image ({error}); skipped", file=sys.stderr)
            skipped.append(file_name)
            continue
        output = predict_outputs(predictor, image)
        instances = output["instances"].to("cpu")
        rgb = np.ascontiguousarray(utils.convert_image_to_rgb(image, predictor["image_format"]), dtype=np.uint8)
        if "panoptic_seg" in output:
            vis = draw_panoptic(rgb, output["panoptic_seg"], predictor["metadata"])
        else:
            vis = draw(rgb, instances, predictor["metadata"], args.threshold)
        out = os.path.join(args.output, output_name(file_name, used))
        if not cv2.imwrite(out, np.ascontiguousarray(vis[..., ::-1])):
            raise SystemExit(f"error: {out}: could not write the PNG")
        if "panoptic_seg" in output:
            print(f"{file_name} -> {out} ({len(output['panoptic_seg'][1])} segment(s))")
        else:
            shown = int((instances.scores > args.threshold).sum()) if instances.has("scores") else len(instances)
            print(f"{file_name} -> {out} ({shown} detection(s) above {args.threshold})")
        outputs[file_name] = out
    print(f"{len(outputs)} images drawn, {len(skipped)} skipped (unreadable){describe_skipped(skipped)}")
    if not outputs:
        raise SystemExit(f"error: none of the {len(files)} input images could be read")
    return {"outputs": outputs, "skipped": skipped}


if __name__ == "__main__":
    main()
