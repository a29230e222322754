"""What ``retain list`` shows: the registered names with a line each, or one name in full.

The list of names is read from the source files with :mod:`ast`, without importing them (and
torch): every class decorated ``@register`` in ``retain/methods`` (its ``name`` and docstring),
every ``BenchmarkEntry(name, description, ...)`` in ``retain/data/catalog.py``, every
``register_model(name, builder, description, ...)`` in ``retain/models/registry.py``. When a
file holds something this reading cannot resolve (a name that is not a literal), the
registries are imported instead, so the listing always equals ``describe_methods()``,
``describe_benchmarks()`` and ``describe_models()`` (tests/test_list.py checks both paths).

One name in full (:func:`details`) imports its registry: the arguments come from the code's
own signatures, their meanings from the docstrings' ``Args:`` sections.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import inspect
import textwrap
from collections.abc import Callable
from pathlib import Path

from retain.docstrings import argument_docs, first_sentence, plain, summary

PACKAGE = Path(__file__).resolve().parent
#: the checkout's docs/methods, when retain runs from a source tree
METHOD_DOCS = PACKAGE.parent.parent / "docs" / "methods"
WIDTH = 100
LIST_HINT = "retain list NAME: the arguments of one, with their defaults and meanings"

Rows = list[tuple[str, str]]


class Unresolved(Exception):
    """A registration the source reading cannot resolve (not literal strings)."""


class UnknownName(ValueError):
    """A name that is no method, benchmark or model; the message says the closest ones."""


# ---------------------------------------------------------------------------- from the sources
def _literal(node: ast.expr | None) -> str:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    raise Unresolved(ast.dump(node) if node is not None else "missing")


def _call_arg(call: ast.Call, index: int, keyword: str) -> ast.expr | None:
    for kw in call.keywords:
        if kw.arg == keyword:
            return kw.value
    return call.args[index] if len(call.args) > index else None


def _called(node: ast.AST, name: str) -> bool:
    """Whether ``node`` is a call of ``name`` (or of ``something.name``)."""
    if not isinstance(node, ast.Call):
        return False
    f = node.func
    return (isinstance(f, ast.Name) and f.id == name) or (
        isinstance(f, ast.Attribute) and f.attr == name
    )


def _is_register(decorator: ast.expr) -> bool:
    return (isinstance(decorator, ast.Name) and decorator.id == "register") or (
        isinstance(decorator, ast.Attribute) and decorator.attr == "register"
    )


def _class_name(cls: ast.ClassDef) -> str:
    """The value of the ``name = "..."`` assignment in a class body."""
    for stmt in cls.body:
        targets = stmt.targets if isinstance(stmt, ast.Assign) else []
        if isinstance(stmt, ast.AnnAssign):
            targets = [stmt.target]
        if any(isinstance(t, ast.Name) and t.id == "name" for t in targets):
            return _literal(stmt.value)
    raise Unresolved(f"class {cls.name} sets no name")


def _parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), str(path))


def source_methods() -> Rows:
    """``(name, summary)`` of every ``@register`` class in ``retain/methods``, by name."""
    rows = []
    for path in sorted((PACKAGE / "methods").glob("*.py")):
        for node in ast.walk(_parse(path)):
            if isinstance(node, ast.ClassDef) and any(map(_is_register, node.decorator_list)):
                rows.append((_class_name(node), summary(ast.get_docstring(node, clean=False))))
    return sorted(rows)


def _in_order(path: Path, call: str, description_at: int) -> Rows:
    """``(name, description)`` of the calls of ``call`` in ``path``, in source order."""
    calls = [n for n in ast.walk(_parse(path)) if _called(n, call)]
    calls.sort(key=lambda n: (n.lineno, n.col_offset))
    return [
        (_literal(_call_arg(n, 0, "name")), _literal(_call_arg(n, description_at, "description")))
        for n in calls
    ]


def source_benchmarks() -> Rows:
    """``(name, description)`` of every ``BenchmarkEntry`` of the catalog, in its order."""
    return _in_order(PACKAGE / "data" / "catalog.py", "BenchmarkEntry", 1)


def source_models() -> Rows:
    """``(name, description)`` of every ``register_model`` call, in registration order."""
    return _in_order(PACKAGE / "models" / "registry.py", "register_model", 2)


# ---------------------------------------------------------------------------- from the registries
def registry_methods() -> Rows:
    from retain.methods import describe_methods

    return describe_methods()


def registry_benchmarks() -> Rows:
    from retain.data import describe_benchmarks

    return describe_benchmarks()


def registry_models() -> Rows:
    from retain.models import describe_models

    return describe_models()


KINDS: tuple[tuple[str, Callable[[], Rows], Callable[[], Rows]], ...] = (
    ("methods", source_methods, registry_methods),
    ("benchmarks", source_benchmarks, registry_benchmarks),
    ("models", source_models, registry_models),
)


def listing() -> list[tuple[str, Rows]]:
    """``(kind, rows)`` for methods, benchmarks and models: from the sources (no import),
    or from the registries where the sources cannot be read that way."""
    out = []
    for kind, from_source, from_registry in KINDS:
        try:
            rows = from_source()
        except (Unresolved, OSError, SyntaxError):
            rows = from_registry()
        out.append((kind, rows))
    return out


def format_listing(sections: list[tuple[str, Rows]]) -> str:
    """The text of ``retain list``: a titled block per kind, names aligned."""
    lines = []
    for title, rows in sections:
        lines.append(f"{title}:")
        width = max(len(name) for name, _ in rows)
        lines += [f"  {name:<{width}}  {doc}".rstrip() for name, doc in rows]
    lines += ["", LIST_HINT]
    return "\n".join(lines)


# ---------------------------------------------------------------------------- one name in full
def details(name: str) -> str:
    """Everything ``retain list NAME`` shows of a method, benchmark or model (each kind that
    has the name). Raises :class:`UnknownName` for a name of none."""
    kinds = {kind: {n for n, _ in rows} for kind, rows in listing()}
    blocks = []
    if name in kinds["methods"]:
        blocks.append(method_details(name))
    if name in kinds["benchmarks"]:
        blocks.append(benchmark_details(name))
    if name in kinds["models"]:
        blocks.append(model_details(name))
    if not blocks:
        raise UnknownName(unknown_message(name, sorted(set().union(*kinds.values()))))
    return "\n\n".join(blocks)


def unknown_message(name: str, names: list[str]) -> str:
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.6)
    hint = f"did you mean {' or '.join(map(repr, close))}?" if close else "see `retain list`"
    return f"{name!r} is no method, benchmark or model; {hint}"


def method_details(name: str) -> str:
    from retain.methods import REGISTRY

    cls = REGISTRY[name]
    lines = _head(name, "method", f"--method {name}", cls.__doc__)
    lines += _wrap(f"task-agnostic: {task_agnostic(cls)}", "  ", "    ")
    note = plain(cls.data_parallel_note) or "no reason given"
    parallel = "yes" if cls.data_parallel else f"no ({note})"
    lines += _wrap(f"data-parallel (torchrun): {parallel}", "  ", "    ")
    page = method_page(name, cls.__doc__)
    if page is not None:
        lines.append(f"  docs: {page}")
    params = list(inspect.signature(cls.__init__).parameters.values())[1:]
    lines += _arguments("method_args", params, argument_docs(cls))
    return "\n".join(lines)


def task_agnostic(cls: type) -> str:
    """Whether a method predicts without a task id (its ``task_agnostic``), in words."""
    said = (
        "yes (predicts without a task id)"
        if cls.task_agnostic
        else "no (needs the task id to predict; its task-agnostic accuracy is NaN)"
    )
    if "self.task_agnostic" in inspect.getsource(cls.__init__):  # ScrollNet: its base's
        said = f"{said.split(' ', 1)[0]} by default; an instance sets it from its arguments"
    return said


def method_page(name: str, doc: str | None) -> str | None:
    """The docs page of a method: the ``docs/methods/...md`` its docstring names, else
    ``docs/methods/<name>.md``; None when the checkout has no such file."""
    words = [w.rstrip(".,;)") for w in (doc or "").split() if w.startswith("docs/methods/")]
    for page in [*words, f"docs/methods/{name}.md"]:
        if (METHOD_DOCS / page.split("#")[0].removeprefix("docs/methods/")).is_file():
            return page
    return None


def benchmark_details(name: str) -> str:
    from retain.data import BENCHMARKS, catalog

    builder = BENCHMARKS[name]
    lines = _head(name, "benchmark", f"--benchmark {name}", builder.__doc__, paragraphs=2)
    params = list(inspect.signature(builder).parameters.values())
    family = getattr(builder, "build", None)
    sources = [builder] + ([family, catalog] if family is not None else [])
    lines += _arguments("benchmark_args", params, argument_docs(*sources))
    return "\n".join(lines)


def model_details(name: str) -> str:
    from retain.models import MODEL_DESCRIPTIONS, MODELS

    builder = MODELS[name]
    lines = _head(name, "model", f"--model {name}", MODEL_DESCRIPTIONS[name])
    params = list(inspect.signature(builder).parameters.values())[1:]  # after input_shape
    lines += _arguments("model_args", params, argument_docs(builder))
    return "\n".join(lines)


def _head(name: str, kind: str, flag: str, doc: str | None, paragraphs: int = 1) -> list[str]:
    """The name, its kind, and the first ``paragraphs`` of ``doc`` (plain, wrapped)."""
    lines = [f"{name}: {kind} ({flag})"]
    for paragraph in inspect.cleandoc(doc or "").split("\n\n")[:paragraphs]:
        lines += _wrap(plain(paragraph), "  ")
    return lines


def _arguments(key: str, params: list[inspect.Parameter], docs: dict[str, str]) -> list[str]:
    """The argument table: name, default and the first sentence of its meaning."""
    params = [p for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    if not params:
        return ["arguments: none"]
    rows = [(p.name, show_default(p.default), argument_meaning(p.name, docs)) for p in params]
    return [f"arguments (--set {key}.NAME=VALUE):", *_table(rows)]


def _table(rows: list[tuple[str, str, str]]) -> list[str]:
    """Rows of (name, default, meaning): the columns aligned, long meanings wrapped."""
    names = max(len(n) for n, _, _ in rows)
    defaults = max(len(d) for _, d, _ in rows)
    lines = []
    for n, d, meaning in rows:
        head = f"  {n:<{names}}  {d:<{defaults}}  "
        wrapped = _wrap(meaning, " " * len(head))
        lines.append(head + wrapped[0].lstrip() if wrapped else head.rstrip())
        lines += wrapped[1:]
    return lines


def argument_meaning(name: str, docs: dict[str, str]) -> str:
    """The first sentence of ``name``'s documented meaning; ``(undocumented)`` if none."""
    meaning = docs.get(name, "")
    return first_sentence(meaning) if meaning else "(undocumented)"


def show_default(value: object) -> str:
    """A default as a config file writes it (YAML): ``null``, ``true``, ``[64, 128]``."""
    if value is inspect.Parameter.empty:
        return "(required)"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(show_default(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {show_default(v)}" for k, v in value.items()) + "}"
    if isinstance(value, str):
        return value if value and value.strip() == value else repr(value)
    return str(value)


def _wrap(text: str, indent: str, hanging: str | None = None) -> list[str]:
    """``text`` in lines of at most :data:`WIDTH`, the first indented ``indent``, the others
    ``hanging`` (default: ``indent``)."""
    return textwrap.wrap(
        text,
        WIDTH,
        initial_indent=indent,
        subsequent_indent=indent if hanging is None else hanging,
        break_on_hyphens=False,
        break_long_words=False,
    )


# ---------------------------------------------------------------------------- config keys
def config_keys() -> str:
    """Every key of a run's config (``RunConfig``: what to build, then ``TrainConfig``: how to
    train), with its default and the first sentence of its meaning from the dataclasses'
    ``Attributes:`` sections: the epilog of ``retain run --help``."""
    from retain.docstrings import sections
    from retain.engine.trainer import TrainConfig
    from retain.experiment import RunConfig

    docs = {**sections(TrainConfig.__doc__), **sections(RunConfig.__doc__)}
    training = {f.name for f in dataclasses.fields(TrainConfig)}
    fields = sorted(dataclasses.fields(RunConfig), key=lambda f: f.name in training)
    rows = [(f.name, show_default(_default(f)), argument_meaning(f.name, docs)) for f in fields]
    head = "config keys (--set KEY=VALUE, or KEY: VALUE in a --config YAML file):"
    tail = "the arguments of a method, benchmark or model (method_args.NAME, ...): retain list NAME"
    return "\n".join([head, *_table(rows), "", tail])


def _default(f: dataclasses.Field) -> object:
    """A dataclass field's default (its factory's value for a mutable one)."""

    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default
