"""Checks of named arguments against what a function declares, and "did you mean" hints.

A config gives a method, model or benchmark its arguments as plain YAML values; a value of
the wrong kind (``lamb: abc``) would otherwise fail deep inside the constructor with an error
that names neither the key nor what it wants. :func:`check_arguments` compares each value
with the parameter's type annotation (or, without one, the kind of its default) first, and
says in one line which key wants what. Only plain kinds are checked: numbers, integers,
booleans, strings, lists, mappings, ``None`` and unions of them; anything else (a class, a
callable) is accepted when the value is an instance, and unknown annotations accept anything.
"""

from __future__ import annotations

import collections.abc as cabc
import difflib
import inspect
import numbers
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from typing import Any


def did_you_mean(word: str, choices: Iterable[str]) -> str | None:
    """The choice closest to ``word`` (a misspelling), or the choice that is its initials or
    whose initials it is (``learning_rate`` -> ``lr``, ``bs`` -> ``batch_size``); None when
    none is close."""
    choices = list(choices)
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    if close:
        return close[0]
    for choice in choices:
        if (len(word) > 1 and word == _initials(choice)) or choice == _initials(word):
            return choice
    return None


def _initials(name: str) -> str:
    parts = [p for p in name.replace("-", "_").split("_") if p]
    return "".join(p[0] for p in parts) if len(parts) > 1 else ""


def suggestion(word: str, choices: Iterable[str]) -> str:
    """``" did you mean X?"`` for the closest choice, or ``""``; to append after a ``;``."""
    close = did_you_mean(word, choices)
    return f" did you mean {close}?" if close else ""


def hint_from_default(default: Any) -> Any:
    """The annotation a parameter without one is checked against: its default's kind (a bool,
    an integer, a number, a string, a list), else :data:`typing.Any`."""
    if isinstance(default, bool):
        return bool
    if isinstance(default, int):
        return int
    if isinstance(default, float):
        return float
    if isinstance(default, str):
        return str
    if isinstance(default, (list, tuple)):
        return cabc.Sequence
    return Any


def signature_hints(fn: Callable[..., Any], skip: int = 0) -> dict[str, Any]:
    """``{parameter: annotation}`` of ``fn``'s named parameters after the first ``skip``
    (``self`` is left out), from the resolved annotations, or the defaults' kinds."""
    try:
        resolved = typing.get_type_hints(fn.__init__ if isinstance(fn, type) else fn)
    except Exception:  # an annotation that does not resolve here: use the defaults
        resolved = {}
    params = [p for p in inspect.signature(fn).parameters.values() if p.name != "self"]
    out = {}
    for p in params[skip:]:
        if p.kind not in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
            continue
        default = None if p.default is p.empty else p.default
        out[p.name] = resolved.get(p.name, hint_from_default(default))
    return out


def _members(hint: Any) -> tuple[Any, ...] | None:
    origin = typing.get_origin(hint)
    if origin is typing.Union or origin is types.UnionType:
        return typing.get_args(hint)
    return None


def expected(hint: Any) -> str:
    """What ``hint`` asks for, in words: ``a number``, ``a list of integers``, ..."""
    members = _members(hint)
    if members is not None:
        words = list(dict.fromkeys(expected(m) for m in members))
        return (", or " if any(" or " in w for w in words) else " or ").join(words)
    origin = typing.get_origin(hint) or hint
    if hint is type(None) or hint is None:
        return "null"
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    if hint in names:
        return names[hint]
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(v) for v in typing.get_args(hint))
    if _is_sequence(origin):
        element = _element(hint)
        return "a list" if element is None else f"a list of {_plural(expected(element))}"
    if _is_mapping(origin):
        return "a mapping"
    if isinstance(origin, type):
        return f"a {origin.__name__}"
    return "something else"


def _plural(phrase: str) -> str:
    table = {
        "an integer": "integers",
        "a number": "numbers",
        "a string": "strings",
        "true or false": "true/false values",
    }
    return table.get(phrase, phrase)


def _element(hint: Any) -> Any:
    """The element annotation of ``Sequence[X]``, ``list[X]`` or ``tuple[X, ...]``, else None."""
    args = typing.get_args(hint)
    if len(args) == 1 or (len(args) == 2 and args[1] is Ellipsis):
        return None if args[0] is Any else args[0]
    return None


def _is_sequence(origin: Any) -> bool:
    return isinstance(origin, type) and origin in (list, tuple, cabc.Sequence, cabc.MutableSequence)


def _is_mapping(origin: Any) -> bool:
    return isinstance(origin, type) and origin in (dict, cabc.Mapping, cabc.MutableMapping)


def fits(value: Any, hint: Any) -> bool:
    """Whether ``value`` is of the kind ``hint`` declares (see the module docstring)."""
    if hint is Any or hint is inspect.Parameter.empty:
        return True
    members = _members(hint)
    if members is not None:
        return any(fits(value, m) for m in members)
    if hint is type(None) or hint is None:
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:  # numbers.Integral: numpy's integers too, from Python callers
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, numbers.Real) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    origin = typing.get_origin(hint) or hint
    if origin is typing.Literal:
        return value in typing.get_args(hint)
    if _is_sequence(origin):
        if not isinstance(value, (list, tuple)):
            return False
        element = _element(hint)
        return element is None or all(fits(v, element) for v in value)
    if _is_mapping(origin):
        return isinstance(value, Mapping)
    if isinstance(origin, type):
        try:
            return isinstance(value, origin)
        except TypeError:
            return True
    return True  # a callable, a type variable, ...: not checked here


def problem(key: str, value: Any, hint: Any) -> str | None:
    """``"KEY must be WHAT, got VALUE"`` when ``value`` does not fit ``hint``, else None."""
    if fits(value, hint):
        return None
    want = expected(hint)
    got = repr(value)
    if isinstance(value, float) and value.is_integer() and "an integer" in want:
        got += f" (a float; write {int(value)} for an integer)"
    return f"{key} must be {want}, got {got}"


def check_arguments(hints: Mapping[str, Any], values: Mapping[str, Any], where: str) -> None:
    """Raise ValueError (``"WHERE.KEY must be ..., got ..."``) for the first value that does
    not fit its parameter's annotation in ``hints``; keys not in ``hints`` are not checked."""
    for key, value in values.items():
        if key in hints:
            message = problem(f"{where}.{key}" if where else key, value, hints[key])
            if message is not None:
                raise ValueError(message)
