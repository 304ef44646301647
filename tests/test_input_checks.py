"""The input checks run before training (updetr_d2.engine.input_checks): each bad input
fed in as a small COCO dataset, the message asserted, and nothing trained on it."""
import logging
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from detectron2.config import LazyConfig
from detectron2.data import DatasetCatalog
from detectron2.data import DatasetMapper as D2DatasetMapper
from detectron2.data import transforms as T
from PIL import Image

import updetr_d2  # noqa: F401
from input_check_data import register, write_coco
from updetr_d2.config import load_yaml_config, run_config_checks
from updetr_d2.data import scan_image_folder
from updetr_d2.data.checks import InputCheckError, box_problem, smallest_side
from updetr_d2.data.mappers import DetrDatasetMapper, detr_train_augmentations
from updetr_d2.engine import build_evaluator
from updetr_d2.engine.input_checks import dataset_uses, run_input_checks

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DETR_YAML = os.path.join(ROOT, "configs", "demo", "detr_R18_demo.yaml")
DETR_LAZY = os.path.join(ROOT, "configs", "demo", "detr_R18_demo.py")
PROJECTS = os.path.join(ROOT, "projects")
GOOD_IMAGES = [("a.png", 64, 80), ("b.png", 64, 80)]


def yaml_cfg(train=(), test=(), *opts, config=DETR_YAML):
    return load_yaml_config(config, ["DATASETS.TRAIN", str(tuple(train)), "DATASETS.TEST", str(tuple(test)), *opts])


def lazy_cfg(train, test=None, config=DETR_LAZY):
    cfg = LazyConfig.load(config)
    cfg.dataloader.train.dataset.names = train
    if test is not None:
        cfg.dataloader.test.dataset.names = test
        cfg.dataloader.evaluator.dataset_name = test
    return cfg


def one_class(tmp_path, **kw):
    return register(tmp_path, GOOD_IMAGES, [(0, [4, 4, 20, 20], 0), (1, [8, 8, 30, 30], 0)], **kw)


# ---------------------------------------------------------------------------- 1. classes
def test_more_model_classes_than_the_dataset_is_an_error_naming_key_value_dataset(tmp_path):
    name = one_class(tmp_path)
    with pytest.raises(InputCheckError) as err:
        run_input_checks(yaml_cfg([name], [name]))  # the demo config: MODEL.DETR.NUM_CLASSES 4
    message = str(err.value)
    assert f"MODEL.DETR.NUM_CLASSES=4 but train dataset '{name}' has 1 classes (thing)" in message
    assert f"test dataset '{name}' has 1 classes" in message
    assert "evaluation fails" in message and "Set MODEL.DETR.NUM_CLASSES 1" in message


def test_fewer_model_classes_than_the_dataset_is_an_error_also_through_lazy_keys(tmp_path):
    name = register(tmp_path, GOOD_IMAGES, [(0, [4, 4, 20, 20], 4)], classes=[f"c{i}" for i in range(5)])
    with pytest.raises(InputCheckError, match=rf"model.num_classes=4 but train dataset '{name}' has 5 classes"):
        run_input_checks(lazy_cfg(name))
    with pytest.raises(InputCheckError, match="the loss fails on the first batch holding a label >= 2"):
        run_input_checks(yaml_cfg([name], [], "MODEL.DETR.NUM_CLASSES", "2"))
    run_input_checks(yaml_cfg([name], [name], "MODEL.DETR.NUM_CLASSES", "5"))


@pytest.mark.parametrize("config,opts", [
    ("UPDETR/configs/updetr_R18_demo_pretrain.yaml", []),  # query patches are the targets
    ("EncoderPretext/configs/pretext_detr_R18_demo_pretrain.yaml", []),  # encoder only: no detection head
    ("SimDETR/configs/simdetr_deformable_detr_R18_demo_pretrain.yaml", ["SIMDETR.TARGETS_DIR", "/targets"]),
], ids=["updetr", "pretext", "simdetr"])
def test_pretraining_on_a_labelled_dataset_compares_no_classes(tmp_path, config, opts):
    name = one_class(tmp_path)
    cfg = yaml_cfg([name], [], *opts, config=os.path.join(PROJECTS, config))
    (use,) = dataset_uses(cfg)
    assert not use.labels_used
    run_input_checks(cfg)


def test_an_unlabeled_folder_has_no_classes_to_compare(tmp_path):
    for i in range(2):
        Image.new("RGB", (40, 30)).save(tmp_path / f"{i}.png")
    updetr_d2.data.register_unlabeled_folder("check_unlabeled_folder", str(tmp_path))
    (report,) = run_input_checks(yaml_cfg(["check_unlabeled_folder"]))
    assert report.images == 2 and not report.labelled and report.errors() == []


