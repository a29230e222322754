"""Which training protocol (``heads``) a row of a table trained with, and how ``retain compare``
puts every method under one protocol.

``task``: while training task ``t`` the cross-entropy sees task ``t``'s outputs only (FACIL's
multi-head training); ``seen``: it sees every class seen so far (class-incremental training,
one growing head). Task-agnostic accuracy depends on it: a method trained on ``task`` never
learned to tell the tasks' classes apart, so task-agnostic columns compare only between rows
with the same heads. A method's protocol is its :attr:`~retain.methods.Method.protocol` (the
``loss_heads`` it takes, or the one it fixes: iCaRL, BiC and LUCIR ``seen``; WSN, PackNet, HAT,
SupSup, SPG, Eidetic and One ``task``; ScrollNet its base's).
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

#: ``retain compare --protocol`` choices: one of the two heads for every method that takes
#: ``loss_heads``, or ``own``: each method's own default
PROTOCOLS = ("seen", "task", "own")
OWN = "own"
#: the argument that chooses the protocol, and the arguments of a method wrapping another
ARG = "loss_heads"
WRAPPER_ARGS = ("base", "base_args")


@lru_cache(maxsize=256)
def _protocol(method: str, args_json: str) -> str | None:
    from retain.methods import make_method

    try:
        return make_method(method, **json.loads(args_json)).protocol
    except Exception:  # a run of a method not registered here, or of an older version
        return None


def method_protocol(method: str, method_args: Mapping[str, Any] | None = None) -> str | None:
    """``"task"`` or ``"seen"``: what ``method`` built with ``method_args`` trains on; None
    when it cannot be built here (the run's method is not registered in this process)."""
    args = dict(method_args or {})
    return _protocol(method, json.dumps(args, sort_keys=True, default=str))


def _parameters(method: str) -> Mapping[str, inspect.Parameter]:
    from retain.methods import REGISTRY

    cls = REGISTRY.get(method)
    return {} if cls is None else inspect.signature(cls.__init__).parameters


def protocol_key(method: str, method_args: Mapping[str, Any] | None = None) -> str | None:
    """The dotted config key that sets the protocol of ``method`` with ``method_args``:
    ``method_args.loss_heads``, ``method_args.base_args.loss_heads`` for a wrapper (ScrollNet)
    whose base takes it, or None when the method fixes its protocol."""
    params = _parameters(method)
    if ARG in params:
        return f"method_args.{ARG}"
    if all(a in params for a in WRAPPER_ARGS):
        base = (method_args or {}).get("base", params["base"].default)
        if isinstance(base, str) and ARG in _parameters(base):
            return f"method_args.base_args.{ARG}"
    return None


def lookup(config: Mapping[str, Any], dotted: str) -> tuple[bool, Any]:
    """(present, value) of ``a.b.c`` in nested mappings."""
    node: Any = config
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return False, None
        node = node[part]
    return True, node
