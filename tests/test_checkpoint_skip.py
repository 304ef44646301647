"""MODEL.WEIGHTS_SKIP / train.init_checkpoint_skip: the named parts of the initial weights
are not loaded (they keep the model's fresh values), everything else is; a run resuming
from its own checkpoint loads all of it; a prefix that names nothing stops the run."""
import logging

import pytest
import torch
from torch import nn

import updetr_d2  # noqa: F401
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from updetr_d2 import add_updetr_config
from updetr_d2.checkpoint import DetrCheckpointer

SKIP = ("transformer.decoder.", "query_embed.")


def tiny_detector(seed):
    torch.manual_seed(seed)
    model = nn.Module()
    model.backbone = nn.Linear(3, 4)
    model.transformer = nn.Module()
    model.transformer.encoder = nn.Linear(4, 4)
    model.transformer.decoder = nn.Linear(4, 4)
    model.query_embed = nn.Embedding(5, 4)
    model.register_buffer("steps", torch.tensor([seed]))
    return model


def saved(tmp_path, name="pretrained"):
    DetectionCheckpointer(tiny_detector(0), str(tmp_path)).save(name)
    return str(tmp_path / f"{name}.pth"), tiny_detector(0).state_dict()


def test_skipped_parts_keep_their_fresh_values(tmp_path, caplog):
    path, pretrained = saved(tmp_path)
    model = tiny_detector(1)
    fresh = {k: v.clone() for k, v in model.state_dict().items()}
    with caplog.at_level(logging.INFO):
        DetrCheckpointer(model, skip=SKIP).resume_or_load(path, resume=False)
    for key, value in model.state_dict().items():
        expected = fresh[key] if key.startswith(SKIP) else pretrained[key]
        assert torch.equal(value, expected), key
    assert "transformer.decoder.* (2 tensors), query_embed.* (1 tensors)" in caplog.text
    # Without the option every tensor loads.
    again = tiny_detector(1)
    DetrCheckpointer(again).load(path)
    assert all(torch.equal(v, pretrained[k]) for k, v in again.state_dict().items())


def test_resuming_from_the_runs_own_checkpoint_loads_everything(tmp_path):
    (tmp_path / "pre").mkdir()
    path, _ = saved(tmp_path / "pre")
    run = tmp_path / "run"
    run.mkdir()
    trained = tiny_detector(2)
    DetectionCheckpointer(trained, str(run)).save("model_0000009")  # also writes last_checkpoint
    model = tiny_detector(3)
    checkpointer = DetrCheckpointer(model, str(run), skip=SKIP)
    checkpointer.resume_or_load(path, resume=True)
    assert all(torch.equal(v, trained.state_dict()[k]) for k, v in model.state_dict().items())
    # ... and the skip is still armed for a later load of initial weights.
    assert checkpointer._skipping


def test_a_prefix_that_names_nothing_is_an_error():
    with pytest.raises(ValueError, match=r"MODEL.WEIGHTS_SKIP.*'transformer.decodr.'.*backbone"):
        DetrCheckpointer(tiny_detector(0), skip=("transformer.decodr.",))


def test_yaml_and_lazy_routes_read_the_option():
    cfg = get_cfg()
    add_updetr_config(cfg)
    assert cfg.MODEL.WEIGHTS_SKIP == ()
    cfg.merge_from_list(["MODEL.WEIGHTS_SKIP", "('query_embed.',)"])
    assert DetrCheckpointer.from_config(cfg, tiny_detector(0)).skip == ("query_embed.",)
    from detectron2.config import LazyConfig

    lazy = LazyConfig.load("configs/common/train.py")
    assert list(lazy.train.init_checkpoint_skip) == []
