"""Every fix that Detectron2 v0.6 needs on today's Python stack, in one place.

Detectron2's last release (v0.6, 2021) predates Pillow 10, numpy 2, torch 2 and
Python 3.11, and the route that installs it here (tools/build_detectron2.py)
has no C++ ops. ``apply()`` runs on ``import updetr_d2``, before any Detectron2
module that needs a fix is imported. Each fix checks whether it is needed and
does nothing otherwise, so a newer Detectron2 (e.g. a GPU build from git) is
left untouched. ``APPLIED`` records which fixes took effect; each one is
covered by ``tests/test_compat.py``.

tools/build_detectron2.py makes the same fixes in the sources it installs (so
that Detectron2 imports in any order, without ``updetr_d2``) and leaves a
marker, ``BUILD_MARKER``, in the package: on such a build every fix below finds
nothing to do (the Pillow and numpy ones read the marker, as they change other
packages). The fixes stay for a Detectron2 v0.6 installed some other way.

Other fixes are pins, in ``requirements/constraints.txt``:
- ``setuptools<81``: ``detectron2.model_zoo`` imports ``pkg_resources``.

Known limits that are not patched (and not on any path this project needs):
rotated-box ops, ``DeformConv`` backward on CPU, and the caffe2 exporter need
the C++ ops or caffe2 and raise when called.
"""
import importlib
import inspect
import os
import re
import sys
import types

APPLIED = []

# Written into the detectron2 package by tools/build_detectron2.py (same name there).
BUILD_MARKER = "_updetr_d2_build.txt"


def project_build_level():
    """The patch level of a Detectron2 built by tools/build_detectron2.py, read from its
    marker; 0 for any other Detectron2 (its sources have none of the fixes)."""
    import detectron2

    try:
        with open(os.path.join(os.path.dirname(detectron2.__file__), BUILD_MARKER)) as f:
            text = f.read()
    except OSError:
        return 0
    match = re.search(r"^patch_level:\s*(\d+)\s*$", text, re.MULTILINE)
    return int(match.group(1)) if match else 0


class _MissingCompiledOps(types.ModuleType):
    """Stands in for ``detectron2._C`` when Detectron2 was installed without it.

    Importing it succeeds (v0.6 imports it at module level in ``layers`` and
    ``evaluation``); calling any op raises a clear error instead. The build-info
    queries of ``collect_env_info`` (logged by ``default_setup``) answer truthfully.
    """

    __file__ = "<not built>"
    HAS_COMPILED_OPS = False  # as the build's detectron2/_C.py says

    @staticmethod
    def get_compiler_version():
        return "none (Detectron2 installed without C++ ops)"

    @staticmethod
    def get_cuda_version():
        return "none"

    @staticmethod
    def has_cuda():
        return False

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)

        def missing(*args, **kwargs):
            raise NotImplementedError(
                f"detectron2._C.{name} is a compiled Detectron2 op, and this Detectron2 was "
                "installed without its C++ extension. Install Detectron2 from source to use it."
            )

        return missing


def _quiet_torchscript_deprecation():
    """torch 2.14 warns that ``torch.jit.script`` is deprecated each time Detectron2 v0.6
    scripts a helper at import; the warning is about Detectron2's code, not the user's."""
    import warnings

    warnings.filterwarnings("ignore", message="`torch.jit.script` is deprecated", category=FutureWarning)
    return True


def _fix_pillow_linear():
    """Pillow 10 removed ``Image.LINEAR``, a default argument in
    ``detectron2/data/transforms/transform.py`` (evaluated at import)."""
    from PIL import Image

    if hasattr(Image, "LINEAR") or project_build_level() >= 1:
        return False
    Image.LINEAR = Image.BILINEAR
    return True


def _fix_numpy_aliases():
    """numpy removed ``np.int``/``np.float``/``np.str``; v0.6 uses them in
    ``data/build.py`` (class histogram, error swallowed), ``SemSegEvaluator`` and
    the VOC loader. They were plain aliases of the builtins."""
    import numpy as np

    if project_build_level() >= 1:
        return False
    added = False
    for name, builtin in (("int", int), ("float", float), ("str", str), ("object", object)):
        if name not in np.__dict__:
            setattr(np, name, builtin)
            added = True
    return added


