#!/usr/bin/env python
"""Install Detectron2 v0.6 into the running Python without compiling anything.

Detectron2 is not on PyPI under its own name. Its v0.6 Python sources are, as
the hash-pinned source distribution named in ``requirements/detectron2.txt``,
but that sdist lacks the C++ sources its ``setup.py`` tries to compile and
ships the model-zoo configs where its ``package_data`` does not look. So we
download it (hash-checked), replace its ``setup.py`` with a pure-Python one
that installs the package as ``detectron2`` together with its model-zoo
configs, and install that. The missing ``detectron2._C`` ops are handled at run
time by ``updetr_d2.compat``.

The wheel declares no dependencies: they are installed from
``requirements/runtime.txt`` under ``requirements/constraints.txt`` instead,
which resolves v0.6's stale pins (black==21.4b2, future) by leaving them out.

Usage: python tools/build_detectron2.py   (run with the target environment's python)
"""
import glob
import os
import subprocess
import sys
import tarfile
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REQUIREMENT = os.path.join(ROOT, "requirements", "detectron2.txt")

SETUP_PY = '''
from setuptools import find_packages, setup

setup(
    name="detectron2",
    version="0.6",
    description="Detectron2 v0.6 Python sources (built by updetr_d2 without C++ ops)",
    packages=find_packages(include=("detectron2", "detectron2.*")),
    package_data={"detectron2.model_zoo": ["configs/**/*.yaml", "configs/**/*.py"]},
    python_requires=">=3.7",
)
'''


def pip(*args):
    cmd = [sys.executable, "-m", "pip", *args]
    print("+", " ".join(cmd), flush=True)
    subprocess.check_call(cmd)


def main():
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
        pip("install", "--no-deps", "--no-build-isolation", "--no-cache-dir", src)


if __name__ == "__main__":
    os.chdir(ROOT)
    main()
