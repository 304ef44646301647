#!/usr/bin/env python
"""Train or evaluate any updetr_d2 / Detectron2 model from a yaml or LazyConfig file.

    python tools/train_net.py --config-file configs/demo/faster_rcnn_R18_FPN.yaml
    python tools/train_net.py --config-file configs/demo/faster_rcnn_R18_FPN.py --eval-only train.init_checkpoint=...
    python tools/train_net.py --config-file CFG --resume          # continue from OUTPUT_DIR/last_checkpoint
    python tools/train_net.py --import-module my_method --config-file CFG MODEL.DETR.PLUGINS "['MyPlugin']"
    python tools/train_net.py --coco-dataset my_train train.json images/ --config-file CFG DATASETS.TRAIN "('my_train',)"

Flags are Detectron2's `default_argument_parser`, plus `--import-module` (repeatable):
modules of your own to import first, so the components they register (meta-architectures,
query generators, plug-ins, mappers, config keys) can be named in a yaml config; and
`--coco-dataset NAME JSON IMAGE_DIR` (repeatable): a COCO instances json and its image
folder registered as dataset NAME, for DATASETS.TRAIN / DATASETS.TEST (yaml) or
dataloader.{train,test}.dataset.names (lazy).
Trailing KEY VALUE pairs (yaml) or key=value pairs (lazy) override the config.
"""
import importlib

import updetr_d2  # noqa: F401  (compat fixes and registration, before Detectron2 is used)
from detectron2.engine import default_argument_parser, launch
from updetr_d2.engine import main


def import_and_run(args):
    # In every worker process: registration happens on import, per process.
    for name in args.import_module:
        importlib.import_module(name)
    return main(args)


if __name__ == "__main__":
    parser = default_argument_parser()
    parser.add_argument("--import-module", action="append", default=[], metavar="MODULE",
                        help="import MODULE (on PYTHONPATH) before reading the config; repeatable")
    # Registered in main (updetr_d2.engine.setup), so that every launched process has it.
    parser.add_argument("--coco-dataset", action="append", nargs=3, default=[],
                        metavar=("NAME", "JSON", "IMAGE_DIR"),
                        help="register a COCO-format json and its image folder as dataset NAME, "
                             "usable in the config's train/test datasets; repeatable")
    parser.add_argument("--skip-input-checks", action="store_true",
                        help="do not scan the datasets (files, sizes, boxes, classes) before training")
    args = parser.parse_args()
    print("Command Line Args:", args)
    launch(
        import_and_run,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )
