"""LazyConfig twin of updetr_r50_pretrain_official.yaml: UP-DETR pretraining (ResNet-50) for
the official pretraining weights. The pretraining config has no test loader: evaluate
with the official validation resize (short side 480, long side at most 600)."""
from .updetr_r50_pretrain import dataloader, lr_multiplier, model, optimizer, train

__all__ = ["dataloader", "lr_multiplier", "model", "optimizer", "train"]  # the whole config, re-exported

# Padding to a multiple of 32 moves the official weights' logits.
model.size_divisibility = 0
train.output_dir = "./output/updetr_r50_pretrain_official_lazy"
