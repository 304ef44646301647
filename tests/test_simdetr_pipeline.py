"""SimDETR's stages wired together: stage A over a dataset (chunks, resume, shards), stage B
to a registered COCO dataset, the pseudo-label mapper and its rounds, relabelling with an
oracle detector, the self-training hook, pretraining (loss falls, backbone trains at its
multiplier), the class-head hand-off, the config checks; then the whole chain through
tools/simdetr.py and tools/train_net.py."""
import json
import logging
import os
import types

import numpy as np
import pytest
import torch

import updetr_d2  # noqa: F401  (before Detectron2: its compat fixes)
from detectron2.data import DatasetCatalog
from detectron2.data.datasets import register_coco_instances
from detectron2.modeling import Backbone, ShapeSpec, build_model
from detectron2.structures import ImageList
from detectron2.utils.events import EventStorage
from PIL import Image
from torch import nn
from torchvision.ops import box_convert

from updetr_d2.config import load_yaml_config, run_config_checks
from updetr_d2.data import register_unlabeled_folder
from updetr_d2.methods.simdetr import (
    ClusteringParams,
    FeatureExtractor,
    ProposalParams,
    PseudoLabelDatasetMapper,
    PseudoLabelRounds,
    SelfTrainingHook,
    SelfTrainingParams,
    cluster_proposals,
    extract_proposals,
    load_proposals,
    pseudo_label_coco,
    relabel,
    relabel_loader,
    write_class_agnostic_json,
)
from updetr_d2.modeling.meta_arch.base import SetPredictionDetector
from updetr_d2.solver import build_optimizer

from test_train_net import DETR_YAML_FAST, ROOT, train_net

DEMO_DEFORMABLE = os.path.join(ROOT, "projects", "DeformableDETR", "configs", "deformable_detr_R18_demo.yaml")
SIMDETR_CONFIGS = os.path.join(ROOT, "projects", "SimDETR", "configs")
COLOURS = [(230, 30, 30), (30, 200, 40), (240, 220, 20), (200, 40, 220)]


class AvgPoolBackbone(Backbone):
    """A stand-in extractor: RGB averaged over stride x stride cells."""

    def __init__(self, stride=16):
        super().__init__()
        self.stride = stride

    def forward(self, x):
        return {"res5": nn.functional.avg_pool2d(x, self.stride, ceil_mode=True)}

    def output_shape(self):
        return {"res5": ShapeSpec(channels=3, stride=self.stride)}


