"""The encoder pretexts as a LazyConfig edit of a DETR-family model node and its train loader
(projects/EncoderPretext/configs).

The settings live on the plug-in node (``model.plugins.<i>``); the mapper's task and patch
size are interpolations of the plug-in's (``"${model.plugins.0.task}"``), so one key sets
the task, on the command line too: ``model.plugins.0.task=jigsaw_discrete``. The tokenizer
node follows the task as well (``None`` unless the task is ``mim_discrete``)."""
from detectron2.config import LazyCall as L

from updetr_d2.methods.pretext import EncoderPretext, PretextDatasetMapper
from updetr_d2.methods.pretext.config import pretext_tokenizer
from updetr_d2.methods.pretext.mapper import mim_fill_colour


def add_encoder_pretext(model, dataloader, task="mim_continuous", strides=(32,), levels=(0,), patch_size=32,
                        head="linear", weight=1.0, ratio=0.5, loss_on_transformed=True, mim_fill="mean",
                        encoder_only=False, codebook="", tokenizer="KMeansPatchTokenizer",
                        compat_jigsaw_mask_bug=False):
    """Add an ``EncoderPretext`` plug-in to ``model`` and wrap ``dataloader.train.mapper`` in a
    ``PretextDatasetMapper`` that makes its corrupted view.

    Args:
        task: one of ``updetr_d2.methods.pretext.TASKS``.
        strides, levels: the encoder levels the head reads and their strides (DETR: level 0
            at 32; Deformable DETR: level 0, res3, at 8).
        patch_size: side of the corrupted patches, a multiple of every stride read.
        head: "linear" (the original's pretraining) or "mlp_deconv" (its multi-task heads).
        weight: of the pretext loss next to the detection loss (0: measured, not trained).
        ratio: fraction of the patches masked or shuffled.
        loss_on_transformed: the loss over the masked / moved patches only.
        mim_fill: "mean" (the model's pixel mean, 0 after normalisation),
            "imagenet_constants" (the original's) or explicit values in pixel units.
        encoder_only: drop the decoder side and train the pretext alone (pretraining).
        codebook, tokenizer: for mim_discrete, the codebook file and the tokenizer's
            ``TOKENIZER_REGISTRY`` name.
        compat_jigsaw_mask_bug: score the jigsaw patches that did not move, as the original.

    A function, so that the config files that use it get no extra top-level node. The fill
    and the tokenizer read the model's ``pixel_mean`` / ``pixel_std`` through
    interpolations, so a later change of the normalisation (e.g. ``use_efficientnet_lite0``)
    reaches them.
    """
    plugins = list(model.get("plugins") or [])
    index = len(plugins)
    plugins.append(L(EncoderPretext)(
        task=task, hidden_dim="${...hidden_dim}", strides=list(strides), levels=list(levels),
        patch_size=patch_size, head=head, weight=weight, loss_on_transformed=loss_on_transformed,
        compat_jigsaw_mask_bug=compat_jigsaw_mask_bug,
        # relative to the tokenizer node: .. is the plug-in, .... the model
        tokenizer=L(pretext_tokenizer)(task="${..task}", codebook_path=codebook, name=tokenizer,
                                       patch_size="${..patch_size}", pixel_mean="${....pixel_mean}",
                                       pixel_std="${....pixel_std}"),
    ))
    model.plugins = plugins
    model.encoder_only = encoder_only

    base = dataloader.train.mapper
    if isinstance(mim_fill, str):
        # The base mapper's image format orders the constants; Detectron2's default is BGR.
        image_format = "${..base_mapper.image_format}" if "image_format" in base else "BGR"
        fill = L(mim_fill_colour)(mode=mim_fill, pixel_mean="${model.pixel_mean}", pixel_std="${model.pixel_std}",
                                  image_format=image_format)
    else:
        fill = [float(v) for v in mim_fill]
    dataloader.train.mapper = L(PretextDatasetMapper)(
        base_mapper=base, task=f"${{model.plugins.{index}.task}}",
        patch_size=f"${{model.plugins.{index}.patch_size}}", ratio=ratio, fill=fill,
    )
    return model


def use_pretraining_images(dataloader, names):
    """The train loader reads ``names`` (any registered dataset, labels ignored, or a folder
    of images) with empty images kept; nothing is evaluated during pretraining: the test
    loader and evaluator are removed."""
    dataloader.train.dataset.names = names
    dataloader.train.dataset.filter_empty = False
    del dataloader.test, dataloader.evaluator
    return dataloader
