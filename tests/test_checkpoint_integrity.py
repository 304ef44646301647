"""Checkpoints are written whole or not at all, with a sha256 beside them that a load
checks; a resumed run whose last checkpoint is missing, cut short or corrupt resumes
from the newest intact one."""
import io
import logging
import os
import signal

import pytest
import torch
from torch import nn

import updetr_d2  # noqa: F401
from updetr_d2.checkpoint import DetrCheckpointer
from updetr_d2.checkpoint.integrity import CorruptCheckpointError, checkpoints_newest_first


ONE_CHECKPOINT = ["last_checkpoint", "model_0000009.pth", "model_0000009.pth.sha256"]


def tiny_model(seed):
    torch.manual_seed(seed)
    model = nn.Module()
    model.backbone = nn.Linear(3, 4)
    model.head = nn.Linear(4, 2)
    return model


def same_weights(a, b):
    return all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())


def last_checkpoint(run):
    return (run / "last_checkpoint").read_text()


def save(run, seed, name):
    model = tiny_model(seed)
    DetrCheckpointer(model, str(run)).save(name, iteration=seed)
    return model


def resumed(run, initial=""):
    """A fresh model resumed from ``run`` (``initial``: the weights without a checkpoint)."""
    model = tiny_model(99)
    checkpointer = DetrCheckpointer(model, str(run))
    extra = checkpointer.resume_or_load(initial, resume=True)
    return model, extra, checkpointer


REAL_SAVE = torch.save


def half_of(data) -> bytes:
    buffer = io.BytesIO()
    REAL_SAVE(data, buffer)
    return buffer.getvalue()[: len(buffer.getvalue()) // 2]


def half_written_save(data, f):
    """torch.save that fails halfway through the file."""
    f.write(half_of(data))
    f.flush()
    raise OSError("No space left on device")


def test_a_save_writes_the_file_its_checksum_and_the_tag(tmp_path):
    model = save(tmp_path, 1, "model_0000009")
    assert last_checkpoint(tmp_path) == "model_0000009.pth"
    digest, name = (tmp_path / "model_0000009.pth.sha256").read_text().split()
    assert name == "model_0000009.pth" and len(digest) == 64
    back, extra, _ = resumed(tmp_path)
    assert same_weights(back, model) and extra["iteration"] == 1
    # Nothing but the three files: no temporary file is left behind.
    assert sorted(os.listdir(tmp_path)) == ONE_CHECKPOINT


def test_a_save_that_fails_midway_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    good = save(tmp_path, 1, "model_0000009")
    monkeypatch.setattr(torch, "save", half_written_save)
    with pytest.raises(OSError, match="No space left"):
        save(tmp_path, 2, "model_0000019")
    monkeypatch.undo()
    assert last_checkpoint(tmp_path) == "model_0000009.pth"
    assert sorted(os.listdir(tmp_path)) == ONE_CHECKPOINT
    back, extra, _ = resumed(tmp_path)
    assert same_weights(back, good) and extra["iteration"] == 1


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_run_killed_mid_save_keeps_its_previous_checkpoint(tmp_path):
    good = save(tmp_path, 1, "model_0000009")

    def killed_save(data, f):
        f.write(half_of(data))
        f.flush()
        os.kill(os.getpid(), signal.SIGKILL)  # as kill -9: no cleanup runs

    pid = os.fork()
    if pid == 0:  # the child is killed halfway through its save; it never returns to pytest
        try:
            torch.save = killed_save
            save(tmp_path, 2, "model_0000019")
        finally:
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    assert last_checkpoint(tmp_path) == "model_0000009.pth"
    assert not (tmp_path / "model_0000019.pth").exists()
    leftovers = [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]
    assert len(leftovers) == 1  # the half-written temporary file, under another name
    back, _, _ = resumed(tmp_path)
    assert same_weights(back, good)
    # The next save clears what the killed one left.
    save(tmp_path, 3, "model_0000019")
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]


