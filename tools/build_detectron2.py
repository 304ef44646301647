#!/usr/bin/env python
"""Install Detectron2 v0.6 into the running Python without compiling anything.

Detectron2 is not on PyPI under its own name. Its v0.6 Python sources are, as
the hash-pinned source distribution named in ``requirements/detectron2.txt``,
but that sdist lacks the C++ sources its ``setup.py`` tries to compile and
ships the model-zoo configs where its ``package_data`` does not look. So we
download it (hash-checked), replace its ``setup.py`` with a pure-Python one
that installs the package as ``detectron2`` together with its model-zoo
configs, and install that.

Before installing, the sources get the fixes that v0.6 needs on today's stack
(see ``PATCHES``: Pillow 10, numpy 2, Python 3.11, torch without caffe2, and a
pure-Python ``detectron2/_C`` whose ops raise ``NotImplementedError``), so that
``import detectron2.<anything>`` works in any order, with or without
``updetr_d2``. Each patch checks that the text it replaces is there: a changed
sdist fails the build instead of installing half-patched sources. The package
gets a marker file (``MARKER``) holding ``PATCH_LEVEL``, which
``tools/install_env.sh`` reads (``--state``) to rebuild an older project build
and to leave a Detectron2 built some other way alone; ``updetr_d2.compat``
reads it to skip the run-time fixes the sources already have.

The wheel declares no dependencies: they are installed from
``requirements/runtime.txt`` under ``requirements/constraints.txt`` instead,
which resolves v0.6's stale pins (black==21.4b2, future) by leaving them out.

Usage (run with the target environment's python):
    python tools/build_detectron2.py            download, patch, install
    python tools/build_detectron2.py --state    print missing | foreign | outdated | current
"""
import argparse
import glob
import importlib.metadata
import importlib.util
import os
import re
import subprocess
import sys
import tarfile
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REQUIREMENT = os.path.join(ROOT, "requirements", "detectron2.txt")

# Raise when a patch is added or changed: installs with a lower level are rebuilt.
PATCH_LEVEL = 2
# Same name in updetr_d2/compat.py (BUILD_MARKER).
MARKER = "_updetr_d2_build.txt"
# Builds from before the marker existed are recognised by this summary.
SUMMARY = "Detectron2 v0.6 Python sources (built by updetr_d2 without C++ ops)"

SETUP_PY = f'''
from setuptools import find_packages, setup

setup(
    name="detectron2",
    version="0.6",
    description="{SUMMARY}",
    packages=find_packages(include=("detectron2", "detectron2.*")),
    package_data={{
        "detectron2": ["{MARKER}"],
        "detectron2.model_zoo": ["configs/**/*.yaml", "configs/**/*.py"],
    }},
    python_requires=">=3.7",
)
'''

# detectron2/_C.py: v0.6 imports `_C` at module level in layers/ and evaluation/, so
# without it those packages fail to import even when no compiled op is used.
STAND_IN_C = '''"""Stands in for Detectron2's compiled C++/CUDA ops, which this build (updetr_d2's
tools/build_detectron2.py) does not compile. Importing it succeeds, so every module
imports; calling an op raises NotImplementedError. The build-info queries of
``detectron2.utils.collect_env`` answer truthfully."""

HAS_COMPILED_OPS = False


def get_compiler_version():
    return "none (Detectron2 installed without C++ ops)"


def get_cuda_version():
    return "none"


def has_cuda():
    return False


def __getattr__(name):
    if name.startswith("__"):  # keep the module protocol honest (no __path__, ...)
        raise AttributeError(name)

    def missing(*args, **kwargs):
        raise NotImplementedError(
            f"detectron2._C.{name} is a compiled Detectron2 op, and this Detectron2 was "
            "installed without its C++ extension. Install Detectron2 from source to use it."
        )

    missing.__name__ = name
    return missing
'''