def extractor():
    return FeatureExtractor(AvgPoolBackbone(), "res5", [0.0, 0.0, 0.0], [1.0, 1.0, 1.0])


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    """6 images (sizes differ) of 2-3 coloured squares on a blue background."""
    folder = tmp_path_factory.mktemp("simdetr_images")
    rng = np.random.default_rng(0)
    for i in range(6):
        h, w = (128, 160) if i % 2 else (144, 112)
        img = np.zeros((h, w, 3), np.uint8)
        img[:] = (40, 40, 200)
        for j in range(2 + i % 2):
            y, x = 16 * rng.integers(0, h // 16 - 2), 16 * rng.integers(0, w // 16 - 2)
            img[y:y + 32, x:x + 32] = COLOURS[(i + j) % 4]
        Image.fromarray(img).save(folder / f"img_{i}.png")
    name = f"simdetr_test_images_{id(folder)}"
    register_unlabeled_folder(name, str(folder))
    return name, DatasetCatalog.get(name)


def run_stage_a(records, out, **kwargs):
    kwargs = {"min_size": 128, "max_size": 200, "chunk_size": 2, "num_workers": 0, **kwargs}
    return extract_proposals(extractor(), records, str(out), ProposalParams(max_proposals=8), **kwargs)


def class_agnostic_json(out):
    write_class_agnostic_json(load_proposals(str(out)), str(out / "proposals.json"))
    return (out / "proposals.json").read_text()


def test_stage_a_killed_run_resumes_to_the_same_json_and_shards_agree(image_folder, tmp_path):
    _, records = image_folder
    assert run_stage_a(records, tmp_path / "whole") == (3, 0)
    whole = class_agnostic_json(tmp_path / "whole")

    # "Killed" after one chunk (and a stale temporary file left behind), then rerun.
    assert run_stage_a(records, tmp_path / "resumed", max_chunks=1) == (1, 0)
    (tmp_path / "resumed" / "chunks" / "chunk_000001.npz.tmp99.npz").write_bytes(b"garbage")
    with pytest.raises(FileNotFoundError, match="unfinished"):
        load_proposals(str(tmp_path / "resumed"))
    assert run_stage_a(records, tmp_path / "resumed") == (2, 1)
    assert class_agnostic_json(tmp_path / "resumed") == whole

    for shard in (1, 0):  # two processes, in any order
        run_stage_a(records, tmp_path / "sharded", shard_index=shard, num_shards=2)
    assert class_agnostic_json(tmp_path / "sharded") == whole

    coco = json.loads(whole)
    assert len(coco["images"]) == 6 and all(a["category_id"] == 1 for a in coco["annotations"])
    for ann in coco["annotations"]:  # inside the original image
        img = coco["images"][ann["image_id"] - 1]
        x, y, w, h = ann["bbox"]
        assert x >= 0 and y >= 0 and x + w <= img["width"] + 1e-3 and y + h <= img["height"] + 1e-3

    with pytest.raises(ValueError, match="other settings"):
        extract_proposals(extractor(), records, str(tmp_path / "whole"), ProposalParams(max_proposals=5),
                          min_size=128, max_size=200, chunk_size=2, num_workers=0)


def test_stage_b_writes_round_0_that_registers_as_a_coco_dataset(image_folder, tmp_path):
    _, records = image_folder
    run_stage_a(records, tmp_path / "a")
    summary = cluster_proposals(str(tmp_path / "a"), str(tmp_path / "t"), ClusteringParams(num_clusters=3, nredo=2))
    assert summary["images"] == 6 and summary["num_clusters"] == 3
    rounds = PseudoLabelRounds(str(tmp_path / "t"))
    assert rounds.current() == {"round": 0, "file": "round_000.json", "iteration": 0, "num_classes": 3}

    name = f"simdetr_test_round0_{id(tmp_path)}"
    register_coco_instances(name, {}, rounds.path(0), "")
    loaded = DatasetCatalog.get(name)
    proposals = load_proposals(str(tmp_path / "a"))
    assert [r["file_name"] for r in loaded] == [os.path.abspath(r["file_name"]) for r in records]
    for rec, boxes in zip(loaded, proposals.boxes):
        got = np.array([a["bbox"] for a in rec["annotations"]], np.float32).reshape(-1, 4)
        got[:, 2:] += got[:, :2]  # COCO xywh -> xyxy
        np.testing.assert_allclose(got, boxes, atol=1e-3)
        assert all(0 <= a["category_id"] < 3 for a in rec["annotations"])


def write_round(rounds, records, boxes_per_image, labels_per_image, k, round_index=0, iteration=0):
    images = [{"id": i + 1, "file_name": os.path.abspath(r["file_name"]), "height": r["height"],
               "width": r["width"]} for i, r in enumerate(records)]
    coco = pseudo_label_coco(images, [np.array(b, np.float32).reshape(-1, 4) for b in boxes_per_image],
                             [np.array(l, np.int64) for l in labels_per_image], k,
                             info={"round": round_index, "iteration": iteration})
    return rounds.write(round_index, coco, iteration=iteration)


def test_mapper_serves_the_current_round_and_skips_images_with_too_few_targets(image_folder, tmp_path):
    _, records = image_folder
    rounds = PseudoLabelRounds(str(tmp_path))
    n = len(records)
    write_round(rounds, records, [[[0, 0, 20, 20], [30, 30, 60, 50]]] * (n - 1) + [[[0, 0, 9, 9]]],
                [[0, 1]] * (n - 1) + [[2]], 3)
    mapper = PseudoLabelDatasetMapper(is_train=True, augmentations=[], image_format="RGB", targets_dir=str(tmp_path))
    out = mapper(dict(records[0]))
    assert out["instances"].gt_boxes.tensor.tolist() == [[0, 0, 20, 20], [30, 30, 60, 50]]
    assert out["instances"].gt_classes.tolist() == [0, 1]
    assert mapper(dict(records[-1])) is None  # 1 target < SIMDETR.PROPOSALS.MIN_PROPOSALS

    write_round(rounds, records, [[[5, 5, 25, 25], [40, 40, 70, 70], [1, 1, 8, 8]]] * n, [[2, 2, 1]] * n, 3,
                round_index=1, iteration=10)
    out = mapper(dict(records[0]))  # the same mapper object: it follows current.json
    assert out["instances"].gt_classes.tolist() == [2, 2, 1]

    write_round(rounds, records, [[[5, 5, 25, 25], [40, 40, 70, 70]]] * n, [[0, 0]] * n, 3, round_index=2,
                iteration=20)
    assert rounds.rewind(15) == 1 and rounds.current()["round"] == 1  # resumed at 15: round 2 is not yet made
    assert rounds.rewind(20) == 2
    # A round made offline (the relabel tool: iteration 0) is what a fresh run starts from,
    # and a run numbers its rounds after it.
    write_round(rounds, records, [[[5, 5, 25, 25], [40, 40, 70, 70]]] * n, [[1, 1]] * n, 3, round_index=3)
    assert rounds.rewind(0) == 3 and rounds.base_round() == 3


class OracleDetector(nn.Module):
    """Answers every image with the targets of ``truth`` (file name -> xyxy boxes, labels)
    at score 1 (sigmoid logits), padded with hopeless queries, through the base detector's
    own box post-processing."""

    detections = SetPredictionDetector.detections
    _to_input_size = staticmethod(SetPredictionDetector._to_input_size)

    def __init__(self, truth, num_classes, num_queries=12):
        super().__init__()
        self.truth, self.num_classes, self.num_queries = truth, num_classes, num_queries

    def run_phases(self, batch):
        images = ImageList.from_tensors([x["image"].float() for x in batch])
        logits = torch.full((len(batch), self.num_queries, self.num_classes), -20.0)
        boxes = torch.full((len(batch), self.num_queries, 4), 0.1)
        for i, x in enumerate(batch):
            gt_boxes, labels = self.truth[os.path.abspath(x["file_name"])]
            h, w = x["image"].shape[-2:]
            scale = torch.tensor([w / x["width"], h / x["height"]] * 2)
            norm = torch.tensor(gt_boxes, dtype=torch.float32) * scale / torch.tensor([w, h, w, h])
            boxes[i, :len(labels)] = box_convert(norm, "xyxy", "cxcywh")
            logits[i, torch.arange(len(labels)), torch.tensor(labels)] = 20.0
        return types.SimpleNamespace(images=images, outputs={"pred_logits": logits, "pred_boxes": boxes})


def test_self_training_with_an_oracle_detector_is_a_fixed_point(image_folder, tmp_path):
    name, records = image_folder
    boxes = [[[4, 4, 40, 36], [60, 50, 100, 90], [10, 70, 30, 110]]] * len(records)
    labels = [[1, 0, 3]] * len(records)
    rounds = PseudoLabelRounds(str(tmp_path))
    write_round(rounds, records, boxes, labels, 4)
    _, truth = rounds.load(0)
    model = OracleDetector(truth, 4)
    recs, loader = relabel_loader([name], min_size=100, max_size=180, num_workers=0)
    coco = relabel(model, recs, loader, SelfTrainingParams(), 4)
    got = {img["file_name"]: [] for img in coco["images"]}
    for ann in coco["annotations"]:
        got[coco["images"][ann["image_id"] - 1]["file_name"]].append(ann)
    for file_name, (want_boxes, want_labels) in truth.items():
        anns = got[file_name]
        xywh = np.array([a["bbox"] for a in anns])
        xyxy = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], 1)
        want = sorted(zip(want_boxes.tolist(), want_labels.tolist()))
        have = sorted(zip(xyxy.tolist(), [a["category_id"] - 1 for a in anns]))
        assert [l for _, l in have] == [l for _, l in want]
        np.testing.assert_allclose([b for b, _ in have], [b for b, _ in want], atol=1e-3)
        assert all(a["score"] > 0.99 for a in anns)
    assert coco["info"]["statistics"]["fallback_fraction"] == 0.0

    # The hook: rounds spread over the run (PERIOD 0), relabelled with the model being trained.
    hook = SelfTrainingHook(str(tmp_path), SelfTrainingParams(rounds=2), period=0, dataset_names=[name],
                            min_size=100, max_size=180, num_workers=0)
    hook.trainer = types.SimpleNamespace(iter=0, max_iter=30, model=model, storage=None)
    assert hook.round_iterations() == [10, 20]
    with EventStorage(0) as storage:
        hook.trainer.storage = storage
        hook.before_train()
        for it in range(12):
            hook.trainer.iter = it
            hook.after_step()
    assert rounds.current()["round"] == 1 and rounds.current()["iteration"] == 10
    assert storage.history("self_training/targets_per_image").latest() == 3


