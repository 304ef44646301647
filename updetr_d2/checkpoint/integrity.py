"""Checkpoints a crash cannot leave half-written, and damage that does not load silently.

* A checkpoint is written whole or not at all (a temporary file in the same folder,
  flushed to disk, then renamed): a run killed while saving keeps its previous checkpoint
  and never leaves a truncated ``model_XXXXXXX.pth`` under its final name.
* Beside it goes ``<name>.pth.sha256`` (the ``sha256sum`` format, so
  ``sha256sum -c model_0004999.pth.sha256`` checks it by hand), written after the
  checkpoint is complete. A load checks it when it is there; a file without one (older
  runs, users' files, model-zoo files) loads as before.
* :func:`newest_intact` lets a resumed run fall back to the newest checkpoint that is
  intact when the one ``last_checkpoint`` names is missing, cut short or corrupt.
"""
import glob
import hashlib
import os
import re
from typing import Callable, List, Optional, Tuple

import torch

from ..utils.files import atomic_write

__all__ = [
    "CorruptCheckpointError",
    "checkpoints_newest_first",
    "checksum_path",
    "file_sha256",
    "folder_state",
    "newest_intact",
    "remove_leftovers",
    "save_checkpoint",
    "verify_checksum",
    "write_checksum",
]

CHECKSUM_SUFFIX = ".sha256"
_CHUNK = 1 << 20  # files are hundreds of MB: hashed a chunk at a time, never read whole
# What PeriodicCheckpointer names its files: <prefix>_<7-digit iteration>.pth and
# <prefix>_final.pth (prefix "model" unless the hook is given another).
_PERIODIC = re.compile(r"^(?P<prefix>.+)_(?P<step>\d+|final)\.pth$")
# What utils.files.atomic_write leaves behind when the process is killed mid-write.
_LEFTOVER_TEMPS = (".*.pth.*.tmp", ".last_checkpoint.*.tmp")


class CorruptCheckpointError(RuntimeError):
    """A checkpoint's bytes are not those its ``.sha256`` file recorded when it was saved."""


def checksum_path(path: str) -> str:
    return os.fspath(path) + CHECKSUM_SUFFIX


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_checksum(path: str) -> str:
    """Hash the file at ``path`` and write ``<path>.sha256`` atomically; returns the hash."""
    digest = file_sha256(path)
    atomic_write(checksum_path(path), lambda f: f.write(f"{digest}  {os.path.basename(path)}\n"))
    return digest


def _recorded_sha256(path: str) -> Optional[str]:
    try:
        with open(checksum_path(path)) as f:
            text = f.read()
    except FileNotFoundError:
        return None
    recorded = text.split()[0].lower() if text.split() else ""
    if not re.fullmatch(r"[0-9a-f]{64}", recorded):
        raise CorruptCheckpointError(
            f"Checksum file '{checksum_path(path)}' is corrupt: it holds no sha256 hash. "
            f"Delete it to load '{path}' unchecked."
        )
    return recorded


def verify_checksum(path: str) -> bool:
    """True when ``path`` matches its ``.sha256`` file, False when it has none; raises
    :class:`CorruptCheckpointError` naming the file when it does not match."""
    recorded = _recorded_sha256(path)
    if recorded is None:
        return False
    actual = file_sha256(path)
    if actual != recorded:
        raise CorruptCheckpointError(
            f"Checkpoint '{path}' is corrupt: its sha256 is {actual}, but "
            f"'{checksum_path(path)}' recorded {recorded} when it was saved (a copy cut "
            f"short, a disk error, an edit?). Restore it from a good copy, or delete it "
            f"(with its .sha256 file) to resume from an earlier checkpoint."
        )
    return True


def save_checkpoint(data, path: str) -> None:
    """``torch.save(data, path)`` whole or not at all, then its checksum."""
    # A checksum of a previous file of the same name (model_final saved twice) would not
    # match the new file if the run died between the two writes: gone first, the new
    # file is at worst unchecked, never wrongly called corrupt.
    if os.path.exists(checksum_path(path)):
        os.remove(checksum_path(path))
    atomic_write(path, lambda f: torch.save(data, f), binary=True)
    write_checksum(path)


def remove_leftovers(save_dir: str) -> List[str]:
    """Remove what older saves left in ``save_dir``: temporary files of a run killed
    mid-write (as large as a checkpoint) and checksum files whose checkpoint is gone
    (PeriodicCheckpointer's ``max_to_keep`` deletes the ``.pth`` files only). Returns
    the removed paths. Call it only from the process that saves."""
    folder = glob.escape(save_dir)
    removed = [p for pattern in _LEFTOVER_TEMPS for p in glob.glob(os.path.join(folder, pattern))]
    removed += [p for p in glob.glob(os.path.join(folder, "*.pth" + CHECKSUM_SUFFIX))
                if not os.path.exists(p[: -len(CHECKSUM_SUFFIX)])]
    for path in removed:
        try:
            os.remove(path)
        except FileNotFoundError:
            pass
    return removed


def checkpoints_newest_first(save_dir: str) -> List[str]:
    """The periodic checkpoints in ``save_dir``, newest first, by name rather than by
    modification time (which a copy or a restore from backup changes): the highest
    iteration first, with ``<prefix>_final.pth`` before all of them, as a run writes it
    last. Other ``.pth`` files (users' weights) are not checkpoints of the run."""
    found = []
    for name in os.listdir(save_dir) if os.path.isdir(save_dir) else ():
        match = _PERIODIC.match(name)
        if match and os.path.isfile(os.path.join(save_dir, name)):
            step = match.group("step")
            found.append(((1, 0) if step == "final" else (0, int(step)), name))
    return [os.path.join(save_dir, name) for _, name in sorted(found, reverse=True)]


def folder_state(save_dir: str) -> tuple:
    """A cheap fingerprint of the checkpoints in ``save_dir`` (names, sizes, modification
    times): a verdict on them holds while it is unchanged."""
    if not os.path.isdir(save_dir):
        return ()
    entries = []
    for entry in os.scandir(save_dir):
        if entry.name == "last_checkpoint" or entry.name.endswith((".pth", CHECKSUM_SUFFIX)):
            st = entry.stat()
            entries.append((entry.name, st.st_size, st.st_mtime_ns))
    return tuple(sorted(entries))


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0] if text else ''}"


def newest_intact(named: str, save_dir: str, check: Callable[[str], None]
                  ) -> Tuple[Optional[str], List[Tuple[str, str]]]:
    """The checkpoint a resumed run should load: ``named`` (the one ``last_checkpoint``
    names) when ``check(named)`` does not raise, else the first of
    :func:`checkpoints_newest_first` that passes. Also returns ``(path, reason)`` for
    each file refused on the way."""
    rejected = []
    for path in dict.fromkeys([named] + checkpoints_newest_first(save_dir)):
        try:
            check(path)
        except Exception as e:  # noqa: BLE001 -- any reason not to load it is a reason to fall back
            rejected.append((path, _first_line(e)))
            continue
        return path, rejected
    return None, rejected