# numpy 1.24 removed these aliases of the builtins (np.bool is back in numpy 2, as numpy's
# own bool type, but v0.6 means the builtin); \b and the look-ahead spare np.int64, np.str_.
NUMPY_ALIAS = re.compile(r"\bnp\.(int|float|str|bool|object)\b(?![\w])")
NUMPY_ALIAS_FILES = (
    "data/build.py",
    "data/datasets/pascal_voc.py",
    "evaluation/sem_seg_evaluation.py",
    "evaluation/pascal_voc_evaluation.py",
    "structures/masks.py",
    "utils/visualizer.py",
    "utils/video_visualizer.py",
)

MAP_RETRY_OLD = """\
            self._fallback_candidates.discard(cur_idx)
            cur_idx = self._rng.sample(self._fallback_candidates, k=1)[0]
"""
MAP_RETRY_NEW = """\
            self._fallback_candidates.discard(cur_idx)
            if not self._fallback_candidates:
                raise RuntimeError("The dataset mapper returned None for every sample tried.")
            # Python 3.11's random.sample takes sequences only, not sets.
            cur_idx = self._rng.sample(list(self._fallback_candidates), k=1)[0]
"""

COCO_FAST_EVAL_OLD = "from detectron2.evaluation.fast_eval_api import COCOeval_opt\n"
COCO_FAST_EVAL_NEW = COCO_FAST_EVAL_OLD + """\
from detectron2 import _C as _compiled_ops

if getattr(_compiled_ops, "HAS_COMPILED_OPS", True) is False:
    # No C++ COCOeval in this build: pycocotools' own computes the same numbers.
    COCOeval_opt = COCOeval
"""

EXPORT_OLD = "from .api import *\n"
EXPORT_NEW = """\
try:
    from .api import *
except ImportError as e:
    # caffe2 left torch 2; the tracing and TorchScript helpers below do not need it.
    if "caffe2" not in str(e):
        raise
"""


class BuildError(RuntimeError):
    """A patch target is not in the sources: the sdist is not the v0.6 we know."""


def require_text(package_dir, rel_path, old, count=1):
    """The text of one file, which must hold ``old`` exactly ``count`` times."""
    path = os.path.join(package_dir, rel_path)
    if not os.path.isfile(path):
        raise BuildError(f"patch target detectron2/{rel_path} does not exist")
    with open(path, encoding="utf-8") as f:
        text = f.read()
    found = text.count(old)
    if found != count:
        raise BuildError(f"patch target in detectron2/{rel_path}: expected {count} occurrence(s) "
                         f"of {old!r}, found {found}")
    return text


def replace_text(package_dir, rel_path, old, new, count=1):
    """Replaces ``old`` by ``new`` in one file; ``old`` must occur exactly ``count`` times."""
    text = require_text(package_dir, rel_path, old, count)
    with open(os.path.join(package_dir, rel_path), "w", encoding="utf-8") as f:
        f.write(text.replace(old, new))


def patch_pillow_linear(package_dir):
    """Pillow 10 removed Image.LINEAR, a default argument evaluated at import."""
    replace_text(package_dir, "data/transforms/transform.py", "interp=Image.LINEAR,", "interp=Image.BILINEAR,")


def patch_compiled_ops(package_dir):
    """A pure-Python ``_C`` (STAND_IN_C) instead of the C++ extension."""
    for rel in ("layers/deform_conv.py", "evaluation/fast_eval_api.py"):
        require_text(package_dir, rel, "from detectron2 import _C\n")
    existing = glob.glob(os.path.join(package_dir, "_C.*")) + glob.glob(os.path.join(package_dir, "_C"))
    if existing:
        raise BuildError(f"detectron2/_C already exists in the sources: {existing}")
    with open(os.path.join(package_dir, "_C.py"), "w", encoding="utf-8") as f:
        f.write(STAND_IN_C)


def patch_coco_fast_eval(package_dir):
    """COCOEvaluator defaults to the compiled COCOeval; use pycocotools' without it."""
    replace_text(package_dir, "evaluation/coco_evaluation.py", COCO_FAST_EVAL_OLD, COCO_FAST_EVAL_NEW)


