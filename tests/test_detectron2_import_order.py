"""Detectron2 as tools/build_detectron2.py installs it: its sources carry the fixes that
updetr_d2.compat otherwise makes at run time, so a script may import Detectron2 before
``updetr_d2`` (or without it), and the run-time fixes then find nothing to do. The patching
itself is checked on a small fake source tree; which Detectron2 install_env.sh rebuilds is
checked on fake installed packages."""
import json
import os
import subprocess
import sys

import pytest

from helpers import ROOT, load_tool
from updetr_d2 import compat

build = load_tool("build_detectron2")


def run_python(code, env_extra=None):
    env = dict(os.environ, **(env_extra or {}))
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    return proc.stdout.strip().splitlines()[-1]


needs_project_build = pytest.mark.skipif(
    compat.project_build_level() < build.PATCH_LEVEL,
    reason="the installed Detectron2 has no current updetr_d2 build marker "
           f"(detectron2/{compat.BUILD_MARKER}): not built by tools/build_detectron2.py, or by an "
           "older one (tools/install_env.sh rebuilds that)",
)


def test_marker_name_agrees_with_compat():
    assert build.MARKER == compat.BUILD_MARKER


@needs_project_build
def test_detectron2_first_then_updetr_d2():
    """A user script's order: Detectron2's data, engine and evaluation before updetr_d2."""
    applied = run_python(
        "import json, detectron2.data.datasets, detectron2.engine, detectron2.evaluation\n"
        "import updetr_d2\n"
        "from updetr_d2.engine import main\n"
        "print(json.dumps(updetr_d2.compat.APPLIED))"
    )
    # Nothing left to fix at run time; the warning filter is not a source fix.
    assert json.loads(applied) == ["quiet_torchscript_deprecation"]


@needs_project_build
def test_detectron2_works_without_updetr_d2():
    """What compat.py repairs, done by Detectron2 alone: Pillow's default argument, a
    compiled op failing clearly, pycocotools' COCOeval, MapDataset retries on Python 3.11,
    numpy 2 in the class histogram, detectron2.export without caffe2."""
    out = run_python(
        "import sys, numpy as np\n"
        "from PIL import Image\n"
        "from detectron2.data.transforms import ExtentTransform\n"
        "from detectron2.data.common import MapDataset\n"
        "from detectron2.data.build import print_instances_class_histogram\n"
        "from detectron2.evaluation import coco_evaluation\n"
        "from detectron2.layers import nonzero_tuple\n"
        "from detectron2.export import TracingAdapter\n"
        "from detectron2 import _C\n"
        "from pycocotools.cocoeval import COCOeval\n"
        "assert 'updetr_d2' not in sys.modules\n"
        "out = ExtentTransform((0, 0, 16, 16), (8, 8)).apply_image(np.zeros((16, 16, 3), np.uint8))\n"
        "assert out.shape == (8, 8, 3)\n"
        "assert coco_evaluation.COCOeval_opt is COCOeval\n"
        "ds = MapDataset(list(range(6)), lambda x: None if x < 3 else x * 10)\n"
        "assert ds[0] in (30, 40, 50) and ds[4] == 40\n"
        "print_instances_class_histogram([{'annotations': [{'category_id': 1}]}], ['a', 'b'])\n"
        "try:\n"
        "    _C.box_iou_rotated(None, None)\n"
        "except NotImplementedError as e:\n"
        "    print('raised:', e)\n"
    )
    assert out.startswith("raised: detectron2._C.box_iou_rotated is a compiled Detectron2 op")


