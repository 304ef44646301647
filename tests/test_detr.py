"""The Detr meta-architecture: yaml/lazy parity, training and inference contracts, a tiny
model that overfits demo images, and checkpoint round trips."""
import copy
import os

import pytest
import torch

import updetr_d2  # noqa: F401
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import LazyConfig, get_cfg, instantiate
from detectron2.data import DatasetCatalog, DatasetMapper, MetadataCatalog
from detectron2.data import transforms as T
from detectron2.evaluation import COCOEvaluator, inference_on_dataset
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage
from updetr_d2 import add_updetr_config
from updetr_d2.solver import build_optimizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_detr_cfg(num_queries=10):
    """A DETR small enough to train in seconds: ResNet-18 (GN, not frozen), a 64-wide
    transformer with 1 encoder and 2 decoder layers."""
    cfg = get_cfg()
    add_updetr_config(cfg)
    cfg.merge_from_file(os.path.join(ROOT, "configs", "demo", "detr_R18_demo.yaml"))
    d = cfg.MODEL.DETR
    d.HIDDEN_DIM, d.NHEADS, d.DIM_FEEDFORWARD = 64, 4, 128
    d.ENC_LAYERS, d.DEC_LAYERS, d.NUM_OBJECT_QUERIES, d.DROPOUT = 1, 2, num_queries, 0.0
    cfg.SOLVER.BASE_LR = 1e-3
    cfg.MODEL.DEVICE = "cpu"
    return cfg


def fake_input(h, w, boxes, classes):
    inst = Instances((h, w))
    inst.gt_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
    inst.gt_classes = torch.tensor(classes, dtype=torch.int64)
    return {"image": torch.randint(0, 255, (3, h, w)).float(), "instances": inst, "height": h, "width": w}


def test_yaml_and_lazy_build_the_same_model():
    cfg = get_cfg()
    add_updetr_config(cfg)
    cfg.merge_from_file(os.path.join(ROOT, "configs", "detr", "detr_r50.yaml"))
    from_yaml = build_model(cfg)
    from_lazy = instantiate(LazyConfig.load(os.path.join(ROOT, "configs", "detr", "detr_r50.py")).model)
    shapes = lambda m: {k: tuple(v.shape) for k, v in m.state_dict().items()}  # noqa: E731
    assert shapes(from_yaml) == shapes(from_lazy)
    assert len(shapes(from_yaml)) > 400
    # The criterion is configured alike too (its class count is an interpolation in the lazy file).
    for model in (from_yaml, from_lazy):
        ce = model.criterion.loss_terms[0]
        assert ce.num_classes == 80 and ce.empty_weight[-1].item() == pytest.approx(0.1)
        assert model.heads.class_embed.out_features == 81
    frozen = [n for n, p in from_yaml.named_parameters() if not p.requires_grad]
    assert frozen and all(".stem." in n or ".res2." in n for n in frozen)  # FREEZE_AT=2


def test_training_step_losses_and_gradients():
    torch.manual_seed(0)
    model = build_model(tiny_detr_cfg())
    model.train()
    batch = [fake_input(96, 128, [[10, 10, 50, 60], [60, 20, 120, 90]], [0, 3]),
             fake_input(128, 96, [[5, 5, 40, 40]], [2]),
             fake_input(80, 80, [], [])]  # an image without objects
    with EventStorage() as storage:
        losses = model(batch)
    # final layer + 1 auxiliary layer (2 decoder layers), each with CE, L1 and GIoU
    assert set(losses) == {f"loss_{n}{s}" for n in ("ce", "bbox", "giou") for s in ("", "_0")}
    assert all(torch.isfinite(v) for v in losses.values())
    assert "class_error" in storage.latest()
    sum(losses.values()).backward()
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert all(p.grad is not None for p in trainable)
    assert torch.isfinite(torch.stack([p.grad.norm() for p in trainable])).all()


