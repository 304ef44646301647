"""Checkpoints saved before the package was reorganised into method folders still load:
every demo model's state dict has the same keys and shapes as then
(``tests/data/state_dict_shapes_v0.1.json``, written by the earlier layout)."""
import json
import os

import pytest

import updetr_d2  # noqa: F401
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from updetr_d2 import add_updetr_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
with open(os.path.join(ROOT, "tests", "data", "state_dict_shapes_v0.1.json")) as f:
    BEFORE = json.load(f)


@pytest.mark.parametrize("config", sorted(BEFORE))
def test_state_dict_is_the_one_saved_before(config):
    cfg = get_cfg()
    add_updetr_config(cfg)
    cfg.merge_from_file(os.path.join(ROOT, config))
    cfg.MODEL.DEVICE = "cpu"
    shapes = {k: list(v.shape) for k, v in build_model(cfg).state_dict().items()}
    assert shapes == BEFORE[config]
