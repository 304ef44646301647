"""DETR-R50-DC5 for the official DC5 weights (``args.dilation``): detr_r50_official.py with
the last ResNet stage dilated as torchvision's ``replace_stride_with_dilation`` does it.

torchvision keeps dilation 1 in the first res5 block's 3x3 conv and dilates the two
others; Detectron2's yaml ``RES5_DILATION: 2`` dilates all three, which is another
function of the same weights. Hence a LazyConfig listing the stages: the yaml route
cannot express per-block dilation. ResNet-101-DC5: the converter prints the overrides
(res4 with 23 blocks)."""
from detectron2.config import LazyCall as L
from detectron2.modeling.backbone import BottleneckBlock, ResNet

from .detr_r50_official import dataloader, lr_multiplier, model, optimizer, train

__all__ = ["dataloader", "lr_multiplier", "model", "optimizer", "train"]  # the whole config, re-exported


def _stage(num_blocks, in_channels, out_channels, first_stride, dilation=(1, 1, 1)):
    return L(ResNet.make_stage)(
        block_class=BottleneckBlock, num_blocks=num_blocks, in_channels=in_channels,
        bottleneck_channels=out_channels // 4, out_channels=out_channels,
        stride_per_block=[first_stride] + [1] * (num_blocks - 1),
        dilation_per_block=list(dilation) if num_blocks == len(dilation) else [1] * num_blocks,
        norm="FrozenBN", stride_in_1x1=False,
    )


model.backbone.backbone.stages = [
    _stage(3, 64, 256, 1),
    _stage(4, 256, 512, 2),
    _stage(6, 512, 1024, 2),
    _stage(3, 1024, 2048, 1, dilation=(1, 2, 2)),  # stride 16: res5 dilated, not strided
]
train.output_dir = "./output/detr_r50_dc5_official_lazy"
