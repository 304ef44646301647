#!/usr/bin/env python
"""Convert an official DETR checkpoint (facebookresearch/detr) to this project's names.

    python tools/convert_detr_checkpoint.py detr-r50-e632da11.pth detr_r50_d2.pth
    python tools/convert_detr_checkpoint.py detr-r50-panoptic-00ce5173.pth detr_r50_panoptic_d2.pth

Layouts (told apart by the keys):

* detection (``DETR``): the 92-row COCO head (ids 0..90 + no-object) -> Detectron2's 80
  contiguous classes + no-object; config ``configs/detr/detr_r50.yaml``. A panoptic
  box-stage ``DETR`` (251 rows) -> the 133 panoptic classes;
  ``projects/Panoptic/configs/detr_r50_panoptic_box.yaml``.
* panoptic (``DETRsegm``): the detector under ``detr.`` (251 rows -> 133 classes +
  no-object) and its mask head -> the ``MaskHead`` plug-in at ``model.plugins[i]``
  (``--plugin-index``); config ``projects/Panoptic/configs/detr_r50_panoptic_mask.yaml``,
  which keeps the original's attention-map scale (``MODEL.PANOPTIC.SCALE_ATTENTION_MAPS
  False``) that these weights were trained with.

The file is read with ``torch.load(weights_only=True)`` allowing ``argparse.Namespace``
(the official files' ``"args"``) and nothing else. The output,
``{"model": ..., "__author__": ..., "matching_heuristics": False}``, is written whole or
not at all (with a ``.sha256`` beside it) and loads by exact names through
``MODEL.WEIGHTS``. Before writing, the converted keys and shapes are compared with the
model the config builds (``--config-file`` to use another, ``--skip-model-check`` to
skip): a key it cannot map, or a model tensor it leaves unfilled, is an error listing them.
``MODEL.WEIGHTS`` may also name the official file directly: ``DetrCheckpointer`` does
the same conversion on load (``updetr_d2.checkpoint.official_detr.convert_official_for_model``).
"""
import argparse
import os
import sys
from typing import Dict, List, Optional

import torch

