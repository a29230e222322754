"""The README's quick-start table is what `make run` prints: the test runs the compare command
of the Makefile's `run` target (read from the Makefile, so the two cannot drift; into a
temporary --out) and compares the README table's rows with the printed table's, column by
column for the README's columns. After a change of results, paste the rows its failure shows."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MAKEFILE = ROOT / "Makefile"
README = ROOT / "README.md"
#: the README section that holds the quick-start table
SECTION = "## Two commands on a fresh machine"


def make_variables(text: str) -> dict[str, str]:
    """``NAME := value`` and ``NAME ?= value`` assignments, continuation lines joined as make
    joins them (one space)."""
    out = {}
    joined = re.sub(r"\s*\\\n\s*", " ", text)
    for line in joined.splitlines():
        m = re.match(r"^([A-Za-z_][A-Za-z0-9_]*)\s*(?::=|\?=|=)\s*(.*)$", line)
        if m:
            out[m.group(1)] = m.group(2).strip()
    return out


def recipe(text: str, target: str) -> list[str]:
    """The recipe lines of ``target`` (tab-indented), continuation lines joined."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if re.match(rf"^{target}\s*:", line))
    body = []
    for line in lines[start + 1 :]:
        if not line.startswith("\t"):
            break
        body.append(line[1:])
    return [c.strip() for c in re.sub(r"\s*\\\n\s*", " ", "\n".join(body)).splitlines()]


def expand(command: str, variables: dict[str, str]) -> str:
    """``$(NAME)`` replaced by its value, recursively (what make does to a recipe)."""
    for _ in range(10):
        new = re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: variables[m.group(1)], command)
        if new == command:
            return new
        command = new
    raise AssertionError(f"unexpanded variables in {command!r}")


def run_command(makefile: str) -> list[str]:
    """The `run` target's `retain compare` command as argv (without the program)."""
    variables = make_variables(makefile)
    (line,) = [c for c in recipe(makefile, "run") if " compare " in c]
    argv = shlex.split(expand(line, variables))
    assert argv[0].endswith("/bin/retain") and argv[1] == "compare", argv
    return argv[1:]


def with_out(argv: list[str], out: Path) -> list[str]:
    """``argv`` with its ``--out`` value replaced by ``out``."""
    i = argv.index("--out")
    return [*argv[: i + 1], str(out), *argv[i + 2 :]]


def markdown_rows(text: str, first_header: str = "method") -> tuple[list[str], list[list[str]]]:
    """(headers, rows) of the first Markdown table in ``text`` whose first header is
    ``first_header``."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_header} |"))

    def cells(line: str) -> list[str]:
        return [c.strip() for c in line.strip().strip("|").split("|")]

    headers = cells(lines[start])
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append(cells(line))
    return headers, rows


def readme_table(readme: str) -> tuple[list[str], list[list[str]]]:
    return markdown_rows(readme[readme.index(SECTION) :])


def project(headers: list[str], rows: list[list[str]], columns: list[str]) -> list[list[str]]:
    """``rows`` cut to ``columns``, bold marks kept (they are part of what is printed)."""
    index = [headers.index(c) for c in columns]
    return [[row[i] for i in index] for row in rows]


def test_the_makefile_command_is_read_as_make_runs_it():
    argv = run_command(MAKEFILE.read_text())
    assert argv[:3] == ["compare", "--benchmark", "split-mnist5k"]
    note = argv[argv.index("--note") + 1]
    assert note.startswith("Reduced setting") and "$(" not in note and "\\" not in note
    assert with_out(argv, Path("/x"))[argv.index("--out") + 1] == "/x"
    text = (
        'A := a \\\n  b\nrun: setup\n\t$(V)/bin/retain compare --x \\\n\t  --note "$(A)"\nB := c\n'
    )
    variables = make_variables(text)
    assert variables["A"] == "a b"
    assert shlex.split(expand(recipe(text, "run")[0], {**variables, "V": "v"})) == [
        "v/bin/retain", "compare", "--x", "--note", "a b",
    ]  # fmt: skip


def test_readme_rows_are_read_with_their_columns():
    headers, rows = readme_table(README.read_text())
    assert headers[:3] == ["method", "seeds", "heads"]
    assert "TAg ACC" in headers and rows and all(len(r) == len(headers) for r in rows)


@pytest.mark.slow
def test_the_readme_table_is_what_make_run_prints(tmp_path):
    """Runs `make run`'s compare (about a minute on one core) and compares the tables."""
    argv = with_out(run_command(MAKEFILE.read_text()), tmp_path / "quickstart")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "retain.cli", *argv],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=1800,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    printed_headers, printed_rows = markdown_rows(done.stdout)
    headers, rows = readme_table(README.read_text())
    expected = project(printed_headers, printed_rows, headers)
    table = "\n".join("| " + " | ".join(r) + " |" for r in expected)
    assert rows == expected, f"README.md's quick-start table should read:\n{table}"