def patch_numpy_aliases(package_dir):
    """np.int / np.float / np.str / np.bool -> the builtins they aliased."""
    for rel in NUMPY_ALIAS_FILES:
        path = os.path.join(package_dir, rel)
        if not os.path.isfile(path):
            raise BuildError(f"patch target detectron2/{rel} does not exist")
        with open(path, encoding="utf-8") as f:
            text, n = NUMPY_ALIAS.subn(r"\1", f.read())
        if n == 0:
            raise BuildError(f"patch target in detectron2/{rel}: no np.int/np.float/np.str/np.bool")
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
    # A use outside the list would fail only at run time: refuse to install it.
    left = [p for p in glob.glob(os.path.join(package_dir, "**", "*.py"), recursive=True)
            if NUMPY_ALIAS.search(open(p, encoding="utf-8").read())]
    if left:
        raise BuildError(f"removed numpy aliases left in {sorted(left)}")


def patch_map_dataset_retry(package_dir):
    """MapDataset's retry called random.sample on a set (a TypeError since Python 3.11)."""
    replace_text(package_dir, "data/common.py", MAP_RETRY_OLD, MAP_RETRY_NEW)


def patch_export_without_caffe2(package_dir):
    """``detectron2.export`` imported caffe2 in its ``__init__``; FLOP counting imports it."""
    replace_text(package_dir, "export/__init__.py", EXPORT_OLD, EXPORT_NEW)


LAUNCH_OLD = (
    '    assert torch.cuda.is_available(), "cuda is not available. Please check your installation."\n'
    "    global_rank = machine_rank * num_gpus_per_machine + local_rank\n"
    "    try:\n"
    "        dist.init_process_group(\n"
    '            backend="NCCL",\n'
)
LAUNCH_NEW = (
    "    has_gpu = torch.cuda.is_available()  # without GPUs: CPU processes over gloo (updetr_d2)\n"
    "    global_rank = machine_rank * num_gpus_per_machine + local_rank\n"
    "    try:\n"
    "        dist.init_process_group(\n"
    '            backend="NCCL" if has_gpu else "GLOO",\n'
)
LAUNCH_DEVICE_OLD = (
    "    assert num_gpus_per_machine <= torch.cuda.device_count()\n"
    "    torch.cuda.set_device(local_rank)\n"
)
LAUNCH_DEVICE_NEW = (
    "    if has_gpu:\n"
    "        assert num_gpus_per_machine <= torch.cuda.device_count()\n"
    "        torch.cuda.set_device(local_rank)\n"
)
DDP_OLD = (
    '    if "device_ids" not in kwargs:\n'
    "        kwargs[\"device_ids\"] = [comm.get_local_rank()]\n"
)
DDP_NEW = (
    '    if "device_ids" not in kwargs:\n'
    "        # A model on the CPU takes no device ids (updetr_d2).\n"
    "        first = next(iter(model.parameters()), None)\n"
    '        on_cpu = first is not None and first.device.type == "cpu"\n'
    "        kwargs[\"device_ids\"] = None if on_cpu else [comm.get_local_rank()]\n"
)


def patch_launch_without_gpu(package_dir):
    """The launcher's workers asserted CUDA and always asked for NCCL: gloo on CPUs."""
    replace_text(package_dir, "engine/launch.py", LAUNCH_OLD, LAUNCH_NEW)
    replace_text(package_dir, "engine/launch.py", LAUNCH_DEVICE_OLD, LAUNCH_DEVICE_NEW)


def patch_ddp_on_cpu(package_dir):
    """create_ddp_model gave DDP a device id, which a model on the CPU must not have."""
    replace_text(package_dir, "engine/defaults.py", DDP_OLD, DDP_NEW)


PATCHES = (
    patch_pillow_linear,
    patch_compiled_ops,
    patch_coco_fast_eval,
    patch_numpy_aliases,
    patch_map_dataset_retry,
    patch_export_without_caffe2,
    patch_launch_without_gpu,
    patch_ddp_on_cpu,
)


