"""One-shot detection (UP-DETR section 6): the query/target mapper, the AP50 protocol and
one training step of a one-patch UpDetr."""
import copy
import math
import os

import cv2
import numpy as np
import pytest
import torch
from torch import nn

import updetr_d2  # noqa: F401
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog, build_detection_train_loader
from detectron2.modeling import build_model
from detectron2.structures import Boxes, BoxMode, Instances
from detectron2.utils.events import EventStorage
from updetr_d2 import add_updetr_config
from updetr_d2.data.mappers import MAPPER_REGISTRY, build_dataset_mapper
from updetr_d2.methods.updetr import OneShotDatasetMapper, UpDetr, evaluate_one_shot

from helpers import load_tool

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PRETRAIN = os.path.join(ROOT, "projects", "UPDETR", "configs", "updetr_R18_demo_pretrain.yaml")
TRAIN, VAL = "updetr_demo_train", "updetr_demo_val"
CLASSES = ["circle", "square", "triangle", "star"]


def xyxy(ann):
    return BoxMode.convert(list(ann["bbox"]), ann["bbox_mode"], BoxMode.XYXY_ABS)


def class_boxes(record, c):
    return [xyxy(a) for a in record["annotations"] if a["category_id"] == c and not a.get("iscrowd", 0)]


def read_rgb(path):
    return cv2.imread(path, cv2.IMREAD_COLOR)[..., ::-1]


@pytest.fixture(scope="module")
def train_records():
    return DatasetCatalog.get(TRAIN)


@pytest.fixture(scope="module")
def mapper(train_records):
    return OneShotDatasetMapper(dataset_dicts=train_records, patch_size=32, min_sizes=(128,), max_size=192,
                                seed=0)


# ----------------------------------------------------------------------------- mapper
def test_query_comes_from_another_image_of_the_same_class(mapper, train_records):
    by_file = {r["file_name"]: r for r in train_records}
    mapped = 0
    for record in train_records:
        out = mapper(record)
        if not record["annotations"]:
            assert out is None  # the demo's empty image: nothing to query
            continue
        mapped += 1
        c = out["query_class"]
        source, box = out["query_source"]
        assert source != record["file_name"]
        # the crop is (the whole-pixel cover of) an instance of the same class there
        src_boxes = class_boxes(by_file[source], c)
        assert any(np.allclose(box, [math.floor(b[0]), math.floor(b[1]), math.ceil(b[2]), math.ceil(b[3])])
                   for b in src_boxes)
        x0, y0, x1, y1 = (int(v) for v in box)
        expected = cv2.resize(np.ascontiguousarray(read_rgb(source)[y0:y1, x0:x1]), (32, 32),
                              interpolation=cv2.INTER_LINEAR)
        assert out["patches"].dtype == torch.uint8 and out["patches"].shape == (1, 3, 32, 32)
        assert torch.equal(out["patches"][0], torch.from_numpy(expected.transpose(2, 0, 1).copy()))
    assert mapped == sum(1 for r in train_records if r["annotations"])


def test_targets_are_exactly_the_query_class_boxes(mapper, train_records):
    for record in train_records[:12]:
        out = mapper(record)
        if out is None:
            continue
        c = out["query_class"]
        assert c in {a["category_id"] for a in record["annotations"]}
        h, w = out["image"].shape[1:]
        assert min(h, w) == 128 or max(h, w) == 192  # ResizeShortestEdge(128, 192)
        inst = out["instances"]
        assert inst.image_size == (h, w)
        assert inst.gt_classes.tolist() == [0] * len(inst)
        scale = torch.tensor([w / record["width"], h / record["height"]] * 2)
        expected = torch.tensor(class_boxes(record, c), dtype=torch.float32) * scale
        assert len(inst) == len(expected) >= 1
        assert torch.allclose(inst.gt_boxes.tensor, expected, atol=1e-3)
        assert (out["height"], out["width"]) == (record["height"], record["width"])


def test_seeded_mapper_is_deterministic(train_records):
    def run(seed):
        m = OneShotDatasetMapper(dataset_dicts=train_records, patch_size=16, min_sizes=(96, 128, 160),
                                 max_size=256, seed=seed)
        return [m(r) for r in train_records[:10]]

    a, b, c = run(3), run(3), run(4)
    for x, y in zip(a, b):
        assert (x is None) == (y is None)
        if x is not None:
            assert x["query_class"] == y["query_class"] and x["query_source"] == y["query_source"]
            assert torch.equal(x["image"], y["image"]) and torch.equal(x["patches"], y["patches"])
    keys = lambda outs: [None if o is None else (o["query_class"], o["query_source"][0], o["image"].shape)
                         for o in outs]
    assert keys(a) != keys(c)
    # the global numpy RNG is left as it was
    state = np.random.get_state()[1].copy()
    run(5)
    assert np.array_equal(state, np.random.get_state()[1])