def test_a_tampered_checkpoint_is_refused_naming_the_file(tmp_path):
    save(tmp_path, 1, "model_0000009")
    path = tmp_path / "model_0000009.pth"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptCheckpointError, match=r"'.*model_0000009\.pth' is corrupt"):
        DetrCheckpointer(tiny_model(5)).load(str(path))


def test_resume_falls_back_from_a_truncated_last_checkpoint(tmp_path, caplog):
    good = save(tmp_path, 1, "model_0000009")
    save(tmp_path, 2, "model_0000019")
    path = tmp_path / "model_0000019.pth"
    path.write_bytes(path.read_bytes()[:100])  # cut short, as by a copy or an old kill -9
    with caplog.at_level(logging.WARNING):
        back, extra, checkpointer = resumed(tmp_path)
    assert same_weights(back, good) and extra["iteration"] == 1
    assert "Not resuming from" in caplog.text and "model_0000019.pth" in caplog.text
    assert "newest intact checkpoint" in caplog.text
    assert checkpointer.has_checkpoint()  # the trainer then starts after iteration 1


def test_resume_falls_back_when_the_checkpoint_is_gone_or_has_no_checksum(tmp_path, caplog):
    good = save(tmp_path, 1, "model_0000009")
    save(tmp_path, 2, "model_0000019")
    (tmp_path / "model_0000009.pth.sha256").unlink()  # an older file: checked by loading it
    (tmp_path / "model_0000019.pth").unlink()
    with caplog.at_level(logging.WARNING):
        back, _, _ = resumed(tmp_path)
    assert same_weights(back, good)
    assert "model_0000019.pth" in caplog.text and "does not exist" in caplog.text


def test_with_no_intact_checkpoint_the_run_starts_from_its_initial_weights(tmp_path, caplog):
    initial_dir = tmp_path / "initial"
    initial = save(initial_dir, 7, "weights")
    run = tmp_path / "run"
    save(run, 1, "model_0000009")
    save(run, 2, "model_0000019")
    (run / "model_0000009.pth.sha256").unlink()  # without a checksum: fails to load
    (run / "model_0000009.pth").write_bytes(b"not a checkpoint")
    (run / "model_0000019.pth").write_bytes((run / "model_0000019.pth").read_bytes()[:-10])
    with caplog.at_level(logging.WARNING):
        back, _, checkpointer = resumed(run, str(initial_dir / "weights.pth"))
    assert same_weights(back, initial)
    assert not checkpointer.has_checkpoint()
    assert "model_0000009.pth" in caplog.text and "model_0000019.pth' is corrupt" in caplog.text
    assert "No intact checkpoint" in caplog.text


def test_files_with_or_without_a_checksum_load(tmp_path):
    model = save(tmp_path, 1, "model_0000009")
    back = tiny_model(5)
    DetrCheckpointer(back).load(str(tmp_path / "model_0000009.pth"))  # checksum present, right
    assert same_weights(back, model)
    # A file written by Detectron2 (or by hand) has no checksum and loads as before.
    plain = tmp_path / "plain.pth"
    torch.save({"model": model.state_dict()}, plain)
    back = tiny_model(6)
    DetrCheckpointer(back).load(str(plain))
    assert same_weights(back, model)


def test_newest_is_by_iteration_with_final_last(tmp_path):
    for name in ("model_0000100.pth", "model_final.pth", "model_0000020.pth", "weights.pth"):
        (tmp_path / name).write_bytes(b"")
    names = [os.path.basename(p) for p in checkpoints_newest_first(str(tmp_path))]
    assert names == ["model_final.pth", "model_0000100.pth", "model_0000020.pth"]


def test_checksums_of_deleted_checkpoints_are_removed(tmp_path):
    save(tmp_path, 1, "model_0000009")
    (tmp_path / "model_0000009.pth").unlink()  # as PeriodicCheckpointer's max_to_keep does
    save(tmp_path, 2, "model_0000019")
    assert not (tmp_path / "model_0000009.pth.sha256").exists()
    assert (tmp_path / "model_0000019.pth.sha256").exists()
