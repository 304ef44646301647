"""Reading checkpoint files without running code from them.

``torch.load(weights_only=True)`` for ``.pth``/``.pt``/``.pyth``, and a restricted
unpickler (numpy arrays and builtin containers only) for ``.pkl``. A file that pickles
other objects (official DETR/UP-DETR checkpoints pickle an ``argparse.Namespace``) is
refused with :class:`UnsafeCheckpointError` unless the caller passes
``allow_unsafe=True`` (yaml: ``MODEL.ALLOW_UNSAFE_CHECKPOINTS``, lazy:
``train.allow_unsafe_checkpoints``, tool: ``--allow-unsafe``), which is only for files
one trusts.
"""
import io
import logging
import os
import pickle
from typing import Any

import torch
from detectron2.utils.file_io import PathManager

__all__ = ["UNSAFE_FLAG_HELP", "UnsafeCheckpointError", "is_pickle_file", "load_checkpoint_file"]

logger = logging.getLogger(__name__)

UNSAFE_FLAG_HELP = (
    "allow_unsafe=True (yaml: MODEL.ALLOW_UNSAFE_CHECKPOINTS True; "
    "tools/convert_backbone_weights.py: --allow-unsafe)"
)


class UnsafeCheckpointError(pickle.UnpicklingError):
    """A checkpoint pickles Python objects that a safe load refuses to build."""


# What a Detectron2 / Caffe2 model-zoo pickle needs: numpy arrays, their dtypes and
# scalars, bytes (protocol-2 pickles made by Python 3 wrap them in _codecs.encode), and
# builtin containers. Nothing that can run other code.
_SAFE_PICKLE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
    ("collections", "OrderedDict"),
    ("builtins", "set"),
    ("builtins", "frozenset"),
    ("__builtin__", "set"),
    ("__builtin__", "frozenset"),
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) in _SAFE_PICKLE_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"global '{module}.{name}' is forbidden")


def _unsafe_message(path: str, reason: str) -> str:
    first_line = str(reason).strip().splitlines()[0] if str(reason).strip() else ""
    return (
        f"Refusing to load checkpoint '{path}': it pickles Python objects beyond tensors, "
        f"arrays and containers ({first_line}). Unpickling them can run arbitrary code. "
        f"Only for a file you trust, pass {UNSAFE_FLAG_HELP}."
    )


def is_pickle_file(path: str) -> bool:
    """A plain pickle (Detectron2 / Caffe2 model zoo), not a ``torch.save`` archive.

    The checkpointer asks the same question to pick Detectron2's ``.pkl`` layout, so
    both decide by this one rule."""
    return path.endswith(".pkl")


def load_checkpoint_file(path: str, allow_unsafe: bool = False) -> Any:
    """Read a checkpoint file without running code from it (unless ``allow_unsafe``).

    ``.pkl`` (Detectron2 / Caffe2 model zoo): plain pickle, latin1, through a restricted
    unpickler that builds numpy arrays, dtypes and builtin containers only. Anything
    else (``.pth``, ``.pt``, ``.pyth`` ...): ``torch.load(weights_only=True)`` on CPU.
    A file that needs more raises :class:`UnsafeCheckpointError` naming the file and the
    flag; with ``allow_unsafe=True`` it is loaded fully (``weights_only=False`` /
    ``pickle.load``) -- only for files you trust.
    """
    local = path if os.path.isfile(path) else PathManager.get_local_path(path)
    if not os.path.isfile(local):
        raise FileNotFoundError(f"Checkpoint '{path}' not found")
    if is_pickle_file(local):
        with open(local, "rb") as f:
            raw = f.read()
        if allow_unsafe:
            return pickle.loads(raw, encoding="latin1")
        try:
            return _RestrictedUnpickler(io.BytesIO(raw), encoding="latin1").load()
        except pickle.UnpicklingError as e:
            raise UnsafeCheckpointError(_unsafe_message(path, str(e))) from e
    try:
        return torch.load(local, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if not allow_unsafe:
            raise UnsafeCheckpointError(_unsafe_message(path, str(e))) from e
        logger.warning("Loading '%s' with weights_only=False (allow_unsafe is set)", path)
        return torch.load(local, map_location="cpu", weights_only=False)
