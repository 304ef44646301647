"""Each fix in updetr_d2.compat (and the setuptools pin) is exercised by the Detectron2
feature it repairs, with a known right answer."""
import json
import os
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import updetr_d2
from updetr_d2 import compat
from detectron2.data import DatasetCatalog, MetadataCatalog


@pytest.fixture
def registered(request):
    """Register datasets under unique names and remove them afterwards."""
    names = []

    def register(name, loader, **metadata):
        name = f"{request.node.name}_{name}"
        DatasetCatalog.register(name, loader)
        MetadataCatalog.get(name).set(**metadata)
        names.append(name)
        return name

    yield register
    for name in names:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def test_apply_is_idempotent_and_reports_fixes():
    assert compat.apply() == compat.apply()
    assert all(isinstance(name, str) for name in compat.APPLIED)


def test_pillow_linear_default_argument():
    from detectron2.data.transforms.transform import ExtentTransform

    if compat.project_build_level() == 0:  # a project build has BILINEAR in its sources
        assert Image.LINEAR == Image.BILINEAR
    assert ExtentTransform.__init__.__defaults__[0] == Image.BILINEAR
    image = np.arange(16 * 16 * 3, dtype=np.uint8).reshape(16, 16, 3)
    out = ExtentTransform(src_rect=(0, 0, 16, 16), output_size=(8, 8)).apply_image(image)
    assert out.shape == (8, 8, 3)


def test_numpy_aliases_sem_seg_evaluator(registered, tmp_path):
    """SemSegEvaluator uses np.int / np.float: perfect predictions give mIoU 100."""
    from detectron2.evaluation import SemSegEvaluator

    gt = np.zeros((6, 8), dtype=np.uint8)
    gt[:, 4:] = 1
    gt[0, 0] = 255  # ignored pixel
    gt_path = str(tmp_path / "gt.png")
    Image.fromarray(gt).save(gt_path)
    records = [{"file_name": "img.jpg", "sem_seg_file_name": gt_path, "height": 6, "width": 8}]
    name = registered("semseg", lambda: records, stuff_classes=["a", "b"], ignore_label=255)
    evaluator = SemSegEvaluator(name, distributed=False)
    evaluator.reset()
    logits = torch.zeros(2, 6, 8)
    logits[1, :, 4:] = 1.0
    evaluator.process([{"file_name": "img.jpg"}], [{"sem_seg": logits}])
    assert evaluator.evaluate()["sem_seg"]["mIoU"] == pytest.approx(100.0)


def test_numpy_aliases_class_histogram(caplog):
    from detectron2.data.build import print_instances_class_histogram

    dicts = [{"annotations": [{"category_id": 0}, {"category_id": 1}, {"category_id": 1}]}]
    with caplog.at_level("INFO"):
        print_instances_class_histogram(dicts, ["cat", "dog"])
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "Distribution of instances" in text and "dog" in text


def test_missing_compiled_ops_stub():
    import detectron2.layers  # noqa: F401  (imports deform_conv, which imports _C)

    stub = sys.modules["detectron2._C"]
    # The run-time stand-in, or the detectron2/_C.py a project build installs.
    if getattr(stub, "HAS_COMPILED_OPS", True) is not False:
        pytest.skip("this Detectron2 has its compiled ops")
    assert ("fix_missing_compiled_ops" in compat.APPLIED) == isinstance(stub, compat._MissingCompiledOps)
    with pytest.raises(NotImplementedError, match="box_iou_rotated"):
        stub.box_iou_rotated(torch.zeros(1, 5), torch.zeros(1, 5))
    assert not hasattr(stub, "__path__")


def test_coco_evaluator_default_fast_impl_gives_ap_100(registered, tmp_path):
    """COCOEvaluator's default (compiled COCOeval) falls back to pycocotools."""
    from detectron2.evaluation import COCOEvaluator
    from detectron2.structures import Boxes, BoxMode, Instances

    boxes = {1: [[2, 3, 20, 10], [30, 30, 15, 25]], 2: [[5, 5, 40, 30]]}
    coco = {
        "images": [{"id": i, "file_name": f"{i}.jpg", "height": 64, "width": 64} for i in boxes],
        "annotations": [
            {"id": 10 * i + k, "image_id": i, "category_id": 1 + k % 2, "bbox": b,
             "area": b[2] * b[3], "iscrowd": 0}
            for i, bs in boxes.items() for k, b in enumerate(bs)
        ],
        "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
    }
    json_file = tmp_path / "gt.json"
    json_file.write_text(json.dumps(coco))
    name = registered("coco", lambda: [], json_file=str(json_file), evaluator_type="coco",
                      thing_classes=["a", "b"],
                      thing_dataset_id_to_contiguous_id={1: 0, 2: 1})
    evaluator = COCOEvaluator(name, output_dir=str(tmp_path), distributed=False)
    evaluator.reset()
    for image_id, bs in boxes.items():
        inst = Instances((64, 64))
        inst.pred_boxes = Boxes(BoxMode.convert(torch.tensor(bs, dtype=torch.float32),
                                                BoxMode.XYWH_ABS, BoxMode.XYXY_ABS))
        inst.scores = torch.ones(len(bs))
        inst.pred_classes = torch.tensor([k % 2 for k in range(len(bs))])
        evaluator.process([{"image_id": image_id}], [{"instances": inst}])
    assert evaluator.evaluate()["bbox"]["AP"] == pytest.approx(100.0)


