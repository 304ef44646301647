"""A method written entirely in this file, as a user (or the next method of the project)
would write it, plugs into both base detectors and both config routes without any change
to the package: an extra loss on the encoder memory (a plug-in on the post-encode phase),
a query generator of its own, a training hook, and a config check.

``tools/train_net.py --import-module test_toy_method`` imports this file in the training
process, which registers the toy components there."""
import json
import os
import subprocess
import sys

import pytest
import torch

import updetr_d2  # noqa: F401  (Detectron2 v0.6 compat fixes before its modules load)
from detectron2.config import configurable
from detectron2.engine import HookBase
from detectron2.utils.events import get_event_storage
from torch import nn
from updetr_d2.config import register_config, register_config_check
from updetr_d2.modeling import PLUGIN_REGISTRY, QUERY_GENERATOR_REGISTRY, DetectorPlugin, QueryBundle

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.dirname(os.path.abspath(__file__))


# ----------------------------------------------------------------------------- the toy method
@register_config
def add_toy_config(cfg):
    from detectron2.config import CfgNode as CN

    cfg.MODEL.TOY = CN()
    cfg.MODEL.TOY.WEIGHT = 0.5
    return cfg


@register_config_check
def check_toy_weight(cfg):
    if hasattr(cfg, "MODEL") and "TOY" in cfg.MODEL and cfg.MODEL.TOY.WEIGHT < 0:
        raise ValueError(f"MODEL.TOY.WEIGHT must be >= 0, got {cfg.MODEL.TOY.WEIGHT}")


class ToyHook(HookBase):
    """Counts the steps it saw and logs the count, so a test can see it ran."""

    def __init__(self):
        self.steps = 0

    def after_step(self):
        self.steps += 1
        get_event_storage().put_scalar("toy_hook_steps", self.steps, smoothing_hint=False)


@PLUGIN_REGISTRY.register()
class ToyMemoryLoss(DetectorPlugin):
    """An encoder pretext in miniature: a linear head on every non-padded position of
    the encoder memory, trained to output the position's mean feature."""

    @configurable
    def __init__(self, *, hidden_dim: int, weight: float):
        super().__init__()
        self.head = nn.Linear(hidden_dim, 1)
        self.weight = weight

    @classmethod
    def from_config(cls, cfg):
        return {"hidden_dim": cfg.MODEL.DETR.HIDDEN_DIM, "weight": cfg.MODEL.TOY.WEIGHT}

    def after_encode(self, model, state):
        memory = state.memory
        state.extras["toy"] = (self.head(memory.memory).squeeze(-1), memory.memory.detach().mean(-1),
                               ~memory.padding_mask)

    def losses(self, model, state):
        pred, target, valid = state.extras.pop("toy")
        return {"loss_toy_memory": self.weight * (pred - target)[valid].pow(2).mean()}

    def training_hooks(self):
        return [ToyHook()]


@QUERY_GENERATOR_REGISTRY.register()
class ToyQueries(nn.Module):
    """Learned positional queries, zero content and reference points on a fixed grid:
    enough for DETR (which reads ``query_pos`` and ``tgt``) and Deformable DETR (which
    also reads the points)."""

    @configurable
    def __init__(self, *, num_queries: int, hidden_dim: int):
        super().__init__()
        self.query_embed = nn.Embedding(num_queries, hidden_dim)
        side = int(num_queries**0.5) + 1
        grid = torch.stack(torch.meshgrid(torch.arange(side), torch.arange(side), indexing="xy"), -1)
        points = (grid.reshape(-1, 2)[:num_queries].float() + 0.5) / side
        self.register_buffer("points", points, persistent=False)

    @classmethod
    def from_config(cls, cfg):
        return {"num_queries": cfg.MODEL.DETR.NUM_OBJECT_QUERIES, "hidden_dim": cfg.MODEL.DETR.HIDDEN_DIM}

    @property
    def num_queries(self):
        return self.query_embed.num_embeddings

    def forward(self, batch_size, **context):
        pos = self.query_embed.weight
        return QueryBundle(query_pos=pos, tgt=torch.zeros_like(pos), reference_points=self.points)


