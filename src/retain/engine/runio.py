"""Run folders and atomic writes.

Every file is written to a temporary name in the same folder and renamed over the target, so
a run killed at any moment leaves either the previous complete file or the new one.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import yaml

from retain.engine import distributed

CONFIG = "config.yaml"
METRICS = "metrics.json"
EVENTS = "events.jsonl"
CHECKPOINT = "checkpoint.pt"
ENVIRONMENT = "environment.json"
TIMINGS = "timings.json"
#: the key of ``config.yaml`` listing the parts of a run that :func:`retain.fit` got as Python
#: objects of one's own (``{"model": "mypackage.Net"}``): ``retain run --resume`` cannot
#: rebuild them, ``retain.fit(..., resume=True)`` continues the run
OWN_OBJECTS = "own_objects"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


#: permissions of every file written here: what ``open()`` would give (0666 less the umask),
#: not ``mkstemp``'s private 0600
FILE_MODE = 0o666 & ~_umask()


#: the names :func:`_temp_beside` gives: ``.<target name>.<8 characters of mkstemp>.tmp``
TEMP_PATTERN = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp$")


def _temp_beside(path: Path) -> tuple[int, str]:
    """A new temporary file next to ``path`` (same file system, so the rename is atomic),
    named after :data:`TEMP_PATTERN`."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.fchmod(fd, FILE_MODE)
    return fd, tmp


def remove_stale_temps(folder: Path) -> list[Path]:
    """Remove the temporaries a killed writer left in ``folder`` (files matching
    :data:`TEMP_PATTERN` only, nothing else); call it with the folder's lock held, when a run
    starts or resumes there. Returns the files removed."""
    removed = []
    try:
        entries = list(Path(folder).iterdir())
    except OSError:
        return removed
    for entry in entries:
        if TEMP_PATTERN.match(entry.name) and entry.is_file() and not entry.is_symlink():
            try:
                entry.unlink()
            except OSError:
                continue
            removed.append(entry)
    return removed


class RunFileError(OSError):
    """A run folder's file that cannot be written (disk full, no permission) or read back
    (garbled); the message is one line naming the file. Nothing already written is lost: a
    failed write leaves the previous complete file. An ``OSError``, as the failure it
    replaces."""


def _size(n: int) -> str:
    for unit, scale, least in (("GB", 1e9, 1e9), ("MB", 1e6, 1e5), ("kB", 1e3, 1e3)):
        if n >= least:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


def write_failed(path: Path, error: OSError, size: int | None = None) -> RunFileError:
    """The one-line :class:`RunFileError` for a failed write of ``size`` bytes to ``path``:
    with the space it needs and the space free when the disk is full."""
    import errno
    import shutil

    what = error.strerror or str(error)
    if error.errno in (errno.ENOSPC, errno.EDQUOT) and size is not None:
        try:
            free = f", {_size(shutil.disk_usage(Path(path).parent).free)} free"
        except OSError:
            free = ""
        what = f"no space left on the device (it needs about {_size(size)}{free})"
    return RunFileError(f"cannot write {path}: {what}")


def check_writable(folder: Path) -> None:
    """Raise :class:`RunFileError` unless files can be created in ``folder`` (made if
    missing): tried with a temporary file, then undone, folders made included."""
    folder = Path(folder)
    missing = []
    p = folder
    while not p.exists() and p != p.parent:
        missing.append(p)
        p = p.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = _temp_beside(folder / "probe")
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        raise RunFileError(f"cannot write in {folder}: {e.strerror or e}") from None
    finally:
        for d in missing:  # deepest first
            try:
                d.rmdir()
            except OSError:
                break


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary beside it; a failure
    (:class:`RunFileError`) leaves the previous file as it was."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = _temp_beside(path)
    except OSError as e:
        raise write_failed(path, e, len(data)) from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise write_failed(path, e, len(data)) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def write_yaml(path: Path, obj: Any) -> None:
    atomic_write_text(path, yaml.safe_dump(obj, sort_keys=False))