def _fix_missing_compiled_ops():
    """Without ``detectron2._C`` most of Detectron2 fails to import. Put a stand-in
    in its place; ops that need it raise when called."""
    import detectron2

    try:
        importlib.import_module("detectron2._C")
        return False
    except ImportError:
        pass
    stub = _MissingCompiledOps("detectron2._C")
    sys.modules["detectron2._C"] = stub
    detectron2._C = stub
    return True


def _fix_coco_fast_eval():
    """``COCOEvaluator`` defaults to the compiled COCOeval; without ``_C`` use
    pycocotools' own, which computes the same numbers."""
    # getattr with a default: a real extension has no such flag.
    if getattr(sys.modules.get("detectron2._C"), "HAS_COMPILED_OPS", True) is not False:
        return False
    from pycocotools.cocoeval import COCOeval

    from detectron2.evaluation import coco_evaluation

    if coco_evaluation.COCOeval_opt is COCOeval:  # the build's patched sources already do
        return False
    coco_evaluation.COCOeval_opt = COCOeval
    return True


def _fix_export_without_caffe2():
    """``detectron2.export`` imports caffe2 (gone from torch 2) in its ``__init__``,
    which breaks ``detectron2.utils.analysis`` (FLOP counting). Provide the package
    with its caffe2-free parts (tracing and TorchScript helpers) only."""
    try:
        importlib.import_module("detectron2.export")
        return False
    except ImportError as e:
        if "caffe2" not in str(e):
            raise
    import detectron2

    package = types.ModuleType("detectron2.export")
    package.__path__ = [os.path.join(os.path.dirname(detectron2.__file__), "export")]
    package.__package__ = "detectron2.export"
    sys.modules["detectron2.export"] = package
    detectron2.export = package
    flatten = importlib.import_module("detectron2.export.flatten")
    torchscript = importlib.import_module("detectron2.export.torchscript")
    package.TracingAdapter = flatten.TracingAdapter
    package.scripting_with_instances = torchscript.scripting_with_instances
    package.dump_torchscript_IR = torchscript.dump_torchscript_IR
    return True


def _fix_map_dataset_retry():
    """``MapDataset`` retries a sample whose mapper returned None with
    ``random.sample(set)``, a TypeError since Python 3.11. Sample from a list."""
    from detectron2.data import common

    source = inspect.getsource(common.MapDataset.__getitem__)
    if "sample(self._fallback_candidates" not in source:
        return False

    def __getitem__(self, idx):
        retry_count = 0
        cur_idx = int(idx)
        while True:
            data = self._map_func(self._dataset[cur_idx])
            if data is not None:
                self._fallback_candidates.add(cur_idx)
                return data
            retry_count += 1
            self._fallback_candidates.discard(cur_idx)
            if not self._fallback_candidates:
                raise RuntimeError("The dataset mapper returned None for every sample tried.")
            cur_idx = self._rng.sample(list(self._fallback_candidates), k=1)[0]
            if retry_count >= 3:
                common.logging.getLogger(common.__name__).warning(
                    f"Failed to apply `_map_func` for idx: {idx}, retry count: {retry_count}"
                )

    common.MapDataset.__getitem__ = __getitem__
    return True


