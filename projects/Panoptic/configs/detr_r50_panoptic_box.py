"""LazyConfig twin of detr_r50_panoptic_box.yaml: DETR-R50 on COCO panoptic (133 classes in
Detectron2's contiguous order), batch 16, 300 epochs with the LR drop at 200."""
from ....configs.common.data.panoptic import use_panoptic_data
from ....configs.common.schedule import epoch_schedule
from ....configs.detr.detr_r50 import dataloader, model, optimizer, train  # noqa: F401

model.backbone.backbone.out_features = ["res2", "res3", "res4", "res5"]  # for the mask stage
model.num_classes = 133
use_panoptic_data(dataloader, "coco_2017_train_panoptic", "coco_2017_val_panoptic")
dataloader.train.total_batch_size = 16
lr_multiplier = epoch_schedule(train, epochs=300, decay_epoch=200, iters_per_epoch=7393)  # 118k images / 16
train.output_dir = "./output/detr_r50_panoptic_box_lazy"
