#!/usr/bin/env python
"""Convert an official DETR-family checkpoint to this project's names.

    python tools/convert_detr_checkpoint.py detr-r50-e632da11.pth detr_r50_d2.pth
    python tools/convert_detr_checkpoint.py r50_deformable_detr-checkpoint.pth deformable_d2.pth
    python tools/convert_detr_checkpoint.py --list-layouts

Every layout registered with ``updetr_d2.checkpoint.official_detr.register_official_layout``
converts (``--list-layouts``: DETR detection / panoptic, UP-DETR pretraining and fine-tuned,
Deformable DETR plain / refine / two-stage, DN-Deformable-DETR, and those methods add);
the layout is told by the keys. The model is built from the layout's registered config
(the ``*_official`` configs: the preprocessing the official weights expect) with the
overrides the file needs (ResNet depth, feature levels ...), or from ``--config-file``
plus ``opts``; the conversion must fill every tensor of that model with its shape and use
every official tensor (what a converter leaves out on purpose it names, printed here).

The file is read with ``torch.load(weights_only=True)`` allowing ``argparse.Namespace``
(the official files' ``"args"``) and nothing else. The output,
``{"model": ..., "__author__": ..., "matching_heuristics": False}``, is written whole or
not at all (with a ``.sha256`` beside it) and loads by exact names through
``MODEL.WEIGHTS``. ``MODEL.WEIGHTS`` may also name the official file directly:
``DetrCheckpointer`` does the same conversion on load.
"""
import argparse
import logging
import os
import sys
from typing import Dict, List, Sequence

import torch

import updetr_d2  # noqa: F401  (compat fixes and registrations, before Detectron2 is used)
from updetr_d2.checkpoint.integrity import save_checkpoint
from updetr_d2.checkpoint.official_layouts import (
    convert_official_layout,
    detect_official_detr,
    load_official_checkpoint,
    official_layout_config,
    official_layout_opts,
    official_layouts,
    official_state_dict,
    unexplained_keys_message,
)
from updetr_d2.checkpoint.safe_load import UnsafeCheckpointError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
AUTHOR = "official DETR (converted by updetr_d2)"


class ConversionError(Exception):
    """The input is no official checkpoint this tool can convert in full."""


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("input", nargs="?", help="official checkpoint (.pth)")
    parser.add_argument("output", nargs="?", help="converted .pth to write")
    parser.add_argument("--config-file", default="",
                        help="config (.yaml or LazyConfig .py) of the model to convert onto (default: the "
                             "layout's registered config with the overrides the file needs)")
    parser.add_argument("--list-layouts", action="store_true", help="print the registered layouts and exit")
    parser.add_argument("opts", nargs=argparse.REMAINDER, default=[],
                        help="config overrides (KEY VALUE for yaml, key=value for .py) after the paths")
    args = parser.parse_args(argv)
    if not args.list_layouts and not (args.input and args.output):
        parser.error("input and output are required (or --list-layouts)")
    return args


def _list(keys) -> str:
    return "\n  " + "\n  ".join(map(str, keys))


def build_model(config_file: str, opts: Sequence[str] = ()):
    """The model of a yaml or LazyConfig file (on CPU) with ``opts`` applied."""
    if config_file.endswith(".py"):
        from detectron2.config import LazyConfig, instantiate

        cfg = LazyConfig.apply_overrides(LazyConfig.load(config_file), list(opts))
        return instantiate(cfg.model)
    from detectron2.modeling import build_model as build

    from updetr_d2.config import load_yaml_config

    return build(load_yaml_config(config_file, list(opts) + ["MODEL.DEVICE", "cpu"]))


def plan(checkpoint, config_file: str = "", opts: Sequence[str] = ()):
    """``(layout, config file, opts)`` of a loaded official file: its registered config
    and overrides unless ``config_file`` is given."""
    state_dict = official_state_dict(checkpoint)
    layout = detect_official_detr(state_dict)
    if layout is None:
        keys = list(state_dict.keys()) if hasattr(state_dict, "keys") else []
        raise ConversionError(f"not an official checkpoint of a registered layout: "
                              f"{unexplained_keys_message(state_dict)}. Its {len(keys)} keys:" + _list(keys))
    args = checkpoint.get("args") if isinstance(checkpoint, dict) else None
    if config_file:
        return layout, config_file, list(opts)
    config = official_layout_config(layout, state_dict, args)
    if config is None:
        raise ConversionError(f"the layout {layout!r} registered no config: give --config-file")
    return layout, config, official_layout_opts(layout, state_dict, args, config) + list(opts)


def convert(state_dict, model) -> Dict[str, torch.Tensor]:
    """The registered converter of the file's layout onto ``model``; ConversionError
    listing what cannot be converted or filled."""
    layout = detect_official_detr(state_dict)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    try:
        return convert_official_layout(layout, state_dict, shapes)
    except ValueError as e:
        raise ConversionError(str(e).replace("; ", "\n  ")) from e


class _Lines(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.lines: List[str] = []

    def emit(self, record):
        self.lines.append(record.getMessage())


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.list_layouts:
        for layout, markers in sorted(official_layouts().items()):
            print(f"{layout}: config {official_layout_config(layout) or '(none)'}\n  markers: {', '.join(markers)}")
        return 0
    report = _Lines()
    log = logging.getLogger("updetr_d2")  # every converter's log lines, wherever it lives
    log.addHandler(report)
    level = log.level
    log.setLevel(logging.INFO)
    try:
        checkpoint = load_official_checkpoint(args.input)
        state_dict = official_state_dict(checkpoint)
        layout, config, opts = plan(checkpoint, args.config_file, args.opts)
        config_path = config if os.path.isabs(config) or os.path.exists(config) else os.path.join(ROOT, config)
        converted = convert(state_dict, build_model(config_path, opts))
    except (ConversionError, UnsafeCheckpointError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        log.removeHandler(report)
        log.setLevel(level)
    save_checkpoint({"model": converted, "__author__": AUTHOR, "matching_heuristics": False}, args.output)
    print(f"official layout: {layout}")
    print(f"converted {len(state_dict)} official tensors to {len(converted)} project tensors")
    for line in report.lines:
        print(line)
    print(f"wrote {args.output}")
    weights = f"train.init_checkpoint={args.output}" if config.endswith(".py") else f"MODEL.WEIGHTS {args.output}"
    print(f"use it with: --config-file {config} {weights}" + "".join(f" {o}" for o in opts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