# ----------------------------------------------------------------------------- patching
def fake_sources(root):
    """A ``detectron2`` folder holding exactly the text each patch looks for."""
    files = {
        "data/transforms/transform.py": "def __init__(self, interp=Image.LINEAR, fill=0): pass\n",
        "layers/deform_conv.py": "from detectron2 import _C\n",
        "evaluation/fast_eval_api.py": "from detectron2 import _C\n",
        "evaluation/coco_evaluation.py": build.COCO_FAST_EVAL_OLD,
        "data/common.py": build.MAP_RETRY_OLD,
        "export/__init__.py": build.EXPORT_OLD,
        "engine/launch.py": build.LAUNCH_OLD + build.LAUNCH_DEVICE_OLD,
        "engine/defaults.py": build.DDP_OLD,
    }
    for rel in build.NUMPY_ALIAS_FILES:
        files[rel] = files.get(rel, "") + "x = np.zeros(3, dtype=np.int).astype(np.float) + np.int64(1)\n"
    package = root / "detectron2"
    for rel, text in files.items():
        (package / rel).parent.mkdir(parents=True, exist_ok=True)
        (package / rel).write_text(text)
    return package


def test_patch_sources_fixes_every_target_and_writes_the_marker(tmp_path):
    package = fake_sources(tmp_path)
    names = build.patch_sources(str(package))
    assert names == [p.__name__[len("patch_"):] for p in build.PATCHES]
    assert "Image.BILINEAR" in (package / "data/transforms/transform.py").read_text()
    assert (package / "data/build.py").read_text() == "x = np.zeros(3, dtype=int).astype(float) + np.int64(1)\n"
    assert "list(self._fallback_candidates)" in (package / "data/common.py").read_text()
    assert "HAS_COMPILED_OPS = False" in (package / "_C.py").read_text()
    assert 'backend="NCCL" if has_gpu else "GLOO"' in (package / "engine/launch.py").read_text()
    assert "if has_gpu:\n        assert num_gpus" in (package / "engine/launch.py").read_text()
    assert '"device_ids"] = None if on_cpu' in (package / "engine/defaults.py").read_text()
    assert build.read_patch_level(str(package)) == build.PATCH_LEVEL


def test_patch_fails_loudly_when_its_target_is_missing(tmp_path):
    package = fake_sources(tmp_path)
    build.patch_sources(str(package))
    # Patched sources no longer hold the v0.6 text: a second pass must refuse.
    with pytest.raises(build.BuildError, match=r"detectron2/data/transforms/transform\.py.*Image\.LINEAR"):
        build.patch_sources(str(package))
    package = fake_sources(tmp_path / "other")
    (package / "data/common.py").unlink()
    with pytest.raises(build.BuildError, match=r"detectron2/data/common\.py does not exist"):
        build.patch_sources(str(package))
    assert build.read_patch_level(str(package)) is None  # no marker on a failed build


# ----------------------------------------------------------------------------- install_env.sh
def state_of(package_root):
    """``build_detectron2.py --state`` with a fake detectron2 package first on the path."""
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "build_detectron2.py"), "--state"],
                          capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, PYTHONPATH=str(package_root)))
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


@pytest.mark.parametrize("marker, summary, expected", [
    (None, None, "foreign"),  # e.g. a git checkout with its C++ ops: left alone
    (None, "Detectron2 is FAIR's next-generation platform", "foreign"),  # pip-installed from git
    (None, build.SUMMARY, "outdated"),  # a project build from before the marker
    ("patch_level: 0\n", None, "outdated"),
    (f"patch_level: {build.PATCH_LEVEL}\n", build.SUMMARY, "current"),
], ids=["git-checkout", "pip-from-git", "before-marker", "older-marker", "current-marker"])
def test_state_tells_project_builds_from_others(tmp_path, marker, summary, expected):
    package = tmp_path / "detectron2"
    package.mkdir()
    (package / "__init__.py").write_text("__version__ = '0.6'\n")
    if marker is not None:
        (package / build.MARKER).write_text(marker)
    if summary is not None:
        dist_info = tmp_path / "detectron2-0.6.dist-info"
        dist_info.mkdir()
        (dist_info / "METADATA").write_text(
            f"Metadata-Version: 2.1\nName: detectron2\nVersion: 0.6\nSummary: {summary}\n")
    assert state_of(tmp_path) == expected
