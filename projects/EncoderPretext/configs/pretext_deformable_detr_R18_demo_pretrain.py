"""LazyConfig twin of pretext_deformable_detr_R18_demo_pretrain.yaml: encoder-only pretraining
of the demo Deformable DETR (ResNet-18 GN from scratch) with masked image modelling on the
tokens of encoder level 0 (res3: 8-px patches = its stride), on the demo's unlabeled images.

The task is ONE key, model.plugins.0.task (the mapper interpolates it): reconstruction,
mim_continuous (default here), mim_discrete (plus model.plugins.0.tokenizer.codebook_path from
`tools/pretext.py codebook`), jigsaw_continuous, jigsaw_discrete.
Fine-tune: projects/DeformableDETR/configs/deformable_detr_R18_demo.py with
train.init_checkpoint (yaml: MODEL.WEIGHTS) = this run's model_final.pth."""
from ....configs.common.demo import use_demo_schedule
from ....configs.common.models.encoder_pretext import add_encoder_pretext, use_pretraining_images
from ...DeformableDETR.configs.deformable_detr_R18_demo import dataloader, model, optimizer, train  # noqa: F401

add_encoder_pretext(model, dataloader, task="mim_continuous", strides=(8,), levels=(0,), patch_size=8,
                    head="linear", ratio=0.5, loss_on_transformed=True, encoder_only=True)
use_pretraining_images(dataloader, "updetr_demo_unlabeled")
lr_multiplier = use_demo_schedule(train, max_iter=300, decay_iter=250)
train.output_dir = "./output/demo_pretext_deformable_detr_pretrain_lazy"
