"""The per-process cache of parsed dataset files, shared by every loader.

A loader parses its files once per process: :func:`parsed` wraps the parsing function in an
LRU cache (keyed by its arguments, for files their :func:`fingerprint`: paths, sizes and
modification times), and :func:`clear_cache` forgets everything parsed so far, whichever
module parsed it. Loaders return copies of what the cache holds.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

_CACHES: list[functools._lru_cache_wrapper] = []


def fingerprint(paths: Iterable[Path]) -> tuple[tuple[str, int, int], ...]:
    """``(resolved path, size, mtime in ns)`` of each file: a cache key that changes with them."""
    return tuple((str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in paths)


def parsed(maxsize: int) -> Callable[[Callable[..., T]], functools._lru_cache_wrapper[T]]:
    """Decorator: cache a parsing function's results (``maxsize`` of them) until
    :func:`clear_cache`."""

    def wrap(fn: Callable[..., Any]) -> functools._lru_cache_wrapper:
        cached = functools.lru_cache(maxsize=maxsize)(fn)
        _CACHES.append(cached)
        return cached

    return wrap


def clear_cache() -> None:
    """Forget every file parsed so far, by any loader (the next load reads from disk again)."""
    for cached in _CACHES:
        cached.cache_clear()