def test_unseeded_mapper_varies(train_records):
    m = OneShotDatasetMapper(dataset_dicts=train_records, patch_size=16, min_sizes=(128,), max_size=192)
    record = max(train_records, key=lambda r: len({a["category_id"] for a in r["annotations"]}))
    draws = {(o["query_class"], o["query_source"][0]) for o in (m(record) for _ in range(20))}
    assert len(draws) > 1


def test_classes_restriction(train_records):
    m = OneShotDatasetMapper(dataset_names=TRAIN, classes=["circle", "star"], patch_size=16,
                             min_sizes=(128,), max_size=192, seed=1)
    assert m.classes == [0, 3]
    for record in train_records:
        out = m(record)
        present = {a["category_id"] for a in record["annotations"]}
        if present & {0, 3}:
            assert out is not None and out["query_class"] in present & {0, 3}
        else:
            assert out is None
    with pytest.raises(ValueError, match="unknown class"):
        OneShotDatasetMapper(dataset_names=TRAIN, classes=["dog"])


def test_none_when_no_other_image_has_the_class(train_records):
    record = next(r for r in train_records if r["annotations"])
    alone = OneShotDatasetMapper(dataset_dicts=[record], patch_size=16, min_sizes=(128,), max_size=192, seed=0)
    assert alone(record) is None
    # a class that only this image has is skipped; another class is chosen instead
    others = [copy.deepcopy(r) for r in train_records if r is not record]
    c = record["annotations"][0]["category_id"]
    for r in others:
        r["annotations"] = [a for a in r["annotations"] if a["category_id"] != c]
    m = OneShotDatasetMapper(dataset_dicts=[record] + others, patch_size=16, min_sizes=(128,), max_size=192,
                             seed=0)
    rest = {a["category_id"] for a in record["annotations"]} - {c}
    for seed in range(5):
        m.seed = seed
        out = m(record)
        assert (out is None) if not rest else out["query_class"] in rest


def one_shot_cfg(**overrides):
    cfg = get_cfg()
    add_updetr_config(cfg)
    cfg.merge_from_file(PRETRAIN)
    d = cfg.MODEL.DETR
    d.HIDDEN_DIM, d.NHEADS, d.DIM_FEEDFORWARD, d.ENC_LAYERS, d.DEC_LAYERS = 32, 2, 64, 1, 2
    d.NUM_OBJECT_QUERIES = 8
    cfg.INPUT.QUERY_PATCH.NUM_PATCHES = 1
    cfg.MODEL.UPDETR.FEATURE_RECONSTRUCTION = False
    cfg.MODEL.DEVICE = "cpu"
    cfg.DATASETS.TRAIN, cfg.DATASETS.TEST = (TRAIN,), (VAL,)
    cfg.INPUT.DATASET_MAPPER = "OneShotDatasetMapper"
    cfg.INPUT.QUERY_PATCH.SIZE = 32
    cfg.INPUT.QUERY_PATCH.SEED = 0
    cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN = (128,), 192
    cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST = 128, 192
    cfg.merge_from_list([item for pair in overrides.items() for item in pair])
    return cfg


def test_mapper_from_config():
    assert MAPPER_REGISTRY.get("OneShotDatasetMapper") is OneShotDatasetMapper
    cfg = one_shot_cfg(**{"INPUT.ONE_SHOT.SEEN_CLASSES": ("square", "triangle")})
    train = build_dataset_mapper(cfg, is_train=True)
    assert isinstance(train, OneShotDatasetMapper)
    assert train.classes == [1, 2] and train.patch_size == 32 and train.seed == 0
    assert len(train.file_names) == len(DatasetCatalog.get(TRAIN))
    test = build_dataset_mapper(cfg, is_train=False)
    assert test.classes is None and len(test.file_names) == len(DatasetCatalog.get(VAL))


