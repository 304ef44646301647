"""LazyConfig twin of pretext_deformable_detr_r50_pretrain.yaml: encoder-only pretraining of
Deformable DETR-R50 with masked image modelling on the tokens of encoder level 0 (res3, 8-px
patches), with the original's DETR pretraining recipe (512 x 512 views, ratio 0.5, linear head,
AdamW 1e-4 / backbone and offsets 1e-5, batch 128, 10 epochs at a constant LR). Initialise the
backbone with train.init_checkpoint; any registered dataset (labels ignored) or a folder of
images as dataloader.train.dataset.names.

The task is ONE key, model.plugins.0.task (the mapper interpolates it): reconstruction,
mim_continuous (default here), mim_discrete (plus model.plugins.0.tokenizer.codebook_path from
`tools/pretext.py codebook`), jigsaw_continuous, jigsaw_discrete.
Fine-tune: projects/DeformableDETR/configs/deformable_detr_r50.py with train.init_checkpoint
(yaml: MODEL.WEIGHTS) = this run's model_final.pth."""
from ....configs.common.models.encoder_pretext import add_encoder_pretext, use_pretraining_images
from ....configs.common.schedule import multistep_schedule
from ...DeformableDETR.configs.deformable_detr_r50 import dataloader, model, optimizer, train  # noqa: F401

# The original's view: short side to 1.2 x 512, a random 512 x 512 crop (every time), flip.
dataloader.train.mapper.augmentations.update(min_sizes=(512,), max_size=1333, crop_pre_resize=(614,),
                                             crop_type="absolute", crop_size=(512, 512), crop_prob=1.0)
add_encoder_pretext(model, dataloader, task="mim_continuous", strides=(8,), levels=(0,), patch_size=8,
                    head="linear", ratio=0.5, loss_on_transformed=True, encoder_only=True)
use_pretraining_images(dataloader, "imagenet_unlabeled")
dataloader.train.total_batch_size = 128
optimizer.lr = 1e-4  # the original's pretraining LR (Deformable DETR's own is 2e-4)

# 10 epochs of ImageNet's 1.28M images at batch 128 (10009 iterations an epoch), no LR drop.
train.max_iter = 10 * 10009
train.checkpointer.period = 5000
train.eval_period = 0
lr_multiplier = multistep_schedule(train.max_iter, milestones=[])
train.output_dir = "./output/pretext_deformable_detr_r50_pretrain_lazy"