def _distributed_worker(local_rank, main_func, world_size, num_gpus_per_machine, machine_rank, dist_url,
                        args, timeout=None):
    """Detectron2's worker with the backend chosen by the machine: NCCL on GPUs, gloo on
    CPUs (v0.6 asserts CUDA and always asks for NCCL). Otherwise the same steps: join the
    group, create the per-machine ("local") process group that ``comm.get_local_rank`` /
    ``get_local_size`` read, pin the GPU, wait for everyone, run."""
    import logging
    from datetime import timedelta

    import torch
    import torch.distributed as dist
    from detectron2.utils import comm

    has_gpu = torch.cuda.is_available()
    if has_gpu and num_gpus_per_machine > torch.cuda.device_count():
        raise RuntimeError(f"--num-gpus {num_gpus_per_machine} but this machine has {torch.cuda.device_count()} GPU(s)")
    global_rank = machine_rank * num_gpus_per_machine + local_rank
    try:
        dist.init_process_group(backend="NCCL" if has_gpu else "GLOO", init_method=dist_url, world_size=world_size,
                                rank=global_rank, timeout=timeout or timedelta(minutes=30))
    except Exception:
        logging.getLogger(__name__).error("Process group URL: %s", dist_url)
        raise
    assert comm._LOCAL_PROCESS_GROUP is None
    # Every process creates every machine's group (new_group is collective), keeps its own.
    for i in range(world_size // num_gpus_per_machine):
        group = dist.new_group(list(range(i * num_gpus_per_machine, (i + 1) * num_gpus_per_machine)))
        if i == machine_rank:
            comm._LOCAL_PROCESS_GROUP = group
    if has_gpu:
        torch.cuda.set_device(local_rank)
    comm.synchronize()  # avoids a timeout of the first collective after init
    main_func(*args)


def _fix_launch_without_gpu():
    """``detectron2.engine.launch`` (v0.6) asserts CUDA in every worker and uses NCCL, so
    ``--num-gpus N`` stops on a machine without GPUs. Its worker is replaced by one that
    takes gloo there (and NCCL on GPUs); ``launch`` itself (spawn, ``--dist-url auto``,
    several machines) is Detectron2's. A Detectron2 whose worker already chooses a backend
    (later versions, and the project's build: "GLOO" in its source) is left alone."""
    # The module, not the function of the same name that detectron2.engine re-exports.
    launch_module = importlib.import_module("detectron2.engine.launch")
    if "GLOO" in inspect.getsource(launch_module._distributed_worker).upper():
        return False
    launch_module._distributed_worker = _distributed_worker
    return True


def cpu_aware_ddp(original):
    """``create_ddp_model`` that gives a model on the CPU ``device_ids=None`` (DDP rejects
    device ids there) and calls ``original`` (Detectron2's) with everything else as is."""

    def create_ddp_model(model, *, fp16_compression=False, **kwargs):
        if "device_ids" not in kwargs:
            first = next(iter(model.parameters()), None)
            if first is not None and first.device.type == "cpu":
                kwargs["device_ids"] = None
        return original(model, fp16_compression=fp16_compression, **kwargs)

    create_ddp_model._updetr_d2_cpu_aware = True
    create_ddp_model.__doc__ = original.__doc__
    return create_ddp_model


def _fix_ddp_on_cpu():
    """``create_ddp_model`` passes ``device_ids=[local rank]``, which DistributedDataParallel
    rejects for a model on the CPU (it must be None there): wrapped by :func:`cpu_aware_ddp`;
    a GPU model (or explicit ``device_ids``) gets Detectron2's call."""
    from detectron2.engine import defaults

    original = defaults.create_ddp_model
    # Already ours, or a Detectron2 whose create_ddp_model looks at the model's device
    # (tools/build_detectron2.py patches the sources so).
    if getattr(original, "_updetr_d2_cpu_aware", False) or "device.type" in inspect.getsource(original):
        return False
    defaults.create_ddp_model = cpu_aware_ddp(original)
    import detectron2.engine

    detectron2.engine.create_ddp_model = defaults.create_ddp_model
    return True


# Order matters: the first three must run before Detectron2's submodules import.
_FIXES = (
    _quiet_torchscript_deprecation,
    _fix_pillow_linear,
    _fix_numpy_aliases,
    _fix_missing_compiled_ops,
    _fix_coco_fast_eval,
    _fix_export_without_caffe2,
    _fix_map_dataset_retry,
    _fix_launch_without_gpu,
    _fix_ddp_on_cpu,
)


_checked = False


def apply():
    """Apply every needed fix once; returns the names of those that took effect."""
    global _checked
    if not _checked:
        _checked = True
        APPLIED.extend(fix.__name__.lstrip("_") for fix in _FIXES if fix())
    return list(APPLIED)
