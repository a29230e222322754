"""The distribution `retain-cl`: what its sdist and wheel hold, and that both install and run.

The sdist and the wheel are built once per module with `python -m build` (the sdist, then the
wheel from the unpacked sdist, as a user's build does) from a copy of the working tree without
build leftovers. The slow test installs each of them into a fresh virtual environment and runs
the `retain` command from a folder outside the repository.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Sequence
from pathlib import Path

import pytest
import yaml

import retain

REPO = Path(__file__).resolve().parents[1]
DIST = "retain-cl"
#: the file-name form of the distribution's name (wheel, sdist, dist-info)
DIST_FILE = "retain_cl"
#: files a release carries beside the package
PROJECT_FILES = ("README.md", "LICENSE", "CITATION.cff", "CHANGELOG.md", "pyproject.toml")
#: left out of the copy that is built: what builds and runs leave in a working tree
LEFTOVERS = (
    ".git",
    ".venv",
    "runs",
    "build",
    "dist",
    "*.egg-info",
    "__pycache__",
    ".pytest_cache",
    ".ruff_cache",
)


def _run(cmd: Sequence[str | Path], cwd: Path, env: dict[str, str] | None = None) -> str:
    """Run `cmd`; fail the test with its output unless it exits 0. Returns its stdout."""
    proc = subprocess.run(
        [str(c) for c in cmd],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, (
        f"{' '.join(map(str, cmd))} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    )
    return proc.stdout


def _pyproject() -> dict:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10: pytest depends on tomli there
        import tomli as tomllib
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def _package_files() -> set[str]:
    """The package's files in the repository, relative to `src/`: modules and package data."""
    src = REPO / "src"
    files = {p for p in (src / "retain").rglob("*") if p.is_file()}
    return {
        p.relative_to(src).as_posix()
        for p in files
        if "__pycache__" not in p.parts and p.suffix not in (".pyc", ".pyo")
    }


