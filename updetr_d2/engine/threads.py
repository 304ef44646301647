"""How many CPU threads each process of a run uses.

PyTorch gives every process as many threads as the machine has cores. One process should
use them all, but several processes on one machine (``launch`` with ``--num-gpus N``, or
runs side by side) would then each start a thread per core, and threads fighting for the
same cores make a step several times slower on a small machine. So each process takes its
share, ``cores // processes`` (at least 1).

An ``OMP_NUM_THREADS`` in the environment is the user's choice: PyTorch read it at start-up
and it is left alone. DataLoader worker processes need nothing here: PyTorch already sets
one thread in each (``torch.utils.data._utils.worker._worker_loop``), which the tests check.
"""
import logging
import os
from typing import Mapping, Optional, Tuple

import torch

__all__ = ["ENV_VAR", "available_cores", "choose_num_threads", "configure_threads"]

ENV_VAR = "OMP_NUM_THREADS"

logger = logging.getLogger(__name__)


def available_cores() -> int:
    """The cores this process may run on: its CPU affinity (what ``taskset`` or a
    container's cpuset allow), not every core of the machine."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows: no affinity call
        return os.cpu_count() or 1


def choose_num_threads(cores: int, processes: int = 1,
                       environ: Optional[Mapping[str, str]] = None) -> Tuple[Optional[int], str]:
    """``(threads, reason)`` for one of ``processes`` processes sharing ``cores`` cores:
    ``max(1, cores // processes)``, or ``None`` (keep PyTorch's setting) when
    ``OMP_NUM_THREADS`` is set in ``environ`` (default: ``os.environ``)."""
    environ = os.environ if environ is None else environ
    if environ.get(ENV_VAR, "").strip():
        return None, f"{ENV_VAR}={environ[ENV_VAR].strip()} is set, so the environment decides"
    processes = max(1, int(processes))
    cores = max(1, int(cores))
    threads = max(1, cores // processes)
    if processes == 1:
        return threads, f"{cores} core(s), one process on this machine"
    return threads, f"{cores} core(s) shared by {processes} processes on this machine"


def configure_threads(processes: int = 1, cores: Optional[int] = None) -> int:
    """Sets this process's PyTorch thread count for ``processes`` processes on this
    machine (see :func:`choose_num_threads`; ``cores`` default: :func:`available_cores`),
    logs the choice and why, and returns the thread count in use."""
    threads, reason = choose_num_threads(available_cores() if cores is None else cores, processes)
    if threads is not None:
        torch.set_num_threads(threads)
    in_use = torch.get_num_threads()
    logger.info(f"CPU threads per process: {in_use} ({reason}; DataLoader workers use 1 each). "
                f"Set {ENV_VAR} to choose.")
    return in_use
