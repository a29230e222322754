"""Continual-learning methods, one file each, available by name from :data:`REGISTRY`."""

import importlib
import pkgutil

from retain.methods.base import REGISTRY, Batch, BenchmarkInfo, Method, register

# every module in this package defines (and registers) one method: import them all
for _mod in pkgutil.iter_modules(__path__):
    if _mod.name != "base" and not _mod.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_mod.name}")

__all__ = [
    "REGISTRY",
    "Batch",
    "BenchmarkInfo",
    "Method",
    "check_method_args",
    "make_method",
    "register",
]


def make_method(name: str, **kwargs) -> Method:
    """Instantiate a registered method by name; unknown names or arguments, and arguments of
    the wrong kind, raise ValueError (:func:`check_method_args`)."""
    check_method_args(name, kwargs)
    return REGISTRY[name](**kwargs)


def check_method_args(name: str, kwargs: dict, where: str = "method_args") -> None:
    """Raise ValueError (one line) unless ``name`` is a registered method and ``kwargs`` are
    arguments it takes, finite, and of the kinds its ``__init__`` declares (checked against
    the annotations, :mod:`retain.argcheck`); ``where`` names them in the message
    (``method_args.lamb must be a number, got 'abc'``). A ``X_args`` mapping beside an ``X``
    declared to take a :class:`Method` and naming a registered one (ScrollNet's ``base``,
    ``base_args``) is checked the same way against that method."""
    import inspect

    from retain.argcheck import check_arguments, signature_hints, suggestion

    if name not in REGISTRY:
        hint = suggestion(name, REGISTRY)
        raise ValueError(f"unknown method {name!r};{hint} valid: {', '.join(sorted(REGISTRY))}")
    cls = REGISTRY[name]
    params = inspect.signature(cls.__init__).parameters
    accepted = [p for p in params if p != "self"]
    for key in kwargs:
        if key not in accepted:
            valid = ", ".join(accepted) or "none"
            hint = suggestion(key, accepted)
            raise ValueError(f"method {name!r} has no argument {key!r};{hint} accepted: {valid}")
    for key, value in kwargs.items():
        bad = non_finite(value, key)
        if bad is not None:
            raise ValueError(f"method {name!r}: {bad[0]} must be a finite number, got {bad[1]}")
    hints = signature_hints(cls.__init__)
    check_arguments(hints, kwargs, where)
    for key, value in kwargs.items():  # base_args beside base="ewc": ewc's arguments
        inner = key[: -len("_args")] if key.endswith("_args") else None
        if inner not in params or not isinstance(value, dict) or not _takes_method(hints[inner]):
            continue
        named = kwargs.get(inner, params[inner].default)
        if isinstance(named, str) and named in REGISTRY:
            check_method_args(named, value, f"{where}.{key}")


def _takes_method(hint) -> bool:
    """Whether an annotation is :class:`Method` or a union holding it (``str | Method``)."""
    import typing

    return hint is Method or Method in typing.get_args(hint)


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
