"""The README's command-line examples run as written.

The shell block of the README's "Command line" section is run line by line, in a fresh
folder that sees the repository's ``configs/``, after the section "Reports, comparisons and
sweeps"'s sweep file is saved there as ``sweep.yaml`` (the block runs ``retain sweep
sweep.yaml``). Each command must exit 0. (``make run`` is checked by test_readme_table.py,
``make test`` by CI itself; the Python blocks by test_readme_examples.py.)
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def section(text: str, title: str) -> str:
    """The text of the ``## title`` section, up to the next ``## `` heading."""
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert match, f"README has no section {title!r}"
    return match.group(1)


def blocks(text: str, language: str) -> list[str]:
    """The fenced code blocks of ``language`` in ``text``, in order."""
    return re.findall(rf"^```{language}\n(.*?)^```", text, re.M | re.S)


def commands(block: str) -> list[str]:
    """The shell commands of a block: backslash continuations joined, comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", block)
    out = []
    for line in joined.splitlines():
        words = shlex.split(line, comments=True)
        if words:
            out.append(shlex.join(words))
    return out


def test_commands_joins_continuations_and_drops_comments() -> None:
    block = "retain list   # all\n\nretain compare --a 1 \\\n    --set x=[1,2]   # grid\n"
    assert commands(block) == ["retain list", "retain compare --a 1 --set 'x=[1,2]'"]


@pytest.mark.slow
def test_the_command_line_section_runs_as_written(tmp_path: Path) -> None:
    text = README.read_text()
    shell = blocks(section(text, "Command line"), "bash")
    assert shell, "the Command line section has no bash block"
    sweep = blocks(section(text, "Reports, comparisons and sweeps"), "yaml")[0]
    assert isinstance(yaml.safe_load(sweep), dict)
    (tmp_path / "sweep.yaml").write_text(sweep)
    (tmp_path / "configs").symlink_to(ROOT / "configs")
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": bin_dir + os.pathsep + os.environ["PATH"]}
    env["OMP_NUM_THREADS"] = "1"
    ran = []
    for command in commands(shell[0]):
        assert command.startswith("retain "), command
        done = subprocess.run(
            command, shell=True, cwd=tmp_path, env=env, capture_output=True, text=True
        )
        tail = (done.stdout + done.stderr)[-1500:]
        assert done.returncode == 0, f"{command!r} exited {done.returncode}:\n{tail}"
        ran.append(command.split()[1])
    assert {"list", "run", "report", "compare", "sweep"} <= set(ran)
    assert (tmp_path / "runs" / "ft" / "metrics.json").is_file()
    assert (tmp_path / "report" / "report.html").is_file()
