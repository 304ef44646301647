"""tools/train_net.py end to end on the demo data, through both config routes: train,
evaluate with COCOEvaluator, resume from the last checkpoint, evaluate only; for the
project's DETR and for a Detectron2 built-in model next to it."""
import json
import math
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN_NET = os.path.join(ROOT, "tools", "train_net.py")
CONFIGS = os.path.join(ROOT, "configs", "demo")
# Small inputs keep each run to seconds on a CPU.
YAML_FAST = ["SEED", "0", "INPUT.MIN_SIZE_TRAIN", "(128,)", "INPUT.MAX_SIZE_TRAIN", "192", "INPUT.MIN_SIZE_TEST", "128",
             "INPUT.MAX_SIZE_TEST", "192", "SOLVER.IMS_PER_BATCH", "2", "DATALOADER.NUM_WORKERS", "1"]
DETR_YAML_FAST = YAML_FAST + ["INPUT.CROP.SIZE", "(64, 128)", "INPUT.DETR_CROP.PRE_RESIZE", "(128,)"]
DETR_LAZY_FAST = ["dataloader.train.mapper.augmentations.min_sizes=[128]",
                  "dataloader.train.mapper.augmentations.max_size=192",
                  "dataloader.train.mapper.augmentations.crop_pre_resize=[128]",
                  "dataloader.train.mapper.augmentations.crop_size=[64,128]",
                  "dataloader.test.mapper.augmentations.0.short_edge_length=128",
                  "dataloader.test.mapper.augmentations.0.max_size=192",
                  "dataloader.train.total_batch_size=2", "dataloader.train.num_workers=1",
                  "dataloader.test.num_workers=1"]


