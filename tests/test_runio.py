"""Atomic writes of the run folder: complete files only, with ordinary permissions."""

import os
import stat

import pytest

from retain.engine import runio


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_written_files_get_the_permissions_open_would_give(tmp_path, umask, monkeypatch):
    monkeypatch.setattr(runio, "FILE_MODE", 0o666 & ~umask)
    runio.write_json(tmp_path / "metrics.json", {"acc": 1})
    runio.save_torch(tmp_path / "checkpoint.pt", {"x": 1})
    for name in ("metrics.json", "checkpoint.pt"):
        assert stat.S_IMODE(os.stat(tmp_path / name).st_mode) == 0o666 & ~umask, name


def test_the_default_mode_follows_the_process_umask():
    old = os.umask(0o027)
    os.umask(old)
    assert (0o666 & ~old) == runio.FILE_MODE


def test_failed_write_keeps_the_previous_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "metrics.json"
    runio.write_json(path, {"acc": 1})

    def disk_full(_fd):
        raise OSError("no space left on device")

    monkeypatch.setattr(runio.os, "fsync", disk_full)
    with pytest.raises(OSError, match="no space"):
        runio.write_json(path, {"acc": 2})
    assert path.read_text() == '{\n  "acc": 1\n}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]
