"""LazyConfig twin of detr_r50_panoptic_mask.yaml: the mask head alone on the frozen box-stage
DETR-R50 (train.init_checkpoint = its model_final.pth), 25 epochs with the LR drop at 15."""
from detectron2.data.datasets.builtin_meta import COCO_CATEGORIES

from ....configs.common.data.panoptic import add_mask_head
from ....configs.common.schedule import epoch_schedule
from .detr_r50_panoptic_box import dataloader, model, optimizer, train  # noqa: F401

add_mask_head(model, thing_classes=[i for i, c in enumerate(COCO_CATEGORIES) if c["isthing"]], freeze_detector=True,
              scale_attention_maps=False)  # the original's scale (its checkpoints)
lr_multiplier = epoch_schedule(train, epochs=25, decay_epoch=15, iters_per_epoch=7393)
train.output_dir = "./output/detr_r50_panoptic_mask_lazy"