def train_net(*args):
    proc = subprocess.run([sys.executable, TRAIN_NET, *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=900)
    output = proc.stdout + proc.stderr
    if proc.returncode != 0:
        pytest.fail(f"train_net.py {' '.join(args)} failed:\n{output[-4000:]}")
    return output


def coco_bbox_metrics(output, allow_no_detections=False):
    """The AP row Detectron2 prints in csv form after a COCO evaluation (NaN where the
    model detected nothing, which DETR never does: every query is a detection)."""
    rows = re.findall(r"copypaste: Task: bbox\n.*copypaste: AP,AP50,AP75,APs,APm,APl\n.*copypaste: (\S+)",
                      output)
    assert len(rows) == 1, output[-3000:]
    metrics = dict(zip(["AP", "AP50", "AP75", "APs", "APm", "APl"], map(float, rows[0].split(","))))
    if allow_no_detections and metrics["AP"] != metrics["AP"]:
        return metrics
    assert 0.0 <= metrics["AP"] <= 100.0 and 0.0 <= metrics["AP50"] <= 100.0
    return metrics


def iterations_logged(output_dir):
    """Iterations whose training losses metrics.json recorded."""
    with open(os.path.join(output_dir, "metrics.json")) as f:
        records = [json.loads(line) for line in f]
    return [r["iteration"] for r in records if "total_loss" in r]


def checkpoints(output_dir):
    return sorted(f for f in os.listdir(output_dir) if f.endswith(".pth"))


def test_detr_yaml_train_evaluate_then_eval_only(tmp_path):
    out = str(tmp_path / "train")
    config = os.path.join(CONFIGS, "detr_R18_demo.yaml")
    output = train_net("--config-file", config, *DETR_YAML_FAST, "SOLVER.MAX_ITER", "20",
                       "SOLVER.CHECKPOINT_PERIOD", "10", "OUTPUT_DIR", out)
    assert "Starting training from iteration 0" in output
    metrics = coco_bbox_metrics(output)
    assert max(iterations_logged(out)) == 19
    assert checkpoints(out) == ["model_0000009.pth", "model_0000019.pth", "model_final.pth"]
    assert os.path.isfile(os.path.join(out, "inference", "updetr_demo_val", "coco_instances_results.json"))
    with open(os.path.join(out, "metrics.json")) as f:
        assert any("class_error" in json.loads(line) for line in f)

    # Evaluating the saved final weights gives the same numbers.
    again = train_net("--config-file", config, "--eval-only", *DETR_YAML_FAST,
                      "OUTPUT_DIR", str(tmp_path / "eval"), "MODEL.WEIGHTS", os.path.join(out, "model_final.pth"))
    assert coco_bbox_metrics(again) == metrics


def test_detr_lazy_train_resume(tmp_path):
    out = str(tmp_path / "lazy")
    common = ["--config-file", os.path.join(CONFIGS, "detr_R18_demo.py"), *DETR_LAZY_FAST,
              f"train.output_dir={out}", "train.checkpointer.period=5"]
    first = train_net(*common, "train.max_iter=12")
    assert "Starting training from iteration 0" in first
    # Make it look killed during iteration 12: its last periodic checkpoint is iteration 9's.
    os.remove(os.path.join(out, "model_final.pth"))
    with open(os.path.join(out, "last_checkpoint"), "w") as f:
        f.write("model_0000009.pth")
    resumed = train_net("--resume", *common, "train.max_iter=20")
    assert re.search(r"Loading from \S*model_0000009.pth", resumed)
    assert "Starting training from iteration 10" in resumed
    assert iterations_logged(out)[-1] == 19
    coco_bbox_metrics(resumed)


def test_detectron2_builtin_model_runs_alongside(tmp_path):
    """An existing Detectron2 pipeline (Faster R-CNN, SGD) is unchanged by the import."""
    out = str(tmp_path / "frcnn")
    output = train_net("--config-file", os.path.join(CONFIGS, "faster_rcnn_R18_FPN.yaml"), *YAML_FAST,
                       "SOLVER.MAX_ITER", "20", "SOLVER.CHECKPOINT_PERIOD", "100", "OUTPUT_DIR", out)
    assert "GeneralizedRCNN" in output
    with open(os.path.join(out, "config.yaml")) as f:
        assert "OPTIMIZER: SGD" in f.read()
    assert max(iterations_logged(out)) == 19
    # After 20 iterations from scratch Faster R-CNN may score no box above its threshold.
    coco_bbox_metrics(output, allow_no_detections=True)


def test_updetr_pretrain_then_detr_finetune(tmp_path):
    """The demo's flow: UP-DETR pretraining on unlabeled images (lazy config), then a DETR
    (yaml config) initialised from it, trained and evaluated."""
    pre = str(tmp_path / "pretrain")
    pretrain = os.path.join(ROOT, "projects", "UPDETR", "configs", "updetr_R18_demo_pretrain.py")
    output = train_net("--config-file", pretrain, f"train.output_dir={pre}", "train.max_iter=6",
                       "dataloader.train.mapper.min_sizes=[128]", "dataloader.train.mapper.max_size=192",
                       "dataloader.train.total_batch_size=2", "dataloader.train.num_workers=1")
    assert "Starting training from iteration 0" in output and "loss_feature" in output
    assert "model_final.pth" in checkpoints(pre)

    out = str(tmp_path / "finetune")
    output = train_net("--config-file", os.path.join(CONFIGS, "detr_R18_demo.yaml"), *DETR_YAML_FAST,
                       "SOLVER.MAX_ITER", "4", "MODEL.WEIGHTS", os.path.join(pre, "model_final.pth"),
                       "OUTPUT_DIR", out)
    assert "Initialising Detr from an UP-DETR pretraining checkpoint" in output
    assert "query_generator.patch2query.weight" in output
    coco_bbox_metrics(output)


def test_deformable_detr_yaml_trains_and_evaluates(tmp_path):
    """The Deformable DETR demo config (box refinement) through tools/train_net.py."""
    out = str(tmp_path / "deformable")
    config = os.path.join(ROOT, "projects", "DeformableDETR", "configs", "deformable_detr_R18_demo.yaml")
    output = train_net("--config-file", config, *DETR_YAML_FAST, "SOLVER.MAX_ITER", "8",
                       "SOLVER.CHECKPOINT_PERIOD", "100", "OUTPUT_DIR", out)
    assert "DeformableDetr" in output and "loss_focal" in output
    assert max(iterations_logged(out)) == 7
    coco_bbox_metrics(output)


def test_dn_deformable_detr_lazy_trains_resumes_and_evaluates(tmp_path):
    """DN-Deformable-DETR's demo LazyConfig: denoising losses are logged next to the
    matching ones, a killed run resumes, and evaluation runs the plain model."""
    out = str(tmp_path / "dn")
    config = os.path.join(ROOT, "projects", "DNDETR", "configs", "dn_deformable_detr_R18_demo.py")
    common = ["--config-file", config, *DETR_LAZY_FAST, f"train.output_dir={out}", "train.checkpointer.period=4"]
    train_net(*common, "train.max_iter=6")
    with open(os.path.join(out, "metrics.json")) as f:
        logged = [json.loads(line) for line in f]
    assert any("loss_bbox_dn" in r and "loss_focal_dn_0" in r and "loss_bbox" in r for r in logged)
    os.remove(os.path.join(out, "model_final.pth"))
    with open(os.path.join(out, "last_checkpoint"), "w") as f:
        f.write("model_0000003.pth")
    resumed = train_net("--resume", *common, "train.max_iter=8")
    assert "Starting training from iteration 4" in resumed
    coco_bbox_metrics(resumed)


def test_codetr_with_all_three_heads_trains_and_evaluates(tmp_path):
    """Co-DETR's demo config with ATSS, FCOS and Faster R-CNN heads: every head's losses and
    every positive-query pass's losses are logged and finite; evaluation runs."""
    out = str(tmp_path / "codetr")
    config = os.path.join(ROOT, "projects", "CoDETR", "configs", "co_deformable_detr_R18_demo.yaml")
    output = train_net("--config-file", config, *DETR_YAML_FAST, "SOLVER.MAX_ITER", "4",
                       "MODEL.CO_DETR.AUX_HEADS", "['ATSSAuxHead', 'FCOSAuxHead', 'FasterRCNNAuxHead']",
                       "SOLVER.CHECKPOINT_PERIOD", "100", "OUTPUT_DIR", out)
    with open(os.path.join(out, "metrics.json")) as f:
        logged = [json.loads(line) for line in f]
    losses = {k: v for r in logged for k, v in r.items() if k.startswith("loss_")}
    for head in ("atss", "fcos", "rcnn"):
        assert any(k.startswith(f"loss_{head}_") for k in losses), head
        assert f"loss_focal_co_{head}" in losses and f"loss_giou_co_{head}_0" in losses
    assert all(math.isfinite(v) for v in losses.values())
    coco_bbox_metrics(output)


@pytest.mark.parametrize("name", ["co_dino", "co_detr"])
@pytest.mark.parametrize("route", ["yaml", "lazy"])
def test_co_dino_and_single_scale_co_detr_train_and_evaluate(tmp_path, name, route):
    """Co-DINO (DINO with Co-DETR's heads) and Co-DETR on the single-scale DETR, at demo
    size on both config routes: the base model's, auxiliary-head and positive-query losses
    (and Co-DINO's contrastive denoising and encoder losses) are logged and finite;
    evaluation runs the base detector alone."""
    out = str(tmp_path / route)
    config = os.path.join(ROOT, "projects", "CoDETR", "configs", f"{name}_R18_demo." + ("py" if route == "lazy" else "yaml"))
    if route == "lazy":
        overrides = [*DETR_LAZY_FAST, "train.max_iter=3", "train.checkpointer.period=100", f"train.output_dir={out}"]
    else:
        overrides = [*DETR_YAML_FAST, "SOLVER.MAX_ITER", "3", "SOLVER.CHECKPOINT_PERIOD", "100", "OUTPUT_DIR", out]
    output = train_net("--config-file", config, *overrides)
    with open(os.path.join(out, "metrics.json")) as f:
        losses = {k: v for line in f for k, v in json.loads(line).items() if k.startswith("loss_")}
    keys = (("loss_focal", "loss_focal_dn", "loss_bbox_dn_0", "loss_focal_enc", "loss_focal_co_atss", "loss_giou_co_rcnn_0")
            if name == "co_dino" else ("loss_ce", "loss_bbox_0", "loss_ce_co_atss", "loss_giou_co_rcnn_0"))
    for key in keys:
        assert key in losses, sorted(losses)
    assert any(k.startswith("loss_atss_") for k in losses) and any(k.startswith("loss_rcnn_") for k in losses)
    assert all(math.isfinite(v) for v in losses.values())
    coco_bbox_metrics(output)


@pytest.mark.parametrize("route", ["yaml", "lazy"])
def test_mixed_precision_trains_and_evaluates_on_a_cpu(tmp_path, route):
    """SOLVER.AMP.ENABLED / train.amp.enabled: bf16 autocast on a CPU that has it (fp32 with
    one log line on one that has not), for training and, asked for, evaluation."""
    from updetr_d2.engine.amp import cpu_supports_bf16

    out = str(tmp_path / route)
    if route == "yaml":
        config = os.path.join(ROOT, "projects", "DeformableDETR", "configs", "deformable_detr_R18_demo.yaml")
        output = train_net("--config-file", config, *DETR_YAML_FAST, "SOLVER.MAX_ITER", "6",
                           "SOLVER.CHECKPOINT_PERIOD", "100", "SOLVER.AMP.ENABLED", "True",
                           "TEST.AMP.ENABLED", "True", "OUTPUT_DIR", out)
    else:
        output = train_net("--config-file", os.path.join(CONFIGS, "detr_R18_demo.py"), *DETR_LAZY_FAST,
                           f"train.output_dir={out}", "train.max_iter=6", "train.amp.enabled=True",
                           "train.amp.inference=True")
    if cpu_supports_bf16():
        assert "Mixed precision training: bfloat16 autocast on cpu." in output
    else:
        assert "this CPU has no native bf16" in output
    assert "AMPTrainer" not in output  # Detectron2's CUDA-only trainer is never built
    assert max(iterations_logged(out)) == 5
    coco_bbox_metrics(output)
