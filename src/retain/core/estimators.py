"""The registry of importance estimators: every estimator by name, registered in one place.

A consumer (EWC's quadratic penalty, SPG's soft gradient mask) takes its estimator by name
with options, ``make_importance("fisher", labels="true")``, or as an instance. The built-in
ones are :class:`~retain.core.importance.FisherImportance` (``"fisher"``),
:class:`~retain.core.importance.MASImportance` (``"mas"``),
:class:`~retain.core.importance.PathIntegral` (``"si"``),
:class:`~retain.core.importance.RiemannianWalk` (``"rwalk"``: EWC++'s online Fisher plus the
path score) and :class:`~retain.core.spg_importance.SPGImportance` (``"spg"``);
:func:`register_importance` adds one of your own.
"""

from __future__ import annotations

from typing import Any

from retain.core.importance import (
    FisherImportance,
    Importance,
    MASImportance,
    PathIntegral,
    RiemannianWalk,
)
from retain.core.spg_importance import SPGImportance

ESTIMATORS: dict[str, type[Importance]] = {
    cls.name: cls
    for cls in (FisherImportance, MASImportance, PathIntegral, RiemannianWalk, SPGImportance)
}


def register_importance(cls: type[Importance]) -> type[Importance]:
    """Class decorator: make an estimator available by its ``name``."""
    if cls.name in ESTIMATORS:
        raise ValueError(f"importance estimator {cls.name!r} registered twice")
    ESTIMATORS[cls.name] = cls
    return cls


def make_importance(name: str | Importance, **kwargs: Any) -> Importance:
    """An estimator by registered name (with keyword options), or ``name`` itself if it is
    already an :class:`~retain.core.importance.Importance`."""
    if isinstance(name, Importance):
        if kwargs:
            raise ValueError("options can only be given with an estimator name")
        return name
    if name not in ESTIMATORS:
        raise ValueError(f"unknown importance {name!r}; valid: {', '.join(sorted(ESTIMATORS))}")
    return ESTIMATORS[name](**kwargs)
