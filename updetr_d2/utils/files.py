"""Whole-or-nothing file writes (datasets, pseudo-labels, codebooks): written to a temporary file in
the same folder, flushed to disk, then renamed into place, so a killed run never leaves a
half-written file under its final name and a reader never sees one."""
import json
import os
import tempfile
from typing import Callable, IO

__all__ = ["atomic_write", "write_json_atomic"]


def atomic_write(path, write: Callable[[IO], None], binary: bool = False) -> None:
    """Call ``write(f)`` on a temporary file, then move it to ``path`` (folders made)."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb" if binary else "w") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; a dataset file should be readable
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_json_atomic(obj, path) -> None:
    atomic_write(path, lambda f: json.dump(obj, f))
