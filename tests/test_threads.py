"""updetr_d2.engine.threads: each process takes its share of the cores, an OMP_NUM_THREADS
set by the user wins, and DataLoader workers run one thread each."""
import importlib.util
import os
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODULE = os.path.join(ROOT, "updetr_d2", "engine", "threads.py")


def load_threads():
    # The module by its file: it needs only torch, and the subprocesses below then start
    # in a second or two instead of importing Detectron2 and every method.
    spec = importlib.util.spec_from_file_location("threads_under_test", MODULE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


threads = load_threads()


@pytest.mark.parametrize("cores,processes,expected", [
    (2, 1, 2), (2, 2, 1), (2, 4, 1), (16, 4, 4), (16, 3, 5), (8, 0, 8), (1, 1, 1), (0, 1, 1),
])
def test_cores_are_shared_between_the_processes(cores, processes, expected):
    chosen, reason = threads.choose_num_threads(cores, processes, environ={})
    assert chosen == expected
    assert f"{max(cores, 1)} core(s)" in reason


def test_omp_num_threads_in_the_environment_wins():
    chosen, reason = threads.choose_num_threads(16, 2, environ={"OMP_NUM_THREADS": "3"})
    assert chosen is None and "OMP_NUM_THREADS=3" in reason
    # set but empty: not a choice
    assert threads.choose_num_threads(16, 2, environ={"OMP_NUM_THREADS": " "})[0] == 8


def test_available_cores_is_what_this_process_may_use():
    cores = threads.available_cores()
    assert 1 <= cores <= (os.cpu_count() or 1)


def run_python(code, omp=None):
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    if omp is not None:
        env["OMP_NUM_THREADS"] = omp
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout.split()


CONFIGURE = f"""
    import importlib.util, logging, sys
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    spec = importlib.util.spec_from_file_location("threads", {MODULE!r})
    threads = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(threads)
    import torch
    for processes, cores in ((1, 3), (2, 7), (4, 2)):
        returned = threads.configure_threads(processes, cores=cores)
        print(returned, torch.get_num_threads())
"""


def test_a_process_gets_the_chosen_thread_count():
    out = run_python(CONFIGURE)
    assert out == ["3", "3", "3", "3", "1", "1"]


def test_a_process_keeps_the_users_omp_num_threads():
    out = run_python(CONFIGURE, omp="2")
    assert out == ["2"] * 6


def test_dataloader_workers_run_one_thread():
    """PyTorch sets one thread in each worker, whatever the parent has: nothing to add."""
    out = run_python("""
        import torch
        from torch.utils.data import DataLoader, Dataset

        class Threads(Dataset):
            def __len__(self):
                return 2

            def __getitem__(self, i):
                return torch.get_num_threads()

        torch.set_num_threads(3)
        print(*[int(n) for n in DataLoader(Threads(), num_workers=2, batch_size=None)], torch.get_num_threads())
    """)
    assert out == ["1", "1", "3"]


def test_train_net_sets_and_logs_the_thread_count(tmp_path):
    """The training entry point configures every process; one process here."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    tiny = ["MODEL.DEVICE", "cpu", "INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "96",
            "MODEL.DETR.ENC_LAYERS", "1", "MODEL.DETR.DEC_LAYERS", "1", "OUTPUT_DIR", str(tmp_path)]
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "train_net.py"), "--config-file",
                           os.path.join(ROOT, "configs", "demo", "detr_R18_demo.yaml"), "--eval-only", *tiny],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-3000:]
    cores = threads.available_cores()
    assert f"CPU threads per process: {cores} ({cores} core(s), one process on this machine" in output
