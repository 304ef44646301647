"""The encoder-only UP-DETR hand-off of projects/UPDETR/configs/*_finetune.*: a DETR
fine-tuned through them takes the pretraining's backbone, input projection and encoder,
and starts its decoder, query embeddings and heads fresh; yaml and LazyConfig agree."""
import os

import pytest
import torch
from omegaconf import OmegaConf

import updetr_d2  # noqa: F401
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import LazyConfig, get_cfg
from detectron2.modeling import build_model
from updetr_d2 import add_updetr_config
from updetr_d2.checkpoint import DetrCheckpointer
from updetr_d2.methods.updetr.checkpoint import ENCODER_HANDOFF_SKIP

from test_updetr import tiny

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(ROOT, "projects", "UPDETR", "configs")
BASES = {"detr_R18_demo_finetune": "detr_R18_demo", "detr_effnet_lite0_demo_finetune": "detr_effnet_lite0_demo"}


@pytest.mark.parametrize("name", sorted(BASES))
def test_yaml_and_lazy_finetune_configs_agree(name):
    cfg = get_cfg()
    add_updetr_config(cfg)
    cfg.merge_from_file(os.path.join(CONFIGS, name + ".yaml"))
    base = get_cfg()
    add_updetr_config(base)
    base.merge_from_file(os.path.join(ROOT, "configs", "demo", BASES[name] + ".yaml"))
    assert tuple(cfg.MODEL.WEIGHTS_SKIP) == ENCODER_HANDOFF_SKIP
    cfg.MODEL.WEIGHTS_SKIP, cfg.OUTPUT_DIR = base.MODEL.WEIGHTS_SKIP, base.OUTPUT_DIR
    assert cfg.dump() == base.dump()  # the demo DETR itself, unchanged
    lazy = LazyConfig.load(os.path.join(CONFIGS, name + ".py"))
    assert tuple(lazy.train.init_checkpoint_skip) == ENCODER_HANDOFF_SKIP
    base_lazy = LazyConfig.load(os.path.join(ROOT, "configs", "demo", BASES[name] + ".py"))
    assert OmegaConf.to_container(lazy.model) == OmegaConf.to_container(base_lazy.model)
    assert lazy.train.output_dir != base_lazy.train.output_dir


def test_finetuning_takes_the_encoder_and_starts_the_decoder_fresh(tmp_path):
    torch.manual_seed(0)
    pretrained = build_model(tiny())
    with torch.no_grad():  # a pretraining that moved every weight away from its init
        for p in pretrained.parameters():
            p.add_(0.5)
    DetectionCheckpointer(pretrained, save_dir=str(tmp_path)).save("pretrained")

    cfg = tiny(os.path.join(CONFIGS, "detr_R18_demo_finetune.yaml"))
    torch.manual_seed(1)
    detr = build_model(cfg)
    fresh = {k: v.clone() for k, v in detr.state_dict().items()}
    DetrCheckpointer.from_config(cfg, detr).resume_or_load(str(tmp_path / "pretrained.pth"), resume=False)
    source = pretrained.state_dict()
    for key, value in detr.state_dict().items():
        if key.startswith(ENCODER_HANDOFF_SKIP):
            assert torch.equal(value, fresh[key]), key
        else:
            assert key.startswith(("backbone.", "input_proj.", "transformer.encoder.")), key
            assert torch.equal(value, source[key]), key
    assert any(k.startswith("transformer.decoder.") for k in fresh)