def demo_deformable_cfg(num_classes, extra=()):
    cfg = load_yaml_config(DEMO_DEFORMABLE, ["MODEL.DETR.NUM_CLASSES", str(num_classes), "MODEL.DEVICE", "cpu",
                                             *extra])
    return cfg


def test_pretraining_loss_falls_and_the_backbone_trains_at_its_multiplier():
    torch.manual_seed(0)
    cfg = demo_deformable_cfg(8, ["SOLVER.BACKBONE_MULTIPLIER", "0.1", "SOLVER.BASE_LR", "1e-3"])
    model = build_model(cfg)
    model.train()
    optimizer = build_optimizer(cfg, model)
    backbone_ids = {id(p) for p in model.backbone.parameters() if p.requires_grad}
    for group in optimizer.param_groups:
        for p in group["params"]:
            if id(p) in backbone_ids:
                assert group["lr"] == pytest.approx(1e-4)
    from helpers import fake_input

    rng = np.random.default_rng(0)
    batch = []
    for i in range(16):  # 16 images, pseudo-classes 0..7
        xy = rng.integers(0, 40, size=(2, 2))
        boxes = [[x, y, x + 40, y + 40] for x, y in xy]
        batch.append(fake_input(96, 96, boxes, rng.integers(0, 8, size=2).tolist(), seed=i))
    before = {n: p.detach().clone() for n, p in model.backbone.named_parameters() if p.requires_grad}
    losses = []
    for step in range(25):
        loss = sum(model(batch[step % 2 * 8:(step % 2 + 1) * 8]).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert np.mean(losses[-4:]) < 0.8 * np.mean(losses[:4]), losses
    changed = [n for n, p in model.backbone.named_parameters() if p.requires_grad and not torch.equal(p, before[n])]
    assert len(changed) == len(before) > 0


def test_fine_tuning_hand_off_leaves_out_exactly_the_class_heads(caplog):
    pretrained = build_model(demo_deformable_cfg(16))
    model = build_model(demo_deformable_cfg(4))
    state = {k: v.clone() for k, v in pretrained.state_dict().items()}
    with caplog.at_level(logging.INFO, logger="updetr_d2.methods.simdetr.checkpoint"):
        result = model.load_state_dict(state, strict=False)
    heads = sorted(k for k in model.state_dict() if k.startswith("heads.class_embed."))
    assert len(heads) == 4  # box refinement: one class head per decoder layer
    assert sorted(result.missing_keys) == heads and result.unexpected_keys == []
    message = " ".join(r.getMessage() for r in caplog.records)
    assert all(k in message for k in heads) and "bbox_embed" not in message
    # A checkpoint with the same classes loads whole, silently.
    caplog.clear()
    again = model.load_state_dict(build_model(demo_deformable_cfg(4)).state_dict(), strict=False)
    assert again.missing_keys == [] and "re-initialised" not in caplog.text


def test_config_check_names_class_count_and_targets(tmp_path):
    pretrain = os.path.join(SIMDETR_CONFIGS, "simdetr_deformable_detr_R18_demo_pretrain.yaml")
    with pytest.raises(FileNotFoundError, match="SIMDETR.TARGETS_DIR"):
        run_config_checks(load_yaml_config(pretrain, ["SIMDETR.TARGETS_DIR", str(tmp_path / "none")]))
    PseudoLabelRounds(str(tmp_path)).set_current(0, 0, num_classes=16)
    run_config_checks(load_yaml_config(pretrain, ["SIMDETR.TARGETS_DIR", str(tmp_path)]))
    with pytest.raises(ValueError, match="MODEL.DETR.NUM_CLASSES=5 .* 16 classes"):
        run_config_checks(load_yaml_config(pretrain, ["SIMDETR.TARGETS_DIR", str(tmp_path),
                                                      "MODEL.DETR.NUM_CLASSES", "5"]))


def test_the_chain_through_the_tools(tmp_path):
    """Stage A and B with tools/simdetr.py on the demo's unlabeled images, stage C with one
    self-training round (stage D) in a train_net run, then fine-tuning from it (stage E)."""
    import subprocess
    import sys

    tool = [sys.executable, os.path.join(ROOT, "tools", "simdetr.py")]
    a, t = str(tmp_path / "proposals"), str(tmp_path / "targets")
    subprocess.run(tool + ["proposals", "--config-file", os.path.join(SIMDETR_CONFIGS, "proposals_effnet_lite0_demo.yaml"),
                           "--dataset", "updetr_demo_unlabeled", "--output", a, "--num-workers", "1",
                           "INPUT.MIN_SIZE_TEST", "256", "INPUT.MAX_SIZE_TEST", "256"],
                   check=True, cwd=ROOT, capture_output=True)
    out = subprocess.run(tool + ["cluster", "--proposals", a, "--output", t, "SIMDETR.CLUSTERING.NUM_CLUSTERS", "6"],
                         check=True, cwd=ROOT, capture_output=True, text=True).stdout
    assert json.loads(out[out.index("{"):])["num_clusters"] == 6
    subprocess.run(tool + ["draw", "--targets", t, "--output", str(tmp_path / "pictures"), "--num-images", "2"],
                   check=True, cwd=ROOT, capture_output=True)
    assert len(os.listdir(tmp_path / "pictures")) == 2

    pre = str(tmp_path / "pretrain")
    output = train_net("--config-file", os.path.join(SIMDETR_CONFIGS, "simdetr_deformable_detr_R18_demo_pretrain.yaml"),
                       *DETR_YAML_FAST, "MODEL.DETR.NUM_CLASSES", "6", "SIMDETR.TARGETS_DIR", t,
                       "SIMDETR.SELF_TRAINING.PERIOD", "1", "SOLVER.MAX_ITER", "2", "SOLVER.CHECKPOINT_PERIOD", "2",
                       "OUTPUT_DIR", pre)
    assert "Self-training round 1 after iteration 1" in output
    assert PseudoLabelRounds(t).current()["round"] == 1 and os.path.exists(os.path.join(pre, "model_final.pth"))

    output = train_net("--config-file", DEMO_DEFORMABLE, *DETR_YAML_FAST, "SOLVER.MAX_ITER", "1", "DATASETS.TEST", "()",
                       "MODEL.WEIGHTS", os.path.join(pre, "model_final.pth"), "OUTPUT_DIR", str(tmp_path / "finetune"))
    assert "re-initialised, not loaded: heads.class_embed.0.weight [6, 128]" in output


def test_checkpointer_hand_off_names_the_class_heads_before_shape_checks(tmp_path, caplog):
    """Through the checkpointer (which drops shape mismatches before loading), the hand-off
    still names what it leaves out, and nothing else is missing."""
    from updetr_d2.checkpoint import DetrCheckpointer

    path = str(tmp_path / "pretrain.pth")
    torch.save({"model": build_model(demo_deformable_cfg(16)).state_dict()}, path)
    model = build_model(demo_deformable_cfg(4))
    with caplog.at_level(logging.INFO):
        DetrCheckpointer(model).load(path)
    assert "re-initialised, not loaded: heads.class_embed.0.weight [16, 128]" in caplog.text
    assert "incompatible shapes" not in caplog.text