# ---------------------------------------------------------------------------- 2. queries
def test_images_with_more_objects_than_queries_are_named_worst_first(tmp_path, caplog):
    boxes = [(0, [2 * k, 2 * k, 10, 10], 0) for k in range(5)] + [(1, [2 * k, 2 * k, 10, 10], 0) for k in range(4)]
    name = register(tmp_path, GOOD_IMAGES, boxes)
    cfg = yaml_cfg([name], [], "MODEL.DETR.NUM_CLASSES", "1", "MODEL.DETR.NUM_OBJECT_QUERIES", "3")
    logging.getLogger("updetr_d2").propagate = True  # a train_net run in this process may have turned it off
    with caplog.at_level(logging.WARNING, logger="updetr_d2"):
        (report,) = run_input_checks(cfg)
    (warning,) = report.warnings()
    assert (f"train dataset '{name}': 2 images have more objects than MODEL.DETR.NUM_OBJECT_QUERIES=3; the "
            "Hungarian matching leaves the extra objects unsupervised") in warning
    assert warning.index("a.png (5 objects)") < warning.index("b.png (4 objects)")
    assert warning in caplog.text


@pytest.mark.parametrize("opts,message", [
    (["MODEL.DETR.NUM_OBJECT_QUERIES", "0"], "MODEL.DETR.NUM_OBJECT_QUERIES=0: the Hungarian matching"),
    (["MODEL.DETR.NUM_CLASSES", "0"], "MODEL.DETR.NUM_CLASSES=0: the detector needs a class"),
    (["SOLVER.IMS_PER_BATCH", "0"], "SOLVER.IMS_PER_BATCH=0: a training batch needs an image"),
])
def test_impossible_options_fail_the_config_checks_naming_the_key(opts, message):
    with pytest.raises(ValueError, match=message + ".*at least 1"):
        run_config_checks(yaml_cfg(["updetr_demo_train"], [], *opts))


def test_impossible_lazy_options_name_the_lazy_key():
    dn = LazyConfig.load(os.path.join(PROJECTS, "DNDETR/configs/dn_deformable_detr_R18_demo.py"))
    dn.model.query_generator.base.num_queries = 0
    with pytest.raises(ValueError, match="model.query_generator.base.num_queries=0"):
        run_config_checks(dn)
    detr = LazyConfig.load(DETR_LAZY)
    detr.dataloader.train.total_batch_size = 0
    with pytest.raises(ValueError, match="dataloader.train.total_batch_size=0"):
        run_config_checks(detr)
    run_config_checks(LazyConfig.load(DETR_LAZY))


# ---------------------------------------------------------------------------- 3. degenerate boxes
DEGENERATE = [
    (0, [10, 10, 20, 16], 0),    # id 1: fine
    (0, [50, 20, -40, 30], 0),   # id 2: negative width
    (0, [5, 5, 0, 10], 0),       # id 3: zero width
    (1, [100, 100, 10, 10], 0),  # id 4: outside the 80x64 image
    (1, [70, 50, 30, 30], 0),    # id 5: partly outside: clipped to [70, 50, 80, 64]
]


def test_the_degenerate_box_rule():
    assert box_problem([50, 20, -40, 30], 1) == "negative width or height"  # BoxMode.XYWH_ABS
    assert box_problem([5, 5, 0, 10], 1) == "zero width or height"
    assert box_problem([100, 100, 10, 10], 1, 64, 80) == "outside the image"
    assert box_problem([80, 10, 5, 5], 1, 64, 80) == "outside the image"  # touches the edge only
    assert box_problem([70, 50, 30, 30], 1, 64, 80) is None
    assert box_problem([1, 1, float("nan"), 3], 1) == "not finite"


