"""Continual-learning methods, one file each, available by name from :data:`REGISTRY`."""

import importlib
import pkgutil

from retain.methods.base import REGISTRY, Batch, BenchmarkInfo, Method, register

# every module in this package defines (and registers) one method: import them all
for _mod in pkgutil.iter_modules(__path__):
    if _mod.name != "base" and not _mod.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_mod.name}")

__all__ = ["REGISTRY", "Batch", "BenchmarkInfo", "Method", "make_method", "register"]


def make_method(name: str, **kwargs) -> Method:
    """Instantiate a registered method by name; unknown names or arguments raise ValueError."""
    import inspect

    if name not in REGISTRY:
        raise ValueError(f"unknown method {name!r}; valid: {', '.join(sorted(REGISTRY))}")
    cls = REGISTRY[name]
    params = inspect.signature(cls.__init__).parameters
    accepted = [p for p in params if p != "self"]
    for key in kwargs:
        if key not in accepted:
            valid = ", ".join(accepted) or "none"
            raise ValueError(f"method {name!r} has no argument {key!r}; accepted: {valid}")
    for key, value in kwargs.items():
        bad = non_finite(value, key)
        if bad is not None:
            raise ValueError(f"method {name!r}: {bad[0]} must be a finite number, got {bad[1]}")
    return cls(**kwargs)


def non_finite(value, key: str) -> tuple[str, float] | None:
    """The first NaN or infinite float in ``value`` (nested mappings and lists too) as
    ``(dotted key, value)``, else None."""
    import math

    if isinstance(value, float) and not math.isfinite(value):
        return key, value
    if isinstance(value, dict):
        items = list(value.items())
    elif isinstance(value, (list, tuple)):
        items = list(enumerate(value))
    else:
        return None
    for k, v in items:
        bad = non_finite(v, f"{key}.{k}")
        if bad is not None:
            return bad
    return None


def describe_methods() -> list[tuple[str, str]]:
    """``(name, summary)`` of every registered method, by name: the first sentence of its
    docstring (:func:`retain.docstrings.summary`: a long one cut after a whole word, "...")."""
    from retain.docstrings import summary

    return [(name, summary(REGISTRY[name].__doc__)) for name in sorted(REGISTRY)]
