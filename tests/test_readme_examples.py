"""Every ```python block of README.md runs as written.

The blocks are taken in order and grouped by the ``## `` section they are in; the blocks of
one section run one after the other in one namespace (a later block uses the names of an
earlier one: the Python API section's ``bench``), each section in a fresh one, in an empty
working folder (nothing is written into the checkout). A block added to README.md later is
picked up without editing this file. Tracebacks name ``README.md`` and its line numbers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
_FENCE = re.compile(r"^```\s*(\S*)")


@dataclass
class Block:
    """One fenced Python block: its section, its first code line (1-based) and its code."""

    section: str
    line: int
    code: str


def python_blocks(text: str) -> list[Block]:
    """The ```python (or ```py) blocks of a Markdown text, in order, with their sections
    (the last ``## `` heading above them; ``""`` before the first). Headings inside code
    blocks do not count."""
    blocks: list[Block] = []
    section, fence, start, body = "", None, 0, []
    for number, line in enumerate(text.splitlines(), 1):
        match = _FENCE.match(line)
        if fence is None:
            if line.startswith("## "):
                section = line[3:].strip()
            elif match:
                fence, start, body = match.group(1).lower(), number + 1, []
        elif match and not match.group(1):  # the closing fence
            if fence in ("python", "py"):
                blocks.append(Block(section, start, "\n".join(body) + "\n"))
            fence = None
        else:
            body.append(line)
    if fence is not None:
        raise ValueError(f"README.md: the code block opened at line {start - 1} is not closed")
    return blocks


def _sections() -> dict[str, list[Block]]:
    out: dict[str, list[Block]] = {}
    for block in python_blocks(README.read_text(encoding="utf-8")):
        out.setdefault(block.section, []).append(block)
    return out


SECTIONS = _sections()


def test_python_blocks_are_found_in_order_by_section():
    text = "\n".join(
        [
            "intro",
            "```python",
            "a = 1",
            "```",
            "## One",
            "```bash",
            "## not a heading",
            "```",
            "```python",
            "b = a",
            "",
            "c = 2",
            "```",
            "## Two",
            "```py",
            "d = 3",
            "```",
        ]
    )
    assert python_blocks(text) == [
        Block("", 3, "a = 1\n"),
        Block("One", 10, "b = a\n\nc = 2\n"),
        Block("Two", 16, "d = 3\n"),
    ]
    with pytest.raises(ValueError, match="opened at line 2 is not closed"):
        python_blocks("x\n```python\ny = 1\n")


def test_the_readme_has_the_python_api_blocks():
    assert len(SECTIONS.get("Python API", [])) >= 3


@pytest.mark.parametrize("section", list(SECTIONS))
def test_the_python_blocks_of_a_readme_section_run(section, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__readme__"}
    for block in SECTIONS[section]:
        # blank lines first, so that a traceback's line numbers are README.md's
        code = compile("\n" * (block.line - 1) + block.code, str(README), "exec")
        exec(code, namespace)