def test_degenerate_boxes_are_named_and_absent_from_training_and_evaluation(tmp_path):
    name = register(tmp_path, GOOD_IMAGES, DEGENERATE)
    (train, test) = run_input_checks(yaml_cfg([name], [name], "MODEL.DETR.NUM_CLASSES", "1"))
    (warning,) = train.warnings()
    assert f"train dataset '{name}': 3 degenerate boxes are dropped from training and evaluation" in warning
    for fragment in ("a.png (annotation id 2: negative width or height)", "a.png (annotation id 3: zero width",
                     "b.png (annotation id 4: outside the image)"):
        assert fragment in warning

    # Training: the mapper keeps the fine box and the clipped one only. Detectron2's own
    # mapper turns the negative width into a real box [10, 20, 50, 50] (a transform maps a
    # box's corners and takes their min and max; this resize keeps the size).
    records = {os.path.basename(r["file_name"]): r for r in DatasetCatalog.get(name)}
    same_size = [T.ResizeShortestEdge((64,), 1000, sample_style="choice")]
    mapper = DetrDatasetMapper(is_train=True, augmentations=same_size, image_format="RGB")
    assert mapper(records["a.png"])["instances"].gt_boxes.tensor.tolist() == [[10, 10, 30, 26]]
    assert mapper(records["b.png"])["instances"].gt_boxes.tensor.tolist() == [[70, 50, 80, 64]]
    upstream = D2DatasetMapper(is_train=True, augmentations=same_size, image_format="RGB")(records["a.png"])
    assert upstream["instances"].gt_boxes.tensor.tolist() == [[10, 10, 30, 26], [10, 20, 50, 50]]

    # Evaluation: the same annotations are gone from the COCO ground truth, the box clipped.
    coco = build_evaluator(name)._coco_api
    assert sorted(coco.anns) == [1, 5]
    assert coco.anns[5]["bbox"] == [70, 50, 10, 14] and coco.anns[5]["area"] == 140
    assert sorted(coco.getAnnIds(imgIds=[2])) == [5]


# ---------------------------------------------------------------------------- 4. missing files
def test_missing_image_files_are_an_error_with_count_and_paths(tmp_path):
    images = [("a.png", 64, 80), ("gone1.png", 64, 80), ("gone2.png", 64, 80)]
    json_file, root = write_coco(tmp_path, images, [], image_files=False)
    Image.new("RGB", (80, 64)).save(os.path.join(root, "a.png"))
    from detectron2.data.datasets import register_coco_instances

    register_coco_instances("check_missing_files", {}, json_file, root)
    with pytest.raises(InputCheckError) as err:
        run_input_checks(yaml_cfg(["check_missing_files"], [], "MODEL.DETR.NUM_CLASSES", "1"))
    assert (f"train dataset 'check_missing_files': 2 of 3 image files do not exist: {root}/gone1.png, "
            f"{root}/gone2.png") in str(err.value)


def test_eval_only_scans_the_test_sets_only(tmp_path):
    bad = register(tmp_path / "bad", GOOD_IMAGES, [], image_files=False)
    good = one_class(tmp_path / "good")
    cfg = yaml_cfg([bad], [good], "MODEL.DETR.NUM_CLASSES", "1")
    with pytest.raises(InputCheckError, match=f"train dataset '{bad}': 2 of 2 image files do not exist"):
        run_input_checks(cfg)
    assert [r.use.name for r in run_input_checks(cfg, eval_only=True)] == [good]


# ---------------------------------------------------------------------------- 6. thin images
def test_images_too_thin_for_the_resize_are_an_error_naming_files_and_keys(tmp_path):
    name = register(tmp_path, GOOD_IMAGES + [("strip.png", 2, 4000)], [], image_files=False)
    for f, h, w in GOOD_IMAGES + [("strip.png", 2, 4000)]:
        open(os.path.join(tmp_path, "images", f), "wb").close()  # sizes are read from the json
    with pytest.raises(InputCheckError) as err:
        run_input_checks(yaml_cfg([name], [], "MODEL.DETR.NUM_CLASSES", "1"))
    assert (f"train dataset '{name}': 1 images become less than 1 pixel wide or high with the configured resize "
            "(INPUT.MIN_SIZE_TRAIN=(192, 224, 256), INPUT.MAX_SIZE_TRAIN=384, INPUT.CROP, INPUT.DETR_CROP): "
            f"{tmp_path}/images/strip.png (4000x2 px -> 0 px)") in str(err.value)
    with pytest.raises(InputCheckError, match=r"INPUT.MIN_SIZE_TEST=256, INPUT.MAX_SIZE_TEST=384\): .*strip.png"):
        run_input_checks(yaml_cfg([], [name], "MODEL.DETR.NUM_CLASSES", "1"), eval_only=True)


def test_the_resize_geometry_follows_detectron2():
    augs = detr_train_augmentations((192, 224, 256), 384, crop_pre_resize=(224,), crop_size=(160, 256))
    assert smallest_side(augs, 2, 4000) == 0  # 384 / 4000 * 2 = 0.19 px
    assert smallest_side(augs, 200, 4000) == 19  # the plain resize; the crop branch keeps more
    # the same numbers as the transform Detectron2 draws
    for short in (192, 224, 256):
        out = T.ResizeShortestEdge((short,), 384, sample_style="choice").get_transform(np.zeros((200, 4000, 3), np.uint8))
        assert min(out.new_h, out.new_w) >= 19


