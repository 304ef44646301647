#!/usr/bin/env python
"""Convert a torchvision / SwAV / DINO / MoCo ResNet checkpoint to a Detectron2-style
``.pth`` that ``MODEL.WEIGHTS`` (or ``train.init_checkpoint``) can point at.

    python tools/convert_backbone_weights.py resnet50-0676ba61.pth r50_d2.pth
    python tools/convert_backbone_weights.py dino_resnet50_checkpoint.pth r50_dino.pth --allow-unsafe

The output is ``{"model": <Detectron2 ResNet names>, "matching_heuristics": True,
"__author__": ...}``: names carry no model prefix and are suffix-matched into any model
holding a Detectron2 ResNet. It is the conversion that
``updetr_d2.checkpoint.DetrCheckpointer`` applies on load, done once ahead of time.
``--allow-unsafe`` lets a file that pickles Python objects
(e.g. an ``argparse.Namespace``) be unpickled in full; pass it only for files you trust.
"""
import argparse
import os
import sys

import torch

import updetr_d2  # noqa: F401  (compat fixes, before Detectron2 is used)
from updetr_d2.checkpoint import UnsafeCheckpointError, convert_resnet_state_dict, load_checkpoint_file


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("input", help="torchvision/SwAV/DINO/MoCo ResNet checkpoint (.pth, .pt, .pkl)")
    parser.add_argument("output", help="Detectron2-style .pth to write")
    parser.add_argument("--allow-unsafe", action="store_true",
                        help="unpickle arbitrary objects in INPUT (only for files you trust)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        data = load_checkpoint_file(args.input, allow_unsafe=args.allow_unsafe)
        converted, report = convert_resnet_state_dict(data)
    except (UnsafeCheckpointError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    out_dir = os.path.dirname(os.path.abspath(args.output))
    os.makedirs(out_dir, exist_ok=True)
    torch.save(
        {
            "model": converted,
            "matching_heuristics": True,
            "__author__": f"updetr_d2 converted from {report.format} ({os.path.basename(args.input)})",
        },
        args.output,
    )
    print(report.summary())
    print(f"wrote {len(converted)} tensors to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
