"""Where a run computes: device choice, mixed precision and host-to-device transfers.

``device``: ``cpu`` (the default: seeded CPU runs are bit-reproducible), ``cuda`` /
``cuda:N``, ``mps``, or ``auto`` (CUDA when available, else CPU). ``amp``: ``off``, ``bf16``
(autocast to bfloat16; the tested path on CPU) or ``fp16`` (autocast to float16 with a
gradient scaler; CUDA only). Benchmarks held in memory are moved to the device once; lazily
loaded images (:class:`~retain.data.LazyImages`) stay on the host and each batch is copied from
pinned memory without blocking.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch

AMP_MODES = ("off", "bf16", "fp16")


def resolve_device(name: str) -> torch.device:
    """``auto`` -> ``cuda`` when available, else ``cpu``; anything else as given.

    Raises:
        ValueError: an unknown device, or CUDA/MPS asked for where it is not available.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ValueError(f"unknown device {name!r}; use cpu, cuda, cuda:N, mps or auto") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for, but CUDA is not available here (use cpu)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {name!r} asked for, but MPS is not available here (use cpu)")
    if device.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"unknown device {name!r}; use cpu, cuda, cuda:N, mps or auto")
    return device


def check_amp(amp: str, device: torch.device) -> None:
    """Raises ValueError for an unknown mode, or ``fp16`` off CUDA (CPU autocast is bf16)."""
    if amp not in AMP_MODES:
        raise ValueError(f"unknown amp {amp!r}; choose one of {', '.join(AMP_MODES)}")
    if amp == "fp16" and device.type != "cuda":
        raise ValueError(f"amp fp16 needs a CUDA device (here: {device}); use amp bf16 on CPU")


def autocast(amp: str, device: torch.device):
    """The autocast context of ``amp`` on ``device`` (a no-op context when ``off``)."""
    if amp == "off":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def grad_scaler(amp: str, device: torch.device) -> torch.amp.GradScaler | None:
    """A gradient scaler for ``fp16`` (float16 gradients underflow without one), else None."""
    if amp != "fp16":
        return None
    return torch.amp.GradScaler(device.type)


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``t`` on ``device``; from pinned host memory without blocking when going to CUDA."""
    if t.device == device:
        return t
    if device.type == "cuda" and t.device.type == "cpu":
        if not t.is_pinned():
            t = t.pin_memory()
        return t.to(device, non_blocking=True)
    return t.to(device)


def move_benchmark(benchmark: Any, device: torch.device) -> None:
    """Move every in-memory task tensor to ``device`` (lazy images stay where they are)."""
    if device.type == "cpu":
        return
    from retain.data.lazy_images import LazyImages

    for task in benchmark:
        for name in ("x_train", "y_train", "x_test", "y_test"):
            t = getattr(task, name)
            if not isinstance(t, LazyImages):
                setattr(task, name, t.to(device))