# ----------------------------------------------------------------------------- training
def test_one_patch_updetr_trains_on_mapper_output():
    torch.manual_seed(0)
    cfg = one_shot_cfg()
    model = build_model(cfg)
    assert isinstance(model, UpDetr) and model.feature_align is None
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.SOLVER.IMS_PER_BATCH = 2
    loader = build_detection_train_loader(cfg, mapper=build_dataset_mapper(cfg, is_train=True))
    batch = next(iter(loader))
    assert all(x["patches"].shape == (1, 3, 32, 32) for x in batch)
    mapper = OneShotDatasetMapper(cfg, True)
    # an input with several target boxes for its single patch
    many = next(o for o in map(mapper, DatasetCatalog.get(TRAIN)) if o is not None and len(o["instances"]) > 1)
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    with EventStorage():
        losses = model(batch + [many])
    assert {"loss_ce", "loss_bbox", "loss_giou"} <= set(losses)
    assert not any("feature" in k for k in losses)
    assert all(torch.isfinite(v) for v in losses.values())
    before = model.transformer.state_dict()["decoder.layers.0.linear1.weight"].clone()
    sum(losses.values()).backward()
    optimizer.step()
    assert not torch.equal(before, model.transformer.state_dict()["decoder.layers.0.linear1.weight"])
    # inference: one group, every query labelled with patch 0, boxes in input coordinates
    model.eval()
    with torch.no_grad():
        result = model([{k: many[k] for k in ("image", "patches", "height", "width")}])[0]["instances"]
    assert len(result) == 8 and result.pred_classes.tolist() == [0] * 8
    assert result.image_size == (many["height"], many["width"])


def test_one_crop_uses_the_first_group_of_a_model_built_for_more_patches():
    """A pretraining model (8 queries grouped for 4 patches) given one query crop answers
    with its first group only, 8 // 4 = 2 queries, as the original with fewer patches;
    the one-patch model of one-shot training answers with all 8 (one group, no mask)."""
    torch.manual_seed(0)
    one = OneShotDatasetMapper(one_shot_cfg(), False)
    x = next(o for o in map(one, DatasetCatalog.get(VAL)) if o is not None)
    inputs = {k: x[k] for k in ("image", "patches", "height", "width")}
    for num_patches, decoded in ((4, 2), (1, 8)):
        model = build_model(one_shot_cfg(**{"INPUT.QUERY_PATCH.NUM_PATCHES": num_patches})).eval()
        with torch.no_grad():
            state = model.run_phases([inputs])
        assert state.outputs["pred_boxes"].shape == (1, decoded, 4)
        assert state.queries.meta["query_groups"].tolist() == [0] * decoded
        mask = state.queries.self_attn_mask
        assert mask.shape == (decoded, decoded) and not mask.any()  # one group: nothing blocked
    res = evaluate_one_shot(build_model(one_shot_cfg(**{"INPUT.QUERY_PATCH.NUM_PATCHES": 4})),
                            VAL, ["circle"], 32, 128, 192, max_images=1)
    assert res["AP50"] and all(0.0 <= v <= 100.0 for v in res["AP50"].values())


# ----------------------------------------------------------------------------- evaluation
class FakeModel(nn.Module):
    """Returns the ground truth of the query class (score 1) plus low-score clutter,
    optionally shifted far away, or with wrong-class boxes scored higher."""

    def __init__(self, dataset_name, shift=0.0, shift_classes=None):
        super().__init__()
        self.records = {r["file_name"]: r for r in DatasetCatalog.get(dataset_name)}
        self.shift, self.shift_classes = shift, shift_classes
        self.calls = []
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, batched_inputs):
        assert not self.training and not torch.is_grad_enabled() and len(batched_inputs) == 1
        x = batched_inputs[0]
        assert x["patches"].shape[0] == 1
        self.calls.append((x["file_name"], x["query_class"]))
        h, w = x["height"], x["width"]
        boxes = torch.tensor(class_boxes(self.records[x["file_name"]], x["query_class"]), dtype=torch.float32)
        if self.shift_classes is None or x["query_class"] in self.shift_classes:
            boxes = boxes + self.shift
        clutter = torch.tensor([[0.0, 0.0, 3.0, 3.0], [w - 4.0, h - 4.0, w - 1.0, h - 1.0]])
        result = Instances((h, w))
        result.pred_boxes = Boxes(torch.cat([boxes, clutter]))
        result.scores = torch.cat([torch.ones(len(boxes)), torch.full((2,), 0.1)])
        result.pred_classes = torch.zeros(len(boxes) + 2, dtype=torch.long)
        return [{"instances": result}]


def test_perfect_model_scores_100_and_far_boxes_0():
    val = DatasetCatalog.get(VAL)
    model = FakeModel(VAL).train()
    res = evaluate_one_shot(model, VAL, ["circle", "square"], 32, 128, 192, seed=0)
    assert model.training  # mode restored
    present = {(r["file_name"], a["category_id"]) for r in val for a in r["annotations"]}
    assert set(model.calls) == present and len(model.calls) == len(present)  # one query per pair
    assert set(res["AP50"]) == set(CLASSES)
    assert all(v == pytest.approx(100.0) for v in res["AP50"].values())
    assert res["seen_AP50"] == pytest.approx(100.0) and res["unseen_AP50"] == pytest.approx(100.0)
    assert sum(res["num_queries"].values()) == len(present)

    far = evaluate_one_shot(FakeModel(VAL, shift=10000.0), VAL, ["circle"], 32, 128, 192)
    assert all(v == pytest.approx(0.0) for v in far["AP50"].values())
    assert far["seen_AP50"] == 0.0 and far["unseen_AP50"] == 0.0