import updetr_d2  # noqa: F401  (compat fixes and registrations, before Detectron2 is used)
from updetr_d2.checkpoint.integrity import save_checkpoint
from updetr_d2.checkpoint.official_detr import (
    COCO_DETECTION_NO_OBJECT_ROW,
    DETECTION_MARKERS,
    PANOPTIC_MARKERS,
    coco_detection_class_rows,
    convert_official_detr,
    detect_official_detr,
    load_official_checkpoint,
    official_resnet_depth,
    official_state_dict,
)
from updetr_d2.checkpoint.safe_load import UnsafeCheckpointError
from updetr_d2.methods.panoptic.convert import (
    COCO_PANOPTIC_CLASS_ROWS,
    COCO_PANOPTIC_NO_OBJECT_ROW,
    convert_official_detr_panoptic,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
AUTHOR = "official DETR (converted by updetr_d2)"
CONFIGS = {
    "detection": "configs/detr/detr_r50.yaml",
    "panoptic box stage": "projects/Panoptic/configs/detr_r50_panoptic_box.yaml",
    "panoptic": "projects/Panoptic/configs/detr_r50_panoptic_mask.yaml",
}


class ConversionError(Exception):
    """The input is no official DETR checkpoint this tool can convert in full."""


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("input", help="official DETR checkpoint (.pth)")
    parser.add_argument("output", help="converted .pth to write")
    parser.add_argument("--plugin-index", type=int, default=0,
                        help="panoptic: index of the MaskHead plug-in in model.plugins (0 in the configs)")
    parser.add_argument("--config-file", default="",
                        help="yaml config of the model to check the conversion against (default: the one "
                             "printed for the layout)")
    parser.add_argument("--skip-model-check", action="store_true",
                        help="write without comparing the keys and shapes with the config's model")
    return parser.parse_args(argv)


def _list(keys) -> str:
    return "\n  " + "\n  ".join(map(str, keys))


def convert(state_dict, plugin_index: int = 0):
    """``(layout, converted, head description)``; raises ConversionError listing what
    cannot be converted."""
    layout = detect_official_detr(state_dict)
    if layout is None:
        keys = list(state_dict.keys()) if hasattr(state_dict, "keys") else []
        raise ConversionError(
            "not an official DETR checkpoint: it lacks the keys of the DETR layout ("
            + ", ".join(k for k in DETECTION_MARKERS if k not in keys) + ") and of the DETRsegm layout ("
            + ", ".join(k for k in PANOPTIC_MARKERS if k not in keys) + f"). Its {len(keys)} keys:"
            + _list(keys)
        )
    try:
        if layout == "panoptic":
            converted = convert_official_detr_panoptic(state_dict, plugin_index=plugin_index)
            rows, no_object, head = COCO_PANOPTIC_CLASS_ROWS, COCO_PANOPTIC_NO_OBJECT_ROW, "detr.class_embed.weight"
        else:
            head = "class_embed.weight"
            if state_dict[head].shape[0] == COCO_PANOPTIC_NO_OBJECT_ROW + 1:  # panoptic box stage
                layout = "panoptic box stage"
                rows, no_object = COCO_PANOPTIC_CLASS_ROWS, COCO_PANOPTIC_NO_OBJECT_ROW
            else:
                rows, no_object = coco_detection_class_rows(), COCO_DETECTION_NO_OBJECT_ROW
            converted, unmapped = convert_official_detr(state_dict, class_rows=rows, no_object_row=no_object)
            if unmapped:
                raise ConversionError(f"cannot map {len(unmapped)} keys of the official DETR state dict:"
                                      + _list(unmapped))
    except ValueError as e:
        raise ConversionError(str(e)) from e
    old = state_dict[head].shape[0]
    dropped = sorted(set(range(no_object + 1)) - set(rows) - {no_object})
    described = (f"class head {old} -> {len(rows) + 1} rows: Detectron2 class c = official row of its "
                 f"category id ({len(rows)} rows gathered), no-object = official row {no_object}; "
                 f"{len(dropped)} rows of unused ids dropped")
    return layout, converted, described


def model_problems(converted: Dict[str, torch.Tensor], config_file: str, depth: Optional[int]) -> List[str]:
    """What differs between ``converted`` and the state dict of the model
    ``config_file`` builds (on CPU, ResNet depth set to ``depth``)."""
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model

    cfg = get_cfg()
    updetr_d2.add_updetr_config(cfg)
    cfg.merge_from_file(config_file)
    cfg.MODEL.DEVICE = "cpu"
    if depth:
        cfg.MODEL.RESNETS.DEPTH = depth
    expected = build_model(cfg).state_dict()
    problems = [f"unfilled: {k} {tuple(v.shape)}" for k, v in expected.items() if k not in converted]
    problems += [f"not in the model: {k}" for k in converted if k not in expected]
    problems += [f"shape: {k} {tuple(v.shape)} in the file, {tuple(expected[k].shape)} in the model"
                 for k, v in converted.items() if k in expected and v.shape != expected[k].shape]
    return problems


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        state_dict = official_state_dict(load_official_checkpoint(args.input))
        layout, converted, head = convert(state_dict, args.plugin_index)
    except (ConversionError, UnsafeCheckpointError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    prefix = "detr." if layout == "panoptic" else ""
    depth = official_resnet_depth(state_dict, prefix)
    config = CONFIGS[layout]
    if not args.skip_model_check:
        config_file = args.config_file or os.path.join(ROOT, config)
        problems = model_problems(converted, config_file, depth)
        if problems:
            print(f"error: the conversion does not fit the model of {config_file} "
                  f"({len(problems)} differences):" + _list(problems), file=sys.stderr)
            return 1
    save_checkpoint({"model": converted, "__author__": AUTHOR, "matching_heuristics": False}, args.output)
    print(f"official DETR layout: {layout} (ResNet-{depth or '?'} backbone)")
    print(f"converted {len(state_dict)} official tensors to {len(converted)} project tensors")
    print(head)
    if layout == "panoptic":
        print(f"mask head -> plugins.{args.plugin_index}.bbox_attention / plugins.{args.plugin_index}.mask_head")
    print(f"wrote {args.output}")
    print(f"use it with: --config-file {config} MODEL.WEIGHTS {args.output}"
          + (f" MODEL.RESNETS.DEPTH {depth}" if depth and depth != 50 else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