def test_inference_returns_instances_in_input_coordinates():
    torch.manual_seed(0)
    model = build_model(tiny_detr_cfg(num_queries=7)).eval()
    inputs = [{"image": torch.rand(3, 64, 96) * 255, "height": 128, "width": 192}]
    with torch.no_grad():
        (out,) = model(inputs)
    inst = out["instances"]
    assert inst.image_size == (128, 192)
    assert len(inst) <= 7 and set(inst.get_fields()) == {"pred_boxes", "scores", "pred_classes", "query_index"}
    assert inst.query_index.tolist() == sorted(set(inst.query_index.tolist()))  # one detection per query
    boxes = inst.pred_boxes.tensor
    assert (boxes[:, 0::2] >= 0).all() and (boxes[:, 0::2] <= 192).all()
    assert (boxes[:, 1::2] >= 0).all() and (boxes[:, 1::2] <= 128).all()
    assert ((inst.scores > 0) & (inst.scores < 1)).all()
    assert ((inst.pred_classes >= 0) & (inst.pred_classes < 4)).all()


def test_training_without_instances_names_the_problem():
    model = build_model(tiny_detr_cfg()).train()
    with pytest.raises(ValueError, match="instances"):
        model([{"image": torch.rand(3, 64, 64)}])


@pytest.fixture
def two_demo_images():
    """Two labelled demo training images of one size (so the padded batch is the
    same in training and in one-image evaluation), registered as their own dataset."""
    records = [r for r in DatasetCatalog.get("updetr_demo_train")
               if r["annotations"] and (r["height"], r["width"]) == (256, 320)][:2]
    assert len(records) == 2
    name = "test_detr_overfit"
    DatasetCatalog.register(name, lambda: copy.deepcopy(records))
    train_meta = MetadataCatalog.get("updetr_demo_train")
    MetadataCatalog.get(name).set(thing_classes=train_meta.thing_classes,
                                  thing_dataset_id_to_contiguous_id=train_meta.thing_dataset_id_to_contiguous_id)
    yield name, records
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)


def test_tiny_detr_overfits_demo_images(two_demo_images, tmp_path):
    """Trained on two images, a tiny DETR finds their objects: COCO AP50 > 0.5."""
    name, records = two_demo_images
    torch.manual_seed(0)
    cfg = tiny_detr_cfg()
    model = build_model(cfg)
    optimizer = build_optimizer(cfg, model)
    resize = [T.ResizeShortestEdge(160, 256)]
    batch = [DatasetMapper(is_train=True, augmentations=resize, image_format="RGB")(copy.deepcopy(r))
             for r in records]
    model.train()
    with EventStorage():
        for _ in range(120):
            loss = sum(model(batch).values())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()
    test_mapper = DatasetMapper(is_train=False, augmentations=resize, image_format="RGB")
    loader = [[test_mapper(copy.deepcopy(r))] for r in records]
    results = inference_on_dataset(model, loader, COCOEvaluator(name, output_dir=str(tmp_path)))
    assert results["bbox"]["AP50"] > 50.0, results


def test_checkpoint_round_trip_gives_identical_predictions(tmp_path):
    torch.manual_seed(0)
    cfg = tiny_detr_cfg()
    model = build_model(cfg).eval()
    DetectionCheckpointer(model, save_dir=str(tmp_path)).save("tiny")
    torch.manual_seed(1)
    restored = build_model(cfg).eval()
    DetectionCheckpointer(restored).load(str(tmp_path / "tiny.pth"))
    inputs = [{"image": torch.rand(3, 96, 128) * 255, "height": 96, "width": 128}]
    with torch.no_grad():
        a, b = model(inputs)[0]["instances"], restored(inputs)[0]["instances"]
    assert torch.equal(a.pred_boxes.tensor, b.pred_boxes.tensor)
    assert torch.equal(a.scores, b.scores) and torch.equal(a.pred_classes, b.pred_classes)


def test_demo_configs_build_the_same_model():
    cfg = get_cfg()
    add_updetr_config(cfg)
    cfg.merge_from_file(os.path.join(ROOT, "configs", "demo", "detr_R18_demo.yaml"))
    lazy = LazyConfig.load(os.path.join(ROOT, "configs", "demo", "detr_R18_demo.py"))
    shapes = lambda m: {k: tuple(v.shape) for k, v in m.state_dict().items()}  # noqa: E731
    from_yaml, from_lazy = build_model(cfg), instantiate(lazy.model)
    assert shapes(from_yaml) == shapes(from_lazy)
    assert from_lazy.criterion.loss_terms[0].num_classes == 4
    assert from_yaml.query_generator.num_queries == from_lazy.query_generator.num_queries == 20