def patch_sources(package_dir):
    """Applies every patch to the ``detectron2`` folder, then writes the marker (last,
    so that a marker means a wholly patched tree). Returns the patches' names."""
    names = []
    for patch in PATCHES:
        patch(package_dir)
        names.append(patch.__name__[len("patch_"):])
    with open(os.path.join(package_dir, MARKER), "w", encoding="utf-8") as f:
        f.write("# Detectron2 v0.6 from the PyPI sdist, patched by updetr_d2's tools/build_detectron2.py\n")
        f.write(f"patch_level: {PATCH_LEVEL}\n")
        f.write(f"patches: {', '.join(names)}\n")
    return names


def read_patch_level(package_dir):
    """The ``patch_level`` in the marker of an installed ``detectron2`` folder; None
    without a marker."""
    try:
        with open(os.path.join(package_dir, MARKER), encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        return None
    match = re.search(r"^patch_level:\s*(\d+)\s*$", text, re.MULTILINE)
    return int(match.group(1)) if match else 0


def installed_summary(package_dir):
    """The summary of the installed distribution that holds ``package_dir``; "" when the
    package imported is not the one installed (e.g. a git checkout on the path)."""
    try:
        dist = importlib.metadata.distribution("detectron2")
    except importlib.metadata.PackageNotFoundError:
        return ""
    if os.path.realpath(dist.locate_file("detectron2")) != os.path.realpath(package_dir):
        return ""
    return dist.metadata.get("Summary", "")


def installed_state():
    """What ``tools/install_env.sh`` should do about the Detectron2 this Python imports:
    ``missing`` (build it), ``outdated`` (a project build of a lower patch level, or
    from before the marker: rebuild), ``current``, or ``foreign`` (built some other
    way, e.g. from git with its C++ ops: leave it alone)."""
    spec = importlib.util.find_spec("detectron2")
    if spec is None or not spec.submodule_search_locations:
        return "missing"
    package_dir = list(spec.submodule_search_locations)[0]
    level = read_patch_level(package_dir)
    if level is None:
        if installed_summary(package_dir) != SUMMARY:
            return "foreign"
        level = 0
    return "current" if level >= PATCH_LEVEL else "outdated"


def pip(*args):
    cmd = [sys.executable, "-m", "pip", *args]
    print("+", " ".join(cmd), flush=True)
    subprocess.check_call(cmd)


def build_and_install():
    with tempfile.TemporaryDirectory(prefix="updetr-d2-build-") as tmp:
        # --no-build-isolation: pip runs the sdist's setup.py for metadata, which
        # imports torch; it must see the environment's torch.
        pip("download", "--no-deps", "--no-binary", ":all:", "--no-build-isolation",
            "--require-hashes", "-r", REQUIREMENT, "-d", tmp)
        (archive,) = glob.glob(os.path.join(tmp, "*.tar.gz"))
        with tarfile.open(archive) as tar:
            tar.extractall(tmp, filter="data")
        (src,) = [d for d in glob.glob(os.path.join(tmp, "*")) if os.path.isdir(d)]
        with open(os.path.join(src, "setup.py"), "w") as f:
            f.write(SETUP_PY)
        for egg_info in glob.glob(os.path.join(src, "*.egg-info")):
            subprocess.check_call(["rm", "-rf", egg_info])
        n_configs = len(glob.glob(os.path.join(src, "detectron2/model_zoo/configs/**/*.yaml"),
                                  recursive=True))
        if n_configs == 0:
            sys.exit("build_detectron2: the sdist has no model-zoo configs; refusing to install")
        try:
            names = patch_sources(os.path.join(src, "detectron2"))
        except BuildError as e:
            sys.exit(f"build_detectron2: refusing to install: {e}")
        print(f"build_detectron2: patch level {PATCH_LEVEL}: {', '.join(names)}", flush=True)
        # --force-reinstall: same name and version as an older project build.
        pip("install", "--no-deps", "--no-build-isolation", "--no-cache-dir", "--force-reinstall", src)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--state", action="store_true",
                        help="print what the installed Detectron2 is (missing, foreign, outdated, "
                             "current) and exit")
    args = parser.parse_args(argv)
    if args.state:
        print(installed_state())
        return
    os.chdir(ROOT)
    build_and_install()


if __name__ == "__main__":
    main()