#: the first line of every checkpoint this version writes
CHECKPOINT_MAGIC = b"retain checkpoint\n"
#: the checkpoint format: a checkpoint of another format is refused (:class:`CheckpointError`)
CHECKPOINT_FORMAT = 2
_ZIP_MAGIC = b"PK\x03\x04"  # a plain ``torch.save`` file (format 1, before the header)


class CheckpointError(ValueError):
    """A checkpoint that cannot be used, in one line naming the file: not a checkpoint, of
    another format, damaged (checksum), truncated, holding objects other than tensors and
    plain containers, or trained with another config than the one given to resume it."""


def save_torch(path: Path, obj: Any) -> None:
    """Write the checkpoint ``obj`` (a dict of tensors in plain dicts, lists and tuples) to
    ``path`` atomically.

    The file is :data:`CHECKPOINT_MAGIC`, then one line of JSON, then the payload (the bytes of
    ``torch.save(obj)``). The JSON line holds ``format`` (:data:`CHECKPOINT_FORMAT`) and the
    payload's length (``size``) and SHA-256 (``sha256``), checked by :func:`load_torch`."""
    import hashlib
    import io

    path = Path(path)
    buf = io.BytesIO()
    torch.save(obj, buf)
    payload = buf.getvalue()
    header = {
        "format": CHECKPOINT_FORMAT,
        "size": len(payload),
        "sha256": hashlib.sha256(payload).hexdigest(),
    }
    head = CHECKPOINT_MAGIC + json.dumps(header, sort_keys=True).encode() + b"\n"
    try:
        fd, tmp = _temp_beside(path)
    except OSError as e:
        raise write_failed(path, e, len(head) + len(payload)) from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(head)
            f.write(payload)
        os.replace(tmp, path)
    except OSError as e:  # disk full: one line with the space the checkpoint needs
        Path(tmp).unlink(missing_ok=True)
        raise write_failed(path, e, len(head) + len(payload)) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _read_header(path: Path, f) -> dict[str, Any]:
    """The JSON line of the checkpoint open in ``f`` (positioned after it), checked."""
    start = f.read(len(CHECKPOINT_MAGIC))
    if start != CHECKPOINT_MAGIC:
        if start.startswith(_ZIP_MAGIC):
            raise CheckpointError(
                f"{path} was written by an earlier retain (no checksum, no stored config) and "
                "is not loaded; start the run again in a new folder"
            )
        raise CheckpointError(f"{path} is not a retain checkpoint")
    line = f.readline(1 << 20)
    try:
        header = json.loads(line)
    except ValueError:
        header = None
    if not isinstance(header, dict) or not line.endswith(b"\n"):
        raise CheckpointError(f"{path}: damaged header (truncated or overwritten)")
    if header.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{path} has checkpoint format {header.get('format')!r}; this retain reads format "
            f"{CHECKPOINT_FORMAT} only"
        )
    if not isinstance(header.get("size"), int) or not isinstance(header.get("sha256"), str):
        raise CheckpointError(f"{path}: damaged header (no size or checksum)")
    return header


def config_difference(trained: Any, given: dict[str, Any], where: str = "given") -> str | None:
    """``"KEY: A in the checkpoint, B <where>"`` for the first key (in ``given``'s order) whose
    value differs between the config a checkpoint was trained with and the one given to resume
    it; ``None`` if they are equal. Both are compared as JSON (the header's form)."""
    if not isinstance(trained, dict):
        return "the checkpoint stores no config"
    trained, given = json.loads(json.dumps(trained)), json.loads(json.dumps(given))
    for key in [*given, *(k for k in trained if k not in given)]:
        a, b = trained.get(key, "<absent>"), given.get(key, "<absent>")
        if a != b:
            return f"{key}: {a!r} in the checkpoint, {b!r} {where}"
    return None


