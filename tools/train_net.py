#!/usr/bin/env python
"""Train or evaluate any updetr_d2 / Detectron2 model from a yaml or LazyConfig file.

    python tools/train_net.py --config-file configs/demo/faster_rcnn_R18_FPN.yaml
    python tools/train_net.py --config-file configs/demo/faster_rcnn_R18_FPN.py --eval-only train.init_checkpoint=...
    python tools/train_net.py --config-file CFG --resume          # continue from OUTPUT_DIR/last_checkpoint

Flags are Detectron2's `default_argument_parser`; trailing KEY VALUE pairs
(yaml) or key=value pairs (lazy) override the config.
"""
import updetr_d2  # noqa: F401  (compat fixes and registration, before Detectron2 is used)
from detectron2.engine import default_argument_parser, launch
from updetr_d2.engine import main

if __name__ == "__main__":
    args = default_argument_parser().parse_args()
    print("Command Line Args:", args)
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )
