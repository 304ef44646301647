"""Several processes on a CPU through Detectron2's own launcher (gloo): the same first
step as one process with the same total batch, for DETR and Deformable DETR, and
``tools/train_net.py --num-gpus 2`` (one machine) and ``--num-machines 2`` (two commands
on the loopback) training and evaluating."""
import os
import socket
import subprocess
import sys

import pytest
import torch

import updetr_d2  # noqa: F401  (compat fixes: the launcher's gloo worker, DDP on a CPU)
from detectron2.engine import launch
from detectron2.engine.defaults import create_ddp_model
from detectron2.modeling import build_model
from detectron2.utils import comm
from torch.nn import functional as F
from torch.nn.parallel import DistributedDataParallel

from helpers import fake_input
from test_deformable_detr import tiny_cfg as tiny_deformable_cfg
from test_detr import tiny_detr_cfg
from test_train_net import DETR_LAZY_FAST, DETR_YAML_FAST, YAML_FAST, coco_bbox_metrics, iterations_logged

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN_NET = os.path.join(ROOT, "tools", "train_net.py")
CONFIGS = {"detr": tiny_detr_cfg, "deformable": tiny_deformable_cfg}
WORLD = 2


def total_batch():
    """Four images of one size (padding then does not depend on how the batch is split),
    with 3, 1, 0 and 2 objects: the two halves hold different shares of no-object queries,
    which is where per-process means and the whole batch's mean part."""
    boxes = [[[4, 6, 40, 50], [50, 10, 110, 70], [20, 60, 90, 92]], [[8, 8, 60, 60]], [],
             [[30, 20, 80, 90], [70, 5, 120, 40]]]
    classes = [[0, 3, 1], [2], [], [1, 0]]
    return [fake_input(96, 128, b, c, seed=i) for i, (b, c) in enumerate(zip(boxes, classes))]


def first_step(name, inputs):
    """Losses (averaged over the processes, as Detectron2 logs them) and gradients (as DDP
    leaves them: averaged) of one forward/backward of the tiny model on ``inputs``."""
    torch.manual_seed(0)
    model = build_model(CONFIGS[name]())
    model.train()
    model = create_ddp_model(model, broadcast_buffers=False)
    losses = model(inputs)
    sum(losses.values()).backward()
    module = model.module if isinstance(model, DistributedDataParallel) else model
    grads = {n: p.grad.detach().clone() for n, p in module.named_parameters() if p.grad is not None}
    values = torch.stack([losses[k].detach() for k in sorted(losses)])
    if comm.get_world_size() > 1:
        torch.distributed.all_reduce(values)
        values /= comm.get_world_size()
    return dict(zip(sorted(losses), values)), grads, type(model).__name__


def _worker(name, out_path):
    # Runs in each launched process: its half of the batch, as Detectron2's sampler shards.
    torch.set_num_threads(1)
    rank, world = comm.get_rank(), comm.get_world_size()
    inputs = total_batch()
    share = len(inputs) // world
    losses, grads, wrapper = first_step(name, inputs[rank * share:(rank + 1) * share])
    info = {"backend": torch.distributed.get_backend(), "world": world, "local_size": comm.get_local_size(),
            "wrapper": wrapper}
    if rank == 0:
        torch.save({"losses": losses, "grads": grads, "info": info}, out_path)


@pytest.mark.parametrize("name", ["detr", "deformable"])
def test_two_processes_equal_one_with_the_same_total_batch(name, tmp_path):
    out = str(tmp_path / "two.pt")
    launch(_worker, WORLD, dist_url="auto", args=(name, out))
    two = torch.load(out)
    assert two["info"] == {"backend": "gloo", "world": 2, "local_size": 2, "wrapper": "DistributedDataParallel"}

    losses, grads, wrapper = first_step(name, total_batch())
    assert wrapper != "DistributedDataParallel"
    assert sorted(two["losses"]) == sorted(losses) and len(losses) >= 6
    for key, value in losses.items():
        torch.testing.assert_close(two["losses"][key], value, rtol=2e-5, atol=1e-7, msg=key)
    assert sorted(two["grads"]) == sorted(grads) and len(grads) > 50
    for key, value in grads.items():
        torch.testing.assert_close(two["grads"][key], value, rtol=1e-3, atol=2e-6, msg=key)
    # Scale-aware summary: the whole gradient vector agrees to float rounding.
    flat_two = torch.cat([two["grads"][k].flatten() for k in sorted(grads)])
    flat_one = torch.cat([grads[k].flatten() for k in sorted(grads)])
    assert (flat_two - flat_one).norm() / flat_one.norm() < 1e-5