# ----------------------------------------------------------------------------- the tests
BASES = {
    "Detr": ("configs/demo/detr_R18_demo", ["INPUT.CROP.SIZE", "(64, 128)", "INPUT.DETR_CROP.PRE_RESIZE", "(128,)"]),
    "DeformableDetr": ("projects/DeformableDETR/configs/deformable_detr_R18_demo", []),
}
YAML_FAST = ["SEED", "0", "INPUT.MIN_SIZE_TRAIN", "(128,)", "INPUT.MAX_SIZE_TRAIN", "192",
             "SOLVER.IMS_PER_BATCH", "2", "DATALOADER.NUM_WORKERS", "0", "DATASETS.TEST", "()",
             "SOLVER.MAX_ITER", "3", "SOLVER.CHECKPOINT_PERIOD", "100"]


def train_net(out, *args):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([TESTS, os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "train_net.py"),
                           "--import-module", "test_toy_method", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        pytest.fail(f"train_net.py failed:\n{(proc.stdout + proc.stderr)[-4000:]}")
    with open(os.path.join(out, "metrics.json")) as f:
        records = [json.loads(line) for line in f]
    weights = torch.load(os.path.join(out, "model_final.pth"), map_location="cpu", weights_only=True)["model"]
    return records, weights


def assert_toy_trained(records, weights):
    last = records[-1]
    assert last["iteration"] == 2 and last["toy_hook_steps"] == 3  # the hook ran every step
    assert "loss_toy_memory" in last and last["loss_toy_memory"] >= 0
    assert "loss_bbox" in last  # next to the detector's own losses
    assert {"plugins.0.head.weight", "query_generator.query_embed.weight"} <= set(weights)


@pytest.mark.parametrize("arch", sorted(BASES))
def test_toy_method_trains_through_yaml(arch, tmp_path):
    config, extra = BASES[arch]
    out = str(tmp_path)
    records, weights = train_net(out, "--config-file", os.path.join(ROOT, config + ".yaml"), *YAML_FAST, *extra,
                                 "MODEL.DETR.QUERY_GENERATOR", "ToyQueries",
                                 "MODEL.DETR.PLUGINS", "['ToyMemoryLoss']", "OUTPUT_DIR", out)
    assert_toy_trained(records, weights)


LAZY = """
from detectron2.config import LazyCall as L, LazyConfig
from test_toy_method import ToyMemoryLoss as _Plugin, ToyQueries as _Queries

_base = LazyConfig.load({base!r})
model, dataloader, optimizer, lr_multiplier, train = (
    _base.model, _base.dataloader, _base.optimizer, _base.lr_multiplier, _base.train)
model.query_generator = L(_Queries)(num_queries=12, hidden_dim=128)
model.plugins = [L(_Plugin)(hidden_dim=128, weight=0.5)]
del dataloader.test, dataloader.evaluator
dataloader.train.mapper.augmentations.update(min_sizes=(128,), max_size=192, crop_pre_resize=(128,),
                                             crop_size=(64, 128))
dataloader.train.total_batch_size = 2
dataloader.train.num_workers = 0
train.max_iter = 3
train.checkpointer.period = 100
train.seed = 0
"""


@pytest.mark.parametrize("arch", sorted(BASES))
def test_toy_method_trains_through_lazy_config(arch, tmp_path):
    config = tmp_path / "toy_config.py"
    config.write_text(LAZY.format(base=os.path.join(ROOT, BASES[arch][0] + ".py")))
    out = str(tmp_path / "out")
    records, weights = train_net(out, "--config-file", str(config), f"train.output_dir={out}")
    assert_toy_trained(records, weights)
    assert weights["query_generator.query_embed.weight"].shape == (12, 128)


def test_toy_config_check_runs_before_anything_is_built(tmp_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([TESTS, os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "train_net.py"),
                           "--import-module", "test_toy_method", "--config-file",
                           os.path.join(ROOT, BASES["Detr"][0] + ".yaml"), "MODEL.TOY.WEIGHT", "-1.0",
                           "OUTPUT_DIR", str(tmp_path)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode != 0 and "MODEL.TOY.WEIGHT must be >= 0" in proc.stderr
    assert not os.path.exists(os.path.join(tmp_path, "metrics.json"))
