"""The one YAML reader of configs: YAML 1.1 (PyYAML's safe loader) with YAML 1.2's floats.

PyYAML follows YAML 1.1, where a float needs a dot and a signed exponent: ``1e-3``, ``1E9``
and ``5e+3`` are read as strings, so ``lr: 1e-3`` would be refused as "lr must be a number".
:class:`ConfigLoader` reads every number a person writes as a number: ``1e-3``, ``1E9``,
``5e+3``, ``.5``, ``-2.5e-4``, ``+1e3`` are floats; integers (``3``, ``-7``, ``0x1f``) stay
integers. Everything YAML 1.1 read as a float (``1.0e-05`` as :func:`yaml.safe_dump` writes it,
``.inf``, ``1_000.5``) is read as before, so the ``config.yaml`` of earlier runs reads the same.

Every place that reads a config (a ``--config`` file, ``--set`` values, sweep files, a run
folder's ``config.yaml``) reads it with :func:`load`.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

FLOAT_TAG = "tag:yaml.org,2002:float"

#: YAML 1.1's float forms (PyYAML's resolver), and YAML 1.2's decimal forms: digits with a dot
#: or an exponent (or both), the exponent's sign optional
FLOAT = re.compile(
    r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+][0-9]+)?
    |\.[0-9][0-9_]*(?:[eE][-+][0-9]+)?
    |[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+\.[0-9_]*
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN)
    |[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)[eE][-+]?[0-9]+
    |[-+]\.[0-9]+)$""",
    re.X,
)


class ConfigLoader(yaml.SafeLoader):
    """:class:`yaml.SafeLoader` whose float resolver also takes YAML 1.2's forms (see the
    module docstring)."""


def _with_float_resolver() -> None:
    resolvers = {
        first: [(tag, FLOAT if tag == FLOAT_TAG else regexp) for tag, regexp in entries]
        for first, entries in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }
    ConfigLoader.yaml_implicit_resolvers = resolvers
    for first in "-+0123456789.":  # every first character a float may have
        entries = resolvers.setdefault(first, [])
        if not any(tag == FLOAT_TAG for tag, _ in entries):
            entries.insert(0, (FLOAT_TAG, FLOAT))


_with_float_resolver()


def load(text: str) -> Any:
    """The value of the YAML document ``text`` (raises :class:`yaml.YAMLError`)."""
    return yaml.load(text, Loader=ConfigLoader)  # a SafeLoader subclass: plain data only


def describe_error(error: yaml.YAMLError) -> str:
    """One line for a YAML syntax error: where it is (1-based line and column) and what."""
    mark = getattr(error, "problem_mark", None)
    problem = getattr(error, "problem", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    what = problem or str(error).splitlines()[0]
    return f"{where}: {what}"
