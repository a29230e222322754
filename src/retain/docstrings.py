"""Reading Google-style docstrings: one-line summaries and the entries of ``Args:`` sections.

Used by ``retain list`` (method, benchmark and model descriptions, their arguments) and
``retain run --help`` (the config keys, from ``Attributes:`` sections). Imports nothing
heavy: ``retain list`` stays fast.
"""

from __future__ import annotations

import inspect
import re

#: the longest summary shown whole; a longer one is cut at a word boundary, with "..."
SUMMARY_LIMIT = 100
ELLIPSIS = "..."

#: words ending in a period that do not end a sentence
_ABBREVIATIONS = ("e.g", "i.e", "al", "cf", "vs", "eq", "sec", "fig", "no", "resp", "approx")
_SENTENCE_END = re.compile(r"[.!?](?=\s+[A-Z(`\"'])")
_LITERAL = re.compile(r"``(.+?)``")
_ROLE = re.compile(r":[a-z]+:`~?([^`]+)`")
_SECTION = re.compile(r"^(Args|Arguments|Attributes)(\s*\(.*\))?:$")
_ENTRY = re.compile(r"^([A-Za-z_*][\w*]*(?:\s*,\s*[A-Za-z_*][\w*]*)*)\s*(?:\([^)]*\))?:\s*(.*)$")


def plain(text: str) -> str:
    """``text`` with reST markup as a terminal shows it: ````x```` and ``:class:`~a.B``` become
    ``x`` and ``B``; whitespace runs become one space."""
    text = _ROLE.sub(lambda m: _role_target(m.group(1), m.group(0)), text)
    text = _LITERAL.sub(r"\1", text)
    return " ".join(text.split())


def _role_target(target: str, whole: str) -> str:
    return target.rsplit(".", 1)[-1] if "`~" in whole else target


def first_sentence(text: str) -> str:
    """The first sentence of ``text`` (plain, on one line): up to the first period (or ``!``,
    ``?``) followed by a capital, a bracket or a quote, skipping abbreviations (``e.g.``,
    ``et al.``); all of ``text`` when there is no such end."""
    text = plain(text)
    for m in _SENTENCE_END.finditer(text):
        word = text[: m.start()].rsplit(None, 1)[-1].lstrip("(").lower()
        if m.group(0) == "." and word in _ABBREVIATIONS:
            continue
        return text[: m.end()]
    return text


def shorten(text: str, limit: int = SUMMARY_LIMIT) -> str:
    """``text`` whole if it has at most ``limit`` characters, else cut after its last whole
    word that fits (never inside a word: a first word longer than ``limit`` is kept whole),
    followed by ``...``."""
    if len(text) <= limit:
        return text
    cut = text[: limit - len(ELLIPSIS) + 1]  # one more: is the next character a space?
    head = cut.rsplit(" ", 1)[0] if " " in cut else text.split(" ", 1)[0]
    return head.rstrip(" ,;:") + ELLIPSIS


def summary(doc: str | None, limit: int = SUMMARY_LIMIT) -> str:
    """The first sentence of the first paragraph of ``doc``, shortened to ``limit``."""
    paragraph = inspect.cleandoc(doc or "").split("\n\n")[0]
    return shorten(first_sentence(paragraph), limit)


def sections(doc: str | None, raw: bool = False) -> dict[str, str]:
    """The entries of every ``Args:`` (``Arguments:``) and ``Attributes:`` section of
    ``doc`` (a header may carry words before its colon: ``Attributes (beyond X):``), as
    ``{name: meaning}``: continuation lines joined, one entry for each of ``a, b: meaning``;
    the meanings :func:`plain` unless ``raw``. The first section naming an entry wins."""
    out: dict[str, str] = {}
    lines = inspect.cleandoc(doc or "").splitlines()
    i = 0
    while i < len(lines):
        header = lines[i]
        i += 1
        if _SECTION.match(header.strip()):
            entries, i = _section_entries(lines, i, _indent(header))
            for names, meaning in entries:
                for name in names:
                    out.setdefault(name, meaning if raw else plain(meaning))
    return out


def _section_entries(
    lines: list[str], i: int, depth: int
) -> tuple[list[tuple[list[str], str]], int]:
    """Entries (names, raw meaning) of the section whose lines start at ``i`` (its header
    indented ``depth``), and the index of the first line after it."""
    entries: list[tuple[list[str], str]] = []
    entry_depth = None
    while i < len(lines):
        line = lines[i]
        if line.strip() and _indent(line) <= depth:
            break
        i += 1
        if not line.strip():
            continue
        if entry_depth is None:
            entry_depth = _indent(line)
        m = _ENTRY.match(line.strip()) if _indent(line) == entry_depth else None
        if m:
            names = [n.strip().lstrip("*") for n in m.group(1).split(",")]
            entries.append((names, m.group(2)))
        elif entries:  # a continuation line
            names, meaning = entries[-1]
            entries[-1] = (names, f"{meaning} {line.strip()}")
    return entries, i


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


_REFERENCE = re.compile(r"^(as|see)\s+:[a-z]+:`[^`]+`\.?$")


def is_reference(raw_meaning: str) -> bool:
    """Whether an entry's raw meaning only refers to another class (``as :class:`EWC```)."""
    return bool(_REFERENCE.match(raw_meaning.strip()))


def argument_docs(*objects: object) -> dict[str, str]:
    """``{argument: meaning}`` from the docstrings of ``objects``, in order; for a class, its
    docstring and its ``__init__``'s, then those of its bases (method resolution order). An
    entry that only refers to another class (``online: as :class:`EWC```) gives way to a
    later docstring's entry for the same name."""
    found: dict[str, str] = {}
    for doc in _docstrings(objects):
        for name, meaning in sections(doc, raw=True).items():
            if name not in found or (is_reference(found[name]) and not is_reference(meaning)):
                found[name] = meaning
    return {name: plain(meaning) for name, meaning in found.items()}


def _docstrings(objects: tuple[object, ...]) -> list[str]:
    docs: list[str] = []
    for obj in objects:
        if not inspect.isclass(obj):
            docs.append(obj.__doc__ or "")
            continue
        for cls in inspect.getmro(obj):
            docs.append(cls.__dict__.get("__doc__") or "")
            init = cls.__dict__.get("__init__")
            if init is not None:
                docs.append(getattr(init, "__doc__", None) or "")
    return docs