def load_torch(path: Path) -> Any:
    """Read a checkpoint written by :func:`save_torch`, verifying its format, length and
    checksum, and unpickling with ``weights_only=True``: tensors and plain containers only,
    so a crafted file can run no code. Every failure is a :class:`CheckpointError`."""
    import hashlib
    import io
    import pickle

    path = Path(path)
    try:
        with open(path, "rb") as f:
            header = _read_header(path, f)
            payload = f.read()
    except OSError as e:
        raise CheckpointError(f"{path}: {e.strerror or e}") from None
    if len(payload) != header["size"]:
        raise CheckpointError(
            f"{path} is truncated or extended ({len(payload)} bytes of payload, "
            f"{header['size']} written)"
        )
    if hashlib.sha256(payload).hexdigest() != header["sha256"]:
        raise CheckpointError(f"{path} is damaged (checksum mismatch)")
    try:
        state = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:  # weights_only refused a global: no code was run
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        what = found.group(1) if found else ""
        raise CheckpointError(
            f"{path} holds objects other than tensors{f' ({what})' if what else ''}; "
            "refused (no code from a checkpoint is run)"
        ) from None
    except (RuntimeError, ValueError, EOFError) as e:
        raise CheckpointError(f"{path}: unreadable payload ({str(e).splitlines()[0]})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} holds a {type(state).__name__}, not a checkpoint's dict")
    return state


#: how non-finite floats are written in ``events.jsonl`` (JSON has no NaN or Infinity)
_NON_FINITE = {"NaN": float("nan"), "Infinity": float("inf"), "-Infinity": float("-inf")}


def _finite_json(value: Any) -> Any:
    """``value`` with every non-finite float as the string ``"NaN"``, ``"Infinity"`` or
    ``"-Infinity"`` (read back as floats by :func:`_from_json`)."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, dict):
        return {k: _finite_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_json(v) for v in value]
    return value


def _from_json(value: Any) -> Any:
    if isinstance(value, str) and value in _NON_FINITE:
        return _NON_FINITE[value]
    if isinstance(value, dict):
        return {k: _from_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_from_json(v) for v in value]
    return value


def _event_line(event: dict) -> str:
    return json.dumps(_finite_json(event), sort_keys=True, allow_nan=False) + "\n"


def read_events(path: Path) -> tuple[list[dict], bool]:
    """The events of an ``events.jsonl`` and whether its last line was partial (a writer
    killed mid-line: dropped). A line that is not a JSON object elsewhere raises
    :class:`RunFileError`."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise RunFileError(f"cannot read {path}: {e.strerror or e}") from None
    lines = data.split(b"\n")
    partial = lines[-1] != b""  # no newline at the end: the last write was cut short
    last = lines.pop()
    if partial:
        try:
            if isinstance(json.loads(last.decode()), dict):
                lines.append(last)  # only the newline was lost: a whole event
        except ValueError:
            pass
    events = []
    for i, line in enumerate(lines, 1):
        try:
            event = json.loads(line.decode())
        except ValueError:
            event = None
        if not isinstance(event, dict):
            raise RunFileError(
                f"{path}: line {i} is not a JSON object (garbled); move the file away to "
                "resume without the log of the epochs before the checkpoint"
            )
        events.append(_from_json(event))
    return events, partial


