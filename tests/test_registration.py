"""`import updetr_d2` fills Detectron2's registries and catalogs, and does nothing else."""
import os
import subprocess
import sys

import updetr_d2  # noqa: F401
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.modeling import META_ARCH_REGISTRY
from updetr_d2.data import MAPPER_REGISTRY


def test_meta_architectures_and_mappers_are_registered():
    assert {"Detr", "UPDETR", "DeformableDetr"} <= {name for name, _ in META_ARCH_REGISTRY}
    assert {"DatasetMapper", "DetrDatasetMapper", "QueryPatchDatasetMapper"} <= {name for name, _ in MAPPER_REGISTRY}


def test_datasets_are_registered_with_metadata():
    names = set(DatasetCatalog.list())
    demo = {f"updetr_demo_{s}" for s in ("train", "val", "panoptic_train", "panoptic_val", "unlabeled")}
    coco128 = {"coco128_train", "coco128_val", "coco128_all", "coco128_panoptic_train", "coco128_panoptic_val"}
    assert demo <= names and coco128 <= names
    assert MetadataCatalog.get("updetr_demo_train").thing_classes == ["circle", "square", "triangle", "star"]
    assert MetadataCatalog.get("updetr_demo_val").evaluator_type == "coco"
    assert MetadataCatalog.get("updetr_demo_panoptic_val").evaluator_type == "coco_panoptic_seg"


def test_import_writes_nothing(tmp_path):
    """Registration is lazy: importing creates no dataset files and reads no data."""
    env = dict(os.environ, UPDETR_DEMO_ROOT=str(tmp_path / "demo"), UPDETR_COCO128=str(tmp_path / "none"))
    code = ("import updetr_d2; from detectron2.data import DatasetCatalog; "
            "assert 'updetr_demo_train' in DatasetCatalog.list()")
    subprocess.run([sys.executable, "-c", code], env=env, check=True, cwd=str(tmp_path))
    assert os.listdir(tmp_path) == []
