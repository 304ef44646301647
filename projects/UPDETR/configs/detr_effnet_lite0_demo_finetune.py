"""LazyConfig twin of detr_effnet_lite0_demo_finetune.yaml: the demo DETR fine-tuned from an UP-DETR
pretraining (train.init_checkpoint = its model_final.pth), backbone, input projection and
encoder taken, decoder, query embeddings and box head fresh."""
from updetr_d2.methods.updetr.checkpoint import ENCODER_HANDOFF_SKIP

from ....configs.demo.detr_effnet_lite0_demo import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401

train.init_checkpoint_skip = list(ENCODER_HANDOFF_SKIP)
train.output_dir = "./output/demo_effnet_lite0_demo_from_updetr_lazy"
