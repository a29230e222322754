"""Checkpoints you can trust (issue 18, items 1-3 and part of 7): no code from a checkpoint
(``weights_only``), damaged, truncated or foreign files refused in one line, a run folder
whose config.yaml no longer describes its checkpoint refused, a corrupt metrics.json rebuilt
on resume; and every registered method's real checkpoint loads under ``weights_only``."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from retain.cli import main
from retain.engine import fit, runio
from retain.methods import REGISTRY
from tests.test_cli import FAST, RUN, _error_line
from tests.test_contract import _bench, _fit_args, _kill_after, _method, _model


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A finished `retain run` of ER (read-only: tests copy it)."""
    out = tmp_path_factory.mktemp("finished") / "run"
    assert main([*RUN, *FAST, "--method", "er", "--out", str(out)]) == 0
    return out


@pytest.fixture
def run(finished, tmp_path) -> Path:
    """A copy of the finished run, to damage."""
    return Path(shutil.copytree(finished, tmp_path / "run"))


def _payload_span(path: Path) -> tuple[int, int]:
    """(start, length) of the torch-saved payload after the checkpoint's header."""
    data = path.read_bytes()
    start = data.index(b"\n", len(runio.CHECKPOINT_MAGIC)) + 1
    return start, len(data) - start


def _write_checkpoint(path: Path, payload: bytes, fmt: int = runio.CHECKPOINT_FORMAT) -> None:
    """A checkpoint file around ``payload`` with a valid header (size and checksum)."""
    header = {
        "format": fmt,
        "size": len(payload),
        "sha256": hashlib.sha256(payload).hexdigest(),
    }
    path.write_bytes(runio.CHECKPOINT_MAGIC + json.dumps(header).encode() + b"\n" + payload)


