"""Run folders and atomic writes.

Every file is written to a temporary name in the same folder and renamed over the target, so
a run killed at any moment leaves either the previous complete file or the new one.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
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


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


#: permissions of every file written here: what ``open()`` would give (0666 less the umask),
#: not ``mkstemp``'s private 0600
FILE_MODE = 0o666 & ~_umask()


def _temp_beside(path: Path) -> tuple[int, str]:
    """A new temporary file next to ``path`` (same file system, so the rename is atomic)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.fchmod(fd, FILE_MODE)
    return fd, tmp


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _temp_beside(path)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def write_yaml(path: Path, obj: Any) -> None:
    atomic_write_text(path, yaml.safe_dump(obj, sort_keys=False))


def save_torch(path: Path, obj: Any) -> None:
    path = Path(path)
    fd, tmp = _temp_beside(path)
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_torch(path: Path) -> Any:
    return torch.load(path, map_location="cpu", weights_only=False)


class EventLog:
    """``events.jsonl``: one JSON object per line (per epoch), kept in memory and rewritten
    atomically, so that a resumed run drops the events written after its checkpoint."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.events: list[dict] = []

    def load(self, n_keep: int) -> None:
        if self.path is not None and self.path.exists():
            lines = self.path.read_text().splitlines()
            self.events = [json.loads(line) for line in lines[:n_keep]]

    def append(self, event: dict) -> None:
        self.events.append(event)
        if self.path is not None:
            text = "".join(json.dumps(e, sort_keys=True) + "\n" for e in self.events)
            atomic_write_text(self.path, text)


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