def test_flop_count_without_caffe2():
    from detectron2.utils.analysis import FlopCountAnalysis

    conv = torch.nn.Conv2d(3, 8, kernel_size=3, bias=False)
    flops = FlopCountAnalysis(conv, (torch.zeros(1, 3, 8, 8),))
    flops.unsupported_ops_warnings(False)
    assert flops.total() == 8 * 6 * 6 * 3 * 3 * 3


def test_map_dataset_retries_when_mapper_returns_none():
    from detectron2.data.common import MapDataset

    dataset = MapDataset(list(range(6)), lambda x: None if x < 3 else x * 10)
    assert dataset[0] in (30, 40, 50)
    assert dataset[4] == 40


def test_model_zoo_configs_ship_and_load():
    """setuptools<81 keeps pkg_resources for model_zoo; the wheel carries the configs."""
    from detectron2 import model_zoo

    path = model_zoo.get_config_file("COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml")
    assert os.path.isfile(path)
    cfg = model_zoo.get_config("common/models/retinanet.py")
    assert cfg.model.num_classes == 80


def test_panoptic_evaluator_on_numpy2(registered, tmp_path):
    """panopticapi (installed despite its numpy<2 pin) scores perfect predictions PQ 100."""
    from detectron2.evaluation import COCOPanopticEvaluator

    seg = np.zeros((8, 10), dtype=np.int32)
    seg[:, :5], seg[2:6, 6:9] = 1, 2  # id 1: stuff, id 2: thing; 0 = void
    (tmp_path / "pan").mkdir()
    rgb = np.stack([seg % 256, seg // 256 % 256, seg // 65536], axis=-1).astype(np.uint8)
    Image.fromarray(rgb).save(tmp_path / "pan" / "0.png")
    categories = [{"id": 7, "name": "thing", "isthing": 1}, {"id": 9, "name": "stuff", "isthing": 0}]
    segments = [{"id": 1, "category_id": 9, "area": 40, "iscrowd": 0, "bbox": [0, 0, 5, 8]},
                {"id": 2, "category_id": 7, "area": 12, "iscrowd": 0, "bbox": [6, 2, 3, 4]}]
    panoptic = {"images": [{"id": 0, "file_name": "0.jpg", "height": 8, "width": 10}],
                "annotations": [{"image_id": 0, "file_name": "0.png", "segments_info": segments}],
                "categories": categories}
    (tmp_path / "pan.json").write_text(json.dumps(panoptic))
    name = registered(
        "panoptic", lambda: [], panoptic_root=str(tmp_path / "pan"),
        panoptic_json=str(tmp_path / "pan.json"), evaluator_type="coco_panoptic_seg",
        thing_dataset_id_to_contiguous_id={7: 0}, stuff_dataset_id_to_contiguous_id={7: 0, 9: 1},
        label_divisor=1000,
    )
    evaluator = COCOPanopticEvaluator(name, output_dir=str(tmp_path / "out"))
    evaluator.reset()
    pred_info = [{"id": 1, "category_id": 1, "isthing": False},
                 {"id": 2, "category_id": 0, "isthing": True}]
    evaluator.process([{"file_name": "0.jpg", "image_id": 0}],
                      [{"panoptic_seg": (torch.from_numpy(seg), pred_info)}])
    result = evaluator.evaluate()["panoptic_seg"]
    assert result["PQ"] == pytest.approx(100.0)
    assert result["PQ_th"] == pytest.approx(100.0) and result["PQ_st"] == pytest.approx(100.0)


def test_launcher_and_ddp_fixes_take_cpus():
    """Detectron2's launcher gets a worker that picks gloo without GPUs, and
    create_ddp_model leaves a CPU model without device ids (both exercised with two
    processes in tests/test_distributed.py)."""
    import importlib
    import inspect

    import detectron2.engine
    from detectron2.engine import defaults

    worker = importlib.import_module("detectron2.engine.launch")._distributed_worker
    assert "GLOO" in inspect.getsource(worker).upper()
    assert (getattr(defaults.create_ddp_model, "_updetr_d2_cpu_aware", False)
            or "device.type" in inspect.getsource(defaults.create_ddp_model))  # a project build
    assert detectron2.engine.create_ddp_model is defaults.create_ddp_model
    model = torch.nn.Linear(2, 2)
    assert defaults.create_ddp_model(model) is model  # one process: no wrapper at all


def test_cpu_aware_ddp_gives_a_cpu_model_no_device_ids():
    """The run-time fix for a Detectron2 v0.6 not built by tools/build_detectron2.py."""
    calls = []
    wrapped = compat.cpu_aware_ddp(lambda model, fp16_compression=False, **kwargs: calls.append(kwargs) or model)
    model = torch.nn.Linear(2, 2)
    assert wrapped(model) is model and calls[-1] == {"device_ids": None}
    wrapped(model, device_ids=[3])
    assert calls[-1] == {"device_ids": [3]}  # an explicit choice is kept
    wrapped(torch.nn.ReLU())  # no parameters: Detectron2 decides
    assert calls[-1] == {}