class _Evil:
    """Unpickled, it would create ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _evil_payload(marker: Path) -> bytes:
    buf = io.BytesIO()
    torch.save({"task": 0, "task_done": True, "model": _Evil(marker)}, buf)
    return buf.getvalue()


# ------------------------------------------------------------------ 1. no code from a file
def test_malicious_checkpoint_runs_nothing_on_run_resume(run, tmp_path, capsys):
    marker = tmp_path / "pwned"
    _write_checkpoint(run / runio.CHECKPOINT, _evil_payload(marker))
    capsys.readouterr()
    assert main(["run", "--resume", str(run)]) == 2
    assert not marker.exists()
    err = _error_line(capsys)
    assert "checkpoint.pt holds objects other than tensors" in err and "system" in err


def test_malicious_checkpoint_of_the_earlier_format_runs_nothing(run, tmp_path, capsys):
    marker = tmp_path / "pwned"
    (run / runio.CHECKPOINT).write_bytes(_evil_payload(marker))  # a plain torch.save file
    capsys.readouterr()
    assert main(["run", "--resume", str(run)]) == 2
    assert not marker.exists()
    assert "written by an earlier retain" in _error_line(capsys)


def test_malicious_checkpoint_runs_nothing_on_a_compare_trial_resume(tmp_path, capsys):
    out, marker = tmp_path / "cmp", tmp_path / "pwned"
    argv = ["compare", *FAST[:-1], "--methods", "er", "--seeds", "1", "--out", str(out)]
    assert main(argv) == 0
    (trial,) = [p for p in out.iterdir() if p.is_dir() and p.name.startswith("split-digits-")]
    (trial / runio.METRICS).unlink()  # an interrupted trial: resumed from its checkpoint
    _write_checkpoint(trial / runio.CHECKPOINT, _evil_payload(marker))
    capsys.readouterr()
    assert main(argv) != 0
    assert not marker.exists()
    captured = capsys.readouterr()
    assert "CheckpointError" in captured.out + captured.err
    assert "Traceback" not in captured.err
    assert not marker.exists()


# ------------------------------------------------------------------ 2. damaged bytes
def _resume_error(run: Path, capsys) -> str:
    capsys.readouterr()
    assert main(["run", "--resume", str(run)]) == 2
    err = _error_line(capsys)
    assert str(run / runio.CHECKPOINT) in err
    return err


def test_overwritten_bytes_are_noticed(run, capsys):
    path = run / runio.CHECKPOINT
    start, size = _payload_span(path)
    data = bytearray(path.read_bytes())
    middle = start + size // 2
    data[middle : middle + 64] = torch.randint(0, 256, (64,), dtype=torch.uint8).numpy().tobytes()
    path.write_bytes(bytes(data))
    assert "damaged (checksum mismatch)" in _resume_error(run, capsys)


def test_truncated_checkpoint_is_noticed(run, capsys):
    path = run / runio.CHECKPOINT
    start, size = _payload_span(path)
    path.write_bytes(path.read_bytes()[: start + size // 2])
    assert "is truncated" in _resume_error(run, capsys)


def test_truncated_header_is_noticed(run, capsys):
    path = run / runio.CHECKPOINT
    path.write_bytes(path.read_bytes()[: len(runio.CHECKPOINT_MAGIC) + 20])
    assert "damaged header" in _resume_error(run, capsys)


def test_unknown_format_version_is_refused(run, capsys):
    path = run / runio.CHECKPOINT
    start, _ = _payload_span(path)
    _write_checkpoint(path, path.read_bytes()[start:], fmt=99)
    assert "checkpoint format 99" in _resume_error(run, capsys)


# ------------------------------------------------------------------ 3. a folder cannot lie
@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda t: t.replace("lr: 0.01", "lr: 0.5"), "lr: 0.01 in the checkpoint, 0.5 in"),
        (lambda t: t.replace("epochs: 1", "epochs: 3"), "epochs: 1 in the checkpoint, 3 in"),
        (lambda t: t.replace("method: er", "method: ewc"), "method: 'er' in the checkpoint"),
        (lambda t: "", "in the checkpoint"),
    ],
    ids=["lr", "epochs", "method", "empty"],
)
def test_edited_config_yaml_is_refused(run, capsys, edit, expected):
    cfg = run / runio.CONFIG
    text = cfg.read_text()
    assert edit(text) != text
    cfg.write_text(edit(text))
    before = (run / runio.METRICS).read_bytes()
    capsys.readouterr()
    assert main(["run", "--resume", str(run)]) == 2
    err = _error_line(capsys)
    assert "config.yaml is not the config checkpoint.pt was trained with" in err
    assert expected in err
    assert (run / runio.METRICS).read_bytes() == before


def test_fit_refuses_a_checkpoint_of_another_config(tmp_path):
    bench = _bench("er")
    kw = _fit_args("er")
    fit(_model("er", bench), bench, _method("er"), run_dir=tmp_path, **kw)
    with pytest.raises(runio.CheckpointError, match=r"another config \(lr: 0.05 in the check"):
        fit(
            _model("er", bench),
            bench,
            _method("er"),
            run_dir=tmp_path,
            resume=True,
            **{**kw, "lr": 0.5},
        )
    with pytest.raises(runio.CheckpointError, match=r"method: 'er' in the checkpoint, 'ewc'"):
        fit(_model("er", bench), bench, _method("ewc"), run_dir=tmp_path, resume=True, **kw)
    fit(_model("er", bench), bench, _method("er"), run_dir=tmp_path, resume=True, **kw)


# ------------------------------------------------------------------ 7. corrupt metrics.json
def test_corrupt_metrics_json_is_rebuilt_on_resume(finished, tmp_path, monkeypatch, capsys):
    """Killed after task 2's checkpoint, metrics.json garbled: the resume rebuilds it from the
    checkpoint; and a finished run's garbled metrics.json is rebuilt too. Both byte-identical
    to the uninterrupted run's."""
    argv = [*RUN, *FAST, "--method", "er"]
    killed = tmp_path / "killed"
    _, killed_exc = _kill_after(monkeypatch, lambda s: s["task"] == 1 and s["task_done"])
    with pytest.raises(killed_exc):
        main([*argv, "--out", str(killed)])
    (killed / runio.METRICS).write_text('{"task_aware": {"rows": [[0.5')
    assert main(["run", "--resume", str(killed), "--quiet"]) == 0
    expected = (finished / runio.METRICS).read_bytes()
    assert (killed / runio.METRICS).read_bytes() == expected

    (killed / runio.METRICS).write_bytes(b"\xff\xfe not json")
    capsys.readouterr()
    assert main(["run", "--resume", str(killed), "--quiet"]) == 0
    assert "Traceback" not in capsys.readouterr().err
    assert (killed / runio.METRICS).read_bytes() == expected


# ------------------------------------------------------------------ every method
@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_every_methods_real_checkpoint_loads_under_weights_only(name, tmp_path):
    bench = _bench(name)
    kw = dict(_fit_args(name), checkpoint_every=1)
    fit(_model(name, bench), bench, _method(name), run_dir=tmp_path, **kw)
    path = tmp_path / runio.CHECKPOINT
    start, _ = _payload_span(path)
    state = torch.load(io.BytesIO(path.read_bytes()[start:]), weights_only=True)
    assert state["config"]["method"] == name
    assert runio.load_torch(path).keys() == state.keys()