def test_the_run_time_launch_fix_trains_the_same(tmp_path, monkeypatch):
    """updetr_d2.compat's gloo worker, which takes over on a Detectron2 v0.6 whose sources
    were not patched (the project's build patches them the same way)."""
    import importlib

    from updetr_d2 import compat

    monkeypatch.setattr(importlib.import_module("detectron2.engine.launch"), "_distributed_worker",
                        compat._distributed_worker)
    out = str(tmp_path / "two.pt")
    launch(_worker, WORLD, dist_url="auto", args=("detr", out))
    two = torch.load(out)
    assert two["info"]["backend"] == "gloo" and two["info"]["local_size"] == 2
    losses, _, _ = first_step("detr", total_batch())
    for key, value in losses.items():
        torch.testing.assert_close(two["losses"][key], value, rtol=2e-5, atol=1e-7, msg=key)


def test_class_loss_is_detr_weighted_mean_on_one_process():
    """On one process the class loss is DETR's own: cross-entropy with the no-object
    weight, mean over all queries weighted by class (F.cross_entropy with ``weight``)."""
    from updetr_d2.modeling.criterion import LabelCrossEntropy

    torch.manual_seed(0)
    term = LabelCrossEntropy(num_classes=5, eos_coef=0.1)
    logits = torch.randn(2, 7, 6)
    targets = [{"labels": torch.tensor([1, 4])}, {"labels": torch.tensor([0])}]
    indices = [(torch.tensor([3, 0]), torch.tensor([0, 1])), (torch.tensor([6]), torch.tensor([0]))]
    target_classes = torch.full((2, 7), 5)
    target_classes[0, 3], target_classes[0, 0], target_classes[1, 6] = 1, 4, 0
    expected = F.cross_entropy(logits.transpose(1, 2), target_classes, term.empty_weight)
    torch.testing.assert_close(term({"pred_logits": logits}, targets, indices, 3.0)["loss_ce"], expected)


# --- tools/train_net.py -------------------------------------------------------------------
def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(args, **popen):
    return subprocess.Popen([sys.executable, TRAIN_NET, *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **popen)


def finish(proc, what):
    try:
        output, _ = proc.communicate(timeout=900)
    except subprocess.TimeoutExpired:
        proc.kill()
        output, _ = proc.communicate()
        pytest.fail(f"{what} timed out:\n{output[-4000:]}")
    if proc.returncode != 0:
        pytest.fail(f"{what} failed:\n{output[-4000:]}")
    return output


@pytest.mark.parametrize("route", ["yaml", "lazy"])
def test_train_net_two_processes_train_and_evaluate(route, tmp_path):
    out = str(tmp_path / "two")
    config = os.path.join(ROOT, "configs", "demo", "detr_R18_demo." + ("py" if route == "lazy" else "yaml"))
    if route == "lazy":
        overrides = [*DETR_LAZY_FAST, "train.max_iter=6", "train.checkpointer.period=100", f"train.output_dir={out}"]
    else:
        overrides = [*DETR_YAML_FAST, "SOLVER.MAX_ITER", "6", "SOLVER.CHECKPOINT_PERIOD", "100", "OUTPUT_DIR", out]
    output = finish(run(["--num-gpus", "2", "--config-file", config, *overrides]), "--num-gpus 2")
    assert "Starting training from iteration 0" in output
    assert "CPU threads per process: 1 (2 core(s) shared by 2 processes" in output or os.cpu_count() != 2
    # Each process evaluates its shard of the val set; the main process reports the whole.
    coco_bbox_metrics(output)
    assert max(iterations_logged(out)) == 5
    assert os.path.isfile(os.path.join(out, "model_final.pth"))


def test_train_net_two_machines_on_the_loopback(tmp_path):
    """``--num-machines 2``: two commands, one per "machine", meeting at one --dist-url."""
    out = str(tmp_path / "machines")
    config = os.path.join(ROOT, "projects", "DeformableDETR", "configs", "deformable_detr_R18_demo.yaml")
    url = f"tcp://127.0.0.1:{free_port()}"
    common = ["--num-gpus", "1", "--num-machines", "2", "--dist-url", url, "--config-file", config, *YAML_FAST,
              "SOLVER.MAX_ITER", "4", "SOLVER.CHECKPOINT_PERIOD", "100", "OUTPUT_DIR", out]
    # One thread each: the two "machines" share this host's cores.
    env = dict(os.environ, OMP_NUM_THREADS="1")
    machines = [run(["--machine-rank", str(rank), *common], env=env) for rank in (0, 1)]
    outputs = [finish(proc, f"--machine-rank {rank}") for rank, proc in enumerate(machines)]
    coco_bbox_metrics(outputs[0], allow_no_detections=True)
    assert max(iterations_logged(out)) == 3
