"""LazyConfig twin of pretext_detr_r50_multitask.yaml: DETR-R50 (its own schedule and data)
trained with the detection loss plus a masked image modelling loss on its encoder tokens
(weight 1.0, the original's multi-task head), from a second pass on a corrupted view.

The task is ONE key, model.plugins.0.task (the mapper interpolates it): reconstruction,
mim_continuous (default here), mim_discrete (plus model.plugins.0.tokenizer.codebook_path from
`tools/pretext.py codebook`), jigsaw_continuous, jigsaw_discrete.
The result is a detector: evaluate or fine-tune it with configs/detr/detr_r50.py and
train.init_checkpoint (yaml: MODEL.WEIGHTS) = this run's model_final.pth."""
from ....configs.common.models.encoder_pretext import add_encoder_pretext
from ....configs.detr.detr_r50 import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401

add_encoder_pretext(model, dataloader, task="mim_continuous", strides=(32,), patch_size=32, head="mlp_deconv",
                    weight=1.0, ratio=0.5, loss_on_transformed=True)
train.output_dir = "./output/pretext_detr_r50_multitask_lazy"
