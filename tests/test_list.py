"""`retain list` (torch-free, equal to the registries), `retain list NAME` (every argument with
its default and documented meaning) and `retain run --help` (every config key)."""

from __future__ import annotations

import dataclasses
import inspect
import re
import subprocess
import sys

import pytest

from retain import describe
from retain.cli import main
from retain.data import BENCHMARKS, catalog, describe_benchmarks
from retain.docstrings import argument_docs, first_sentence, plain, sections, shorten, summary
from retain.engine.trainer import TrainConfig
from retain.experiment import RunConfig
from retain.methods import REGISTRY, describe_methods
from retain.models import MODELS, describe_models


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    assert err.count("\n") == 0, err
    return err


# ---------------------------------------------------------------------------- the listing
def test_list_imports_no_torch():
    code = (
        "import sys, retain.cli as c\n"
        "print('torch:', 'torch' in sys.modules)\n"
        "for argv in (['--help'], ['list', '--help'], ['run', '--no-such-flag']):\n"
        "    try:\n"
        "        c.main(argv)\n"
        "    except SystemExit:\n"
        "        pass\n"
        "print('torch:', 'torch' in sys.modules)\n"
        "print('torch:', c.main(['list']), 'torch' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    marks = [line for line in out if line.startswith("torch:")]
    assert marks[0] == "torch: False"  # import retain.cli
    assert marks[1] == "torch: False"  # retain --help, retain list --help, a usage error of run
    assert marks[2] == "torch: 0 False"  # retain list
    assert "methods:" in out and "models:" in out


def test_source_reading_equals_the_registries():
    assert describe.source_methods() == describe_methods()
    assert describe.source_benchmarks() == describe_benchmarks()
    assert describe.source_models() == describe_models()
    assert [n for n, _ in describe_methods()] == sorted(REGISTRY)
    assert [n for n, _ in describe_benchmarks()] == list(BENCHMARKS)
    assert [n for n, _ in describe_models()] == list(MODELS)


def test_list_prints_the_registries(capsys):
    assert main(["list"]) == 0
    expected = describe.format_listing(
        [
            ("methods", describe_methods()),
            ("benchmarks", describe_benchmarks()),
            ("models", describe_models()),
        ]
    )
    assert capsys.readouterr().out == expected + "\n"
    assert "  ewc  " in expected and "  split-fmnist  " in expected and "  mlp  " in expected
    assert expected.endswith(
        "\n\nretain list NAME: the arguments of one, with their defaults and meanings"
    )


def test_unreadable_sources_fall_back_to_the_registries(tmp_path, monkeypatch):
    """A registration that is not a literal (here a method's name) is read from the registries."""
    (tmp_path / "methods").mkdir()
    (tmp_path / "methods" / "odd.py").write_text(
        "NAME = 'odd'\n\n\n@register\nclass Odd(Method):\n    name = NAME\n"
    )
    monkeypatch.setattr(describe, "PACKAGE", tmp_path)
    with pytest.raises(describe.Unresolved):
        describe.source_methods()
    assert describe.listing() == [
        ("methods", describe_methods()),
        ("benchmarks", describe_benchmarks()),
        ("models", describe_models()),
    ]


# ---------------------------------------------------------------------------- descriptions
def test_method_descriptions_end_in_whole_words():
    for name, line in describe_methods():
        words = line.removesuffix("...").split()
        doc_words = plain(inspect.cleandoc(REGISTRY[name].__doc__)).split()
        n = len(words)
        assert words, name
        assert doc_words[: n - 1] == words[:-1], (name, line)
        assert doc_words[n - 1].rstrip(",;:") == words[-1].rstrip(",;:"), (name, line)
        assert len(line) <= 100, (name, line)


def test_a_long_method_description_is_cut_after_a_word(monkeypatch):
    from retain.methods import Method

    class Long(Method):
        __doc__ = " ".join(["alpha"] * 25) + " omega. Second sentence."
        name = "long-one"

    monkeypatch.setitem(REGISTRY, Long.name, Long)
    line = dict(describe_methods())[Long.name]
    assert line == " ".join(["alpha"] * 16) + "..."
    assert len(line) <= 100


def test_summary_is_the_first_sentence_or_cut_after_a_word():
    doc = "EWC (Kirkpatrick et al., PNAS 2017): a penalty, e.g. Fisher. More.\n\nBody."
    assert summary(doc) == "EWC (Kirkpatrick et al., PNAS 2017): a penalty, e.g. Fisher."
    assert summary("``lamb`` of :class:`~retain.methods.ewc.EWC` here") == "lamb of EWC here"
    long = " ".join(["word"] * 30) + " tail"
    cut = shorten(long, 40)
    assert cut == "word word word word word word word..."
    assert len(cut) <= 40
    assert shorten("exactly ten", 11) == "exactly ten"
    assert shorten("one two, three", 12) == "one two..."
    assert shorten("abcdefghijklmnop qrs", 12) == "abcdefghijklmnop..."  # never inside a word


def test_first_sentence_skips_abbreviations():
    assert first_sentence("Molchanov et al. 2017 prune. Then more.") == (
        "Molchanov et al. 2017 prune."
    )
    assert first_sentence("no end here") == "no end here"


# ---------------------------------------------------------------------------- argument docs
def test_sections_join_continuations_and_split_names():
    doc = """Summary.

    Args:
        a, b: shared meaning
            continued here.
        c: alone.

    Attributes (beyond :class:`X`):
        d: from attributes.

    Returns:
        e: not an argument.
    """
    assert sections(doc) == {
        "a": "shared meaning continued here.",
        "b": "shared meaning continued here.",
        "c": "alone.",
        "d": "from attributes.",
    }


def _undocumented(params: list[inspect.Parameter], docs: dict[str, str]) -> list[str]:
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return [p.name for p in params if p.kind in kinds and not docs.get(p.name, "").strip()]


def _method_undocumented(cls: type) -> list[str]:
    params = list(inspect.signature(cls.__init__).parameters.values())[1:]
    return _undocumented(params, argument_docs(cls))


def test_every_method_argument_has_a_documented_meaning():
    missing = {name: _method_undocumented(cls) for name, cls in REGISTRY.items()}
    assert {k: v for k, v in missing.items() if v} == {}


def test_an_undocumented_method_argument_is_caught():
    from retain.methods import Method

    class Documented(Method):
        """One argument.

        Args:
            width: how wide.
        """

        def __init__(self, width: int = 1, depth: int = 2, loss_heads: str = "task") -> None:
            super().__init__(loss_heads=loss_heads)

    assert _method_undocumented(Documented) == ["depth"]  # loss_heads: documented by Method


def test_every_model_and_benchmark_argument_has_a_documented_meaning():
    for name, builder in MODELS.items():
        params = list(inspect.signature(builder).parameters.values())[1:]
        assert _undocumented(params, argument_docs(builder)) == [], name
    for name, entry in BENCHMARKS.items():
        params = list(inspect.signature(entry).parameters.values())
        sources = [entry, getattr(entry, "build", entry), catalog]
        assert _undocumented(params, argument_docs(*sources)) == [], name


def test_a_reference_gives_way_to_the_base_class_meaning():
    docs = argument_docs(REGISTRY["mas"])  # "online, alpha, ...: as :class:`EWC`"
    assert docs["online"] == argument_docs(REGISTRY["ewc"])["online"]
    assert docs["lamb"].startswith("lambda (the paper's object-recognition value")


# ---------------------------------------------------------------------------- retain list NAME
def _table_line(out: str, name: str) -> str:
    lines = [line for line in out.splitlines() if re.match(rf"^  {re.escape(name)}\s", line)]
    assert len(lines) == 1, (name, out)
    return lines[0]


@pytest.mark.parametrize("method", sorted(REGISTRY))
def test_list_method_shows_every_argument(capsys, method):
    assert main(["list", method]) == 0
    out = capsys.readouterr().out
    cls = REGISTRY[method]
    assert out.startswith(f"{method}: method (--method {method})\n")
    agnostic = "yes" if cls.task_agnostic else "no"
    assert re.search(rf"^  task-agnostic: {agnostic}\b", out, re.M)
    docs = argument_docs(cls)
    for p in list(inspect.signature(cls.__init__).parameters.values())[1:]:
        line = _table_line(out, p.name)
        words = line.split()
        assert words[1] == describe.show_default(p.default).split()[0]
        assert first_sentence(docs[p.name]).split()[0] in words[2:]


def test_list_ewc_in_full(capsys):
    assert main(["list", "ewc"]) == 0
    out = capsys.readouterr().out
    assert "\n  task-agnostic: yes (predicts without a task id)\n" in out
    assert "\n  docs: docs/methods/ewc.md\n" in out
    assert "\narguments (--set method_args.NAME=VALUE):\n" in out
    assert re.search(r"^  lamb +5000\.0 +lambda \(ScrollNet's 5000 is the default\)\.$", out, re.M)
    assert re.search(r"^  importance_args +null +keyword options of the estimator\.$", out, re.M)
    assert re.search(r"^  online +false +one running importance", out, re.M)


def test_list_task_aware_method_and_docs_anchor(capsys):
    assert main(["list", "hat"]) == 0
    assert "  task-agnostic: no (needs the task id" in capsys.readouterr().out
    assert main(["list", "dynamos-base"]) == 0
    assert "  docs: docs/methods/dynamos.md#dynamos-base-eq-8\n" in capsys.readouterr().out


def test_list_model_and_benchmark(capsys):
    assert main(["list", "mlp"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("mlp: model (--model mlp)\n")
    assert re.search(r"^  hidden +\[400, 400\] +widths of the hidden layers", out, re.M)
    assert main(["list", "split-fmnist"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("split-fmnist: benchmark (--benchmark split-fmnist)\n")
    assert re.search(r"^  n_tasks +5 +number of tasks", out, re.M)
    assert "input_shape" not in out


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("ewx", "retain: error: 'ewx' is no method, benchmark or model; did you mean 'ewc'?"),
        ("split-fmnst", "did you mean 'split-fmnist' or "),
        ("zzzzzz", "retain: error: 'zzzzzz' is no method, benchmark or model; see `retain list`"),
    ],
)
def test_list_unknown_name_is_one_line_exit_2(capsys, name, message):
    assert main(["list", name]) == 2
    line = _error_line(capsys)
    assert line.startswith(message) if message.startswith("retain") else message in line


def test_show_default_writes_yaml():
    show = describe.show_default
    assert [show(None), show(True), show((64, 128)), show({}), show("")] == [
        "null",
        "true",
        "[64, 128]",
        "{}",
        "''",
    ]
    assert show(inspect.Parameter.empty) == "(required)"


# ---------------------------------------------------------------------------- retain run --help
def test_run_help_lists_every_config_key(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["run", "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    keys = out.split("\nconfig keys (", 1)[1]
    docs = {**sections(TrainConfig.__doc__), **sections(RunConfig.__doc__)}
    for f in dataclasses.fields(RunConfig):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        meaning = first_sentence(docs.get(f.name, ""))
        assert meaning, f"config key {f.name} has no meaning in the Attributes sections"
        line = _table_line(keys, f.name)
        assert line.split()[1] == describe.show_default(default).split()[0], line
        assert meaning.split()[0] in line.split()[2:], line
    assert "--set KEY=VALUE" in keys
    assert keys.rstrip().endswith("(method_args.NAME, ...): retain list NAME")