def test_the_folder_scan_skips_images_too_thin_to_resize(tmp_path):
    Image.new("RGB", (400, 2)).save(tmp_path / "strip.png")
    Image.new("RGB", (40, 30)).save(tmp_path / "fine.png")
    result = scan_image_folder(str(tmp_path))
    assert [r["image_id"] for r in result.records] == ["fine.png"]
    ((path, reason),) = result.unreadable
    assert path.endswith("strip.png") and "400x2 px, more elongated than max_aspect_ratio=100" in reason


# ---------------------------------------------------------------------------- the demo data and configs
@pytest.mark.parametrize("config", [
    "configs/demo/detr_R18_demo.yaml", "configs/demo/detr_R18_demo.py", "configs/demo/faster_rcnn_R18_FPN.yaml",
    "projects/CoDETR/configs/co_deformable_detr_R18_demo.py", "projects/DNDETR/configs/dn_deformable_detr_R18_demo.py",
    "projects/EncoderPretext/configs/pretext_detr_R18_demo_multitask.yaml",
    "projects/UPDETR/configs/updetr_R18_demo_pretrain.py",
])
def test_the_demo_configs_pass(config):
    path = os.path.join(ROOT, config)
    cfg = LazyConfig.load(path) if path.endswith(".py") else load_yaml_config(path)
    run_config_checks(cfg)
    reports = run_input_checks(cfg)
    assert reports and all(r.errors() == [] and r.warnings() == [] for r in reports)


# ---------------------------------------------------------------------------- tools/train_net.py
def test_train_net_stops_before_iteration_0_and_the_flag_skips_the_scan(tmp_path):
    json_file, root = write_coco(tmp_path / "data", GOOD_IMAGES, [(0, [4, 4, 20, 20], 0)])
    (tmp_path / "one_class_data.py").write_text(
        "from detectron2.data.datasets import register_coco_instances\n"
        f"register_coco_instances('one_class', {{}}, {json_file!r}, {root!r})\n")
    env = dict(os.environ, PYTHONPATH=f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    command = [sys.executable, os.path.join(ROOT, "tools", "train_net.py"), "--import-module", "one_class_data",
               "--config-file", DETR_YAML]
    opts = ["DATASETS.TRAIN", "('one_class',)", "DATASETS.TEST", "()", "SOLVER.MAX_ITER", "1",
            "SOLVER.IMS_PER_BATCH", "2", "DATALOADER.NUM_WORKERS", "0", "INPUT.MIN_SIZE_TRAIN", "(64,)",
            "INPUT.MAX_SIZE_TRAIN", "96", "INPUT.CROP.ENABLED", "False", "MODEL.DEVICE", "cpu"]

    def run(*extra, out):
        proc = subprocess.run(command + list(extra) + opts + ["OUTPUT_DIR", str(tmp_path / out)], cwd=ROOT,
                              env=env, capture_output=True, text=True, timeout=600)
        return proc.returncode, proc.stdout + proc.stderr

    code, output = run(out="checked")
    assert code != 0
    assert "Input checks failed" in output and "MODEL.DETR.NUM_CLASSES=4 but train dataset 'one_class'" in output
    assert "Starting training from iteration 0" not in output
    assert "Traceback" not in output  # one message, not a stack
    assert not any(f.endswith(".pth") for f in os.listdir(tmp_path / "checked"))

    code, output = run("--skip-input-checks", out="skipped")
    assert code == 0, output[-3000:]
    assert "Input checks" not in output and "Starting training from iteration 0" in output
    assert os.path.isfile(tmp_path / "skipped" / "model_final.pth")


# ---------------------------------------------------------------------------- panoptic datasets
def test_panoptic_datasets_count_things_and_stuff_and_their_segments():
    """A panoptic dataset's classes are its things and stuff (6 on the demo data): too few
    model classes is an error (a stuff label would silently become no-object), and images
    with more segments than queries are named."""
    panoptic = ["MODEL.DETR.NUM_CLASSES", "6", "INPUT.DATASET_MAPPER", "PanopticDetrDatasetMapper"]
    ok = run_input_checks(yaml_cfg(["updetr_demo_panoptic_train"], ["updetr_demo_panoptic_val"], *panoptic))
    assert all(r.errors() == [] for r in ok) and all(r.labelled for r in ok)
    assert max(r.max_objects for r in ok) > 4
    with pytest.raises(InputCheckError, match=r"NUM_CLASSES=4 but train dataset 'updetr_demo_panoptic_train' "
                                              r"has 6 classes \(circle, square, triangle, star, sky, ground\)"):
        run_input_checks(yaml_cfg(["updetr_demo_panoptic_train"], [], *panoptic[2:]))
    crowded = run_input_checks(yaml_cfg(["updetr_demo_panoptic_train"], [], *panoptic,
                                        "MODEL.DETR.NUM_OBJECT_QUERIES", "3"))
    assert crowded[0].crowded and "more objects than" in " ".join(crowded[0].warnings())
