#!/usr/bin/env python
"""Export a detector to TorchScript or ONNX, then check the file against PyTorch.

    python tools/export_model.py --config-file configs/demo/detr_effnet_lite0_demo.yaml \
        --format onnx --output export/ MODEL.WEIGHTS output/demo_detr_effnet_lite0/model_final.pth
    python tools/export_model.py --config-file projects/DeformableDETR/configs/deformable_detr_R18_demo.py \
        --format torchscript --output export/ --sample-image photo.jpg train.init_checkpoint=model.pth

The flags are Detectron2's ``tools/deploy/export_model.py`` ones (tracing only). The model
is built from a yaml config (trailing KEY VALUE overrides) or a LazyConfig ``.py`` file
(trailing key=value overrides), loaded from ``MODEL.WEIGHTS`` / ``train.init_checkpoint``
(random weights, with a warning, when there are none) and exported on the CPU to
``OUTPUT/model.ts`` or ``OUTPUT/model.onnx`` by tracing it on ``--sample-image`` (default:
the first generated demo val image), read in the config's input format and resized as at
test time. The exported file takes one image of exactly that size (updetr_d2/export/ says
why); run it with ``updetr_d2.export.ExportedDetector``. The file's detections on the
sample image are then compared with the PyTorch model's, detection by detection (paired by
query and class): the largest box and score differences and the detections without a
partner are printed, and the tool fails when they exceed ``updetr_d2.export.TOLERANCES``.
"""
import argparse
import os
import sys

import numpy as np
import torch

from updetr_d2.data import ensure_demo_dataset  # updetr_d2 first: compat fixes and registration
from detectron2.data import transforms as T
from updetr_d2.data.image_files import try_read_image
from updetr_d2.export import (
    DEFAULT_OPSET,
    EXPORT_FORMATS,
    TOLERANCES,
    ExportedDetector,
    ExportError,
    compare_instances,
    export_model,
)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from draw_detections import load_predictor  # noqa: E402  (the model as the drawing tool builds it)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True, metavar="FILE", help="a yaml or LazyConfig .py config")
    parser.add_argument("--format", required=True, choices=EXPORT_FORMATS, help="the exported file's format")
    parser.add_argument("--export-method", default="tracing", choices=["tracing"],
                        help="how the model is turned into a graph (tracing only: the detectors return "
                             "Detectron2 Instances, which TracingAdapter flattens)")
    parser.add_argument("--output", required=True, metavar="DIR", help="folder for model.ts / model.onnx")
    parser.add_argument("--sample-image", default="", metavar="FILE",
                        help="image the model is traced on; its test-time size is the exported input size "
                             "(default: the first generated demo val image)")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, help="ONNX opset (16 or later)")
    parser.add_argument("opts", nargs=argparse.REMAINDER,
                        help="config overrides: KEY VALUE ... (yaml, e.g. MODEL.WEIGHTS file.pth) or "
                             "key=value ... (LazyConfig, e.g. train.init_checkpoint=file.pth)")
    return parser.parse_args(argv)


def sample_tensor(file_name: str, predictor) -> torch.Tensor:
    """``file_name`` read in the model's input format and resized as at test time: a
    float32 CHW tensor (pixel values), as Detectron2's predictors give the model."""
    if not os.path.isfile(file_name):
        raise ExportError(f"--sample-image {file_name}: no such file")
    image, error = try_read_image(file_name, format=predictor["image_format"])
    if error:
        raise ExportError(f"--sample-image {file_name}: cannot read the image ({error})")
    aug_input = T.AugInput(image)
    T.AugmentationList(predictor["augmentations"])(aug_input)
    return torch.as_tensor(np.ascontiguousarray(aug_input.image.astype("float32").transpose(2, 0, 1)))


def main(argv=None) -> dict:
    """Exports and checks; returns the exported ``path`` and the comparison ``report``
    (:func:`updetr_d2.export.compare_instances`)."""
    args = parse_args(argv)
    if args.opts and args.opts[0] == "--":
        args.opts = args.opts[1:]
    torch.manual_seed(0)  # without weights, the same random model every run
    try:
        predictor = load_predictor(args.config_file, args.opts)
    except FileNotFoundError as e:
        # load_predictor's weights come from the config here: name the config key.
        raise SystemExit("error: " + str(e).replace("--weights", "MODEL.WEIGHTS / train.init_checkpoint", 1))
    # The trace records the device of every tensor it makes: exported on the CPU, the
    # TorchScript file runs on the CPU and the ONNX file wherever ONNX Runtime runs.
    model = predictor["model"].to("cpu")
    sample_file = args.sample_image or os.path.join(ensure_demo_dataset(), "images", "val", "000000.png")
    try:
        image = sample_tensor(sample_file, predictor)
        path = export_model(model, [{"image": image}], args.output, args.format, args.opset,
                            input_format=predictor["image_format"])
        exported = ExportedDetector(path)
    except ExportError as e:
        raise SystemExit(f"error: {e}")
    with torch.no_grad():
        expected = model([{"image": image}])[0]["instances"]
    report = compare_instances(expected, exported([{"image": image}])[0]["instances"])
    print(f"exported {type(model).__name__} ({args.format}) to {path}: input image {list(image.shape)} "
          f"(C, H, W, {predictor['image_format']}) from {sample_file}")
    print(f"check against PyTorch on the sample image: detections {report['count'][1]} "
          f"(PyTorch {report['count'][0]}), max |box difference| {report['boxes']:.3g} px "
          f"(tolerance {TOLERANCES['boxes']:g}), max |score difference| {report['scores']:.3g} "
          f"(tolerance {TOLERANCES['scores']:g}), detections without a same (query, class) partner "
          f"{report['unmatched']}")
    if not report["ok"]:
        raise SystemExit("error: the exported model's detections differ from PyTorch's beyond the tolerances")
    return {"path": path, "report": report}


if __name__ == "__main__":
    main()