class EventLog:
    """``events.jsonl``: one JSON object per line (per epoch; non-finite floats as the strings
    ``"NaN"``, ``"Infinity"``, ``"-Infinity"``). Every event is appended as one line; the whole
    file is written only by the first event of a fresh log and by :meth:`load` (a resume
    drops the events written after its checkpoint). A killed writer may leave a partial last
    line, which :meth:`load` drops."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.events: list[dict] = []
        self._on_disk = False  # whether the file holds exactly ``self.events``

    def load(self, n_keep: int) -> None:
        """Keep the first ``n_keep`` events of the file (those its checkpoint counts), and
        rewrite it once if it holds more; warn (one line) when it holds fewer."""
        if self.path is None or not self.path.exists():
            if self.path is not None and n_keep > 0:
                _warn(
                    f"{self.path} is missing; the log of the epochs before the checkpoint "
                    "is lost, the run goes on"
                )
            return
        events, partial = read_events(self.path)
        self.events = events[:n_keep]
        if len(events) < n_keep:
            _warn(
                f"{self.path} holds {len(events)} of the {n_keep} events its checkpoint counts "
                "(truncated); the log of the missing epochs is lost, the run goes on"
            )
        if partial or len(events) != len(self.events):
            self._write_all()
        self._on_disk = True

    def _write_all(self) -> None:
        assert self.path is not None
        atomic_write_text(self.path, "".join(_event_line(e) for e in self.events))

    def append(self, event: dict) -> None:
        self.events.append(event)
        if self.path is None:
            return
        if not self._on_disk:  # a fresh log: replace whatever an earlier start left
            self._write_all()
            self._on_disk = True
            return
        line = _event_line(event).encode()
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, FILE_MODE)
            try:
                os.write(fd, line)  # one write: a kill leaves at most a partial last line
            finally:
                os.close(fd)
        except OSError as e:
            raise write_failed(self.path, e, len(line)) from None


def _warn(message: str) -> None:
    print(f"retain: warning: {message}", file=sys.stderr)


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def environment(seed: int, threads: int) -> dict:
    import numpy

    return {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "platform": platform.platform(),
        "seed": seed,
        "threads": threads,
        "processes": distributed.requested_world_size(),
        "git_commit": git_commit(),
    }


# ---------------------------------------------------------------------- starting a run folder
#: the files whose presence means a folder already holds a run: a new run refuses it
RUN_MARKERS = (CONFIG, METRICS, CHECKPOINT)


class RunFolderError(ValueError):
    """A folder a run cannot be started in, in one line: it already holds a run, is not a
    folder, cannot be written, or another process writes it (its lock is held). Raised
    before anything is written into the folder."""


class FolderBusy(Exception):
    """Another process holds the lock of a run folder (:func:`folder_lock`)."""


def lock_path(run_dir: Path) -> Path:
    """``.<name>.lock`` beside ``run_dir`` (resolved, so that every spelling of a folder
    names one lock): outside the folder, so that taking it writes nothing into the folder."""
    run_dir = Path(run_dir).resolve()
    return run_dir.parent / f".{run_dir.name}.lock"


@contextlib.contextmanager
def folder_lock(path: Path, blocking: bool = True) -> Iterator[None]:
    """Hold an exclusive ``flock`` on the file ``path`` (created if missing). ``blocking``:
    wait for it; else raise :class:`FolderBusy` at once. The operating system releases the
    lock when its holder dies (a SIGKILL leaves no stale lock). No-op without ``fcntl``."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX if blocking else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise FolderBusy(str(path)) from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def claim_run_dir(held: contextlib.ExitStack, run_dir: Path, option: str = "run_dir") -> None:
    """Take ``run_dir``'s lock (:func:`lock_path`; the one ``retain run``, ``compare`` and
    ``sweep`` take) into ``held``, before anything is written; :class:`RunFolderError` if
    another process holds it. ``option`` names the argument to change in the message
    (``--out`` for the command line, ``run_dir`` for :func:`retain.fit`)."""
    try:
        held.enter_context(folder_lock(lock_path(run_dir), blocking=False))
    except FolderBusy:
        raise RunFolderError(
            f"{str(run_dir)!r} is in use by another retain process (its lock "
            f"{lock_path(run_dir).name} is held); wait for it to end or use another {option}"
        ) from None
    except OSError as e:
        raise RunFolderError(f"cannot write beside {str(run_dir)!r}: {e.strerror}") from None


def check_new_run_dir(run_dir: Path, option: str, resume: str) -> None:
    """Refuse (:class:`RunFolderError`, writing nothing) to start a new run in ``run_dir``
    when it is not a folder, cannot be written (tried, then undone), or already holds a run
    (any of :data:`RUN_MARKERS`). ``option`` names the folder's argument and ``resume`` the
    way to continue the run there, in the messages: ``retain run`` passes ``--out`` and
    ``--resume DIR``, :func:`retain.fit` ``run_dir`` and ``resume=True``."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise RunFolderError(f"{option} {str(run_dir)!r} exists and is not a folder")
    try:
        check_writable(run_dir)
    except RunFileError as e:
        raise RunFolderError(f"{option}: {e}") from None
    if run_dir.is_dir() and any((run_dir / f).exists() for f in RUN_MARKERS):
        raise RunFolderError(
            f"{str(run_dir)!r} already holds a run; use {resume} or another {option}"
        )