@pytest.fixture(scope="module")
def dists(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """`{"sdist": ..., "wheel": ...}` built from a clean copy of the working tree."""
    root = tmp_path_factory.mktemp("packaging")
    tree = root / "tree"
    shutil.copytree(REPO, tree, ignore=shutil.ignore_patterns(*LEFTOVERS))
    out = root / "dist"
    _run([sys.executable, "-m", "build", "--outdir", out, tree], cwd=root)
    version = _pyproject()["version"]
    built = {
        "sdist": out / f"{DIST_FILE}-{version}.tar.gz",
        "wheel": out / f"{DIST_FILE}-{version}-py3-none-any.whl",
    }
    assert sorted(out.iterdir()) == sorted(built.values())
    return built


def _sdist_names(sdist: Path) -> set[str]:
    """The sdist's members without their top folder `retain_cl-VERSION/`."""
    with tarfile.open(sdist) as tar:
        return {m.name.partition("/")[2] for m in tar.getmembers() if m.isfile()}


def test_sdist_holds_the_project_files_and_the_whole_package(dists: dict[str, Path]) -> None:
    names = _sdist_names(dists["sdist"])
    assert set(PROJECT_FILES) <= names
    assert {f"src/{f}" for f in _package_files()} <= names
    assert "src/retain/py.typed" in names
    assert not any(n.startswith("tests/") for n in names)  # they need the whole clone


def test_wheel_holds_every_module_the_metadata_and_the_command(dists: dict[str, Path]) -> None:
    version = _pyproject()["version"]
    info = f"{DIST_FILE}-{version}.dist-info"
    with zipfile.ZipFile(dists["wheel"]) as whl:
        names = set(whl.namelist())
        metadata = whl.read(f"{info}/METADATA").decode()
        entry_points = whl.read(f"{info}/entry_points.txt").decode()
        license_text = whl.read(f"{info}/licenses/LICENSE").decode()
    assert _package_files() <= names  # every subpackage, module and py.typed
    assert not {n for n in names if not n.startswith(("retain/", f"{info}/"))}
    assert f"Name: {DIST}\n" in metadata
    assert f"Version: {version}\n" in metadata
    assert "License-Expression: Apache-2.0\n" in metadata
    assert "Provides-Extra: data\n" in metadata
    assert re.search(r"^retain = retain\.cli:main$", entry_points, re.M)
    assert license_text == (REPO / "LICENSE").read_text()


def test_license_is_the_apache_license_2() -> None:
    text = (REPO / "LICENSE").read_text()
    assert text.lstrip().startswith("Apache License\n")
    assert "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text
    assert "APPENDIX: How to apply the Apache License to your work." in text
    assert _pyproject()["license"] == "Apache-2.0"


def test_versions_agree_across_package_pyproject_citation_and_changelog() -> None:
    version = _pyproject()["version"]
    assert retain.__version__ == version
    citation = yaml.safe_load((REPO / "CITATION.cff").read_text())
    assert citation["cff-version"] == "1.2.0"
    assert citation["version"] == version
    assert citation["license"] == _pyproject()["license"]
    assert citation["authors"] == [{"name": "The retain developers"}]
    assert len(citation["references"]) == 5
    for ref in citation["references"]:
        assert ref["title"] and ref["authors"] and isinstance(ref["year"], int), ref
    changelog = (REPO / "CHANGELOG.md").read_text()
    released = re.findall(r"^## \[([^\]]+)\](?: - (\d{4}-\d{2}-\d{2}))?$", changelog, re.M)
    assert released[0] == ("Unreleased", "")
    assert (version, citation["date-released"]) in released


def _clean_env() -> dict[str, str]:
    """This environment without what would let a child import the repository's `src/`."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["OMP_NUM_THREADS"] = "1"
    return env


def _smoke(venv: Path, where: Path, kind: str) -> None:
    """From `where`, outside the repository: the installed retain is the one `kind` installed,
    `retain list` names the methods and benchmarks, and a smoke run writes its metrics."""
    where.mkdir()
    env = _clean_env()
    bindir = venv / "bin"
    probe = (
        "import importlib.metadata as m, json, retain\n"
        f"d = m.distribution({DIST!r})\n"
        "print(json.dumps([retain.__file__, d.version, d.read_text('direct_url.json')]))"
    )
    module, version, direct_url = json.loads(_run([bindir / "python", "-c", probe], where, env))
    assert Path(module).is_relative_to(venv)
    assert version == retain.__version__
    assert json.loads(direct_url)["url"].endswith(kind)

    listing = _run([bindir / "retain", "list"], where, env)
    assert re.search(r"^  finetune\s", listing, re.M)
    assert re.search(r"^  split-digits\s", listing, re.M)

    out = where / "run"
    run = ["run", "--method", "finetune", "--benchmark", "split-digits", "--smoke"]
    _run([bindir / "retain", *run, "--out", out, "--quiet"], where, env)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["task_aware"]["n_tasks"] == 3
    assert len(metrics["task_aware"]["rows"]) == 3


@pytest.mark.slow
def test_wheel_and_sdist_install_into_a_fresh_venv_and_run(
    dists: dict[str, Path], tmp_path: Path
) -> None:
    """The wheel, then (uninstalled, replaced by) the sdist, each with the `data` extra that
    split-digits needs. Torch is the build this suite runs on, so that pip takes it from the
    wheels already on disk (here: the CPU wheel the Makefile pins) instead of a CUDA build."""
    import torch

    venv = tmp_path / "venv"
    env = _clean_env()
    _run([sys.executable, "-m", "venv", venv], tmp_path, env)
    pip = [venv / "bin" / "python", "-m", "pip", "install", "-q"]
    _run([*pip, f"torch=={torch.__version__}"], tmp_path, env)

    _run([*pip, f"{dists['wheel']}[data]"], tmp_path, env)
    _smoke(venv, tmp_path / "from-wheel", ".whl")

    _run([venv / "bin" / "python", "-m", "pip", "uninstall", "-y", "-q", DIST], tmp_path, env)
    _run([*pip, f"{dists['sdist']}[data]"], tmp_path, env)
    _smoke(venv, tmp_path / "from-sdist", ".tar.gz")