def test_seen_and_unseen_means_and_max_images():
    mixed = FakeModel(VAL, shift=10000.0, shift_classes={2, 3})  # triangle and star missed
    res = evaluate_one_shot(mixed, VAL, ["circle", "square"], 32, 128, 192, max_images=6)
    assert len({f for f, _ in mixed.calls}) <= 6
    assert res["AP50"]["circle"] == pytest.approx(100.0) and res["AP50"]["square"] == pytest.approx(100.0)
    assert res["AP50"]["triangle"] == pytest.approx(0.0) and res["AP50"]["star"] == pytest.approx(0.0)
    assert res["seen_AP50"] == pytest.approx(100.0) and res["unseen_AP50"] == pytest.approx(0.0)
    # no seen classes given: all are seen, no unseen mean
    res = evaluate_one_shot(mixed, VAL, [], 32, 128, 192, max_images=6)
    assert "unseen_AP50" not in res and res["seen_AP50"] == pytest.approx(50.0)


def register_pairs_dataset():
    """Two demo images with hand-made labels: class 0 and class 1 in both, and class 2
    in the first only (never queried: no other image has it)."""
    name = "one_shot_test_pairs"
    if name in DatasetCatalog.list():
        return name
    val = DatasetCatalog.get(VAL)[:2]

    def ann(c, box):
        return {"category_id": c, "bbox": box, "bbox_mode": BoxMode.XYXY_ABS, "iscrowd": 0}

    records = []
    for i, r in enumerate(val):
        anns = [ann(0, [10.0, 10.0, 60.0, 60.0]), ann(1, [100.0, 100.0, 160.0, 150.0])]
        if i == 0:
            anns.append(ann(2, [30.0, 150.0, 90.0, 200.0]))
        records.append(dict(r, annotations=anns))
    DatasetCatalog.register(name, lambda: copy.deepcopy(records))
    MetadataCatalog.get(name).set(thing_classes=["a", "b", "c"])
    return name


class AllBoxesModel(nn.Module):
    """For the query class: its boxes scored 0.5, every other object of the image 1.0."""

    def __init__(self, name):
        super().__init__()
        self.records = {r["file_name"]: r for r in DatasetCatalog.get(name)}

    def forward(self, batched_inputs):
        x = batched_inputs[0]
        anns = self.records[x["file_name"]]["annotations"]
        result = Instances((x["height"], x["width"]))
        result.pred_boxes = Boxes(torch.tensor([a["bbox"] for a in anns]))
        result.scores = torch.tensor([0.5 if a["category_id"] == x["query_class"] else 1.0 for a in anns])
        return [{"instances": result}]


def test_ap_is_computed_per_queried_pair():
    """Class "a" is queried in 2 images; each query yields its box (score 0.5) and the
    image's other objects (1.0, false positives for "a": 2 in the first image, 1 in the
    second). Ranked: 3 FP, then 2 TP -> precision 2/5 at full recall and, interpolated,
    at every recall: AP50 = 40. The same for "b". "c" is in one image only: never queried,
    so it is left out (no NaN), and its box is no ground truth for the other queries."""
    name = register_pairs_dataset()
    res = evaluate_one_shot(AllBoxesModel(name), name, ["a"], 16, 128, 192)
    assert set(res["AP50"]) == {"a", "b"}
    assert res["num_queries"] == {"a": 2, "b": 2}
    assert res["AP50"]["a"] == pytest.approx(40.0) and res["AP50"]["b"] == pytest.approx(40.0)
    assert res["seen_AP50"] == pytest.approx(40.0) and res["unseen_AP50"] == pytest.approx(40.0)
    assert not any(math.isnan(v) for v in res["AP50"].values())


def test_one_shot_eval_tool_runs_a_real_model(tmp_path, capsys):
    tool = load_tool("one_shot_eval")
    cfg = one_shot_cfg()
    cfg_file = tmp_path / "one_shot.yaml"
    cfg_file.write_text(cfg.dump())
    out = tmp_path / "res.json"
    res = tool.main(["--config-file", str(cfg_file), "--max-images", "2", "--output", str(out),
                     "INPUT.ONE_SHOT.SEEN_CLASSES", "('circle', 'square')"])
    printed = capsys.readouterr().out
    assert "seen_AP50" in printed and "unseen_AP50" in printed
    assert res["AP50"] and all(0.0 <= v <= 100.0 for v in res["AP50"].values())
    assert out.is_file()
