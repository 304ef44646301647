"""LazyConfig twin of pretext_deformable_detr_r50_multitask.yaml: Deformable DETR-R50 (its own
schedule and data) trained with the detection loss plus a masked image modelling loss on the
tokens of encoder level 0 (res3, stride 8; the original's head and weight 0.1), from a second
pass on a corrupted view.

The task is ONE key, model.plugins.0.task (the mapper interpolates it): reconstruction,
mim_continuous (default here), mim_discrete (plus model.plugins.0.tokenizer.codebook_path from
`tools/pretext.py codebook`), jigsaw_continuous, jigsaw_discrete.
The result is a detector: evaluate or fine-tune it with
projects/DeformableDETR/configs/deformable_detr_r50.py and train.init_checkpoint (yaml:
MODEL.WEIGHTS) = this run's model_final.pth."""
from ....configs.common.models.encoder_pretext import add_encoder_pretext
from ...DeformableDETR.configs.deformable_detr_r50 import (  # noqa: F401
    dataloader,
    lr_multiplier,
    model,
    optimizer,
    train,
)

add_encoder_pretext(model, dataloader, task="mim_continuous", strides=(8,), levels=(0,), patch_size=8,
                    head="mlp_deconv", weight=0.1, ratio=0.5, loss_on_transformed=True)
train.output_dir = "./output/pretext_deformable_detr_r50_multitask_lazy"
