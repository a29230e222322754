"""Which training protocol (``heads``) each row of a table used, `retain compare --protocol`,
and the report fixes: accuracy axes from 0, a note for the rows a panel leaves out, only ACC
ranked, one naming of layers, default values in labels."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from retain import cli
from retain.cli import main
from retain.methods import REGISTRY, make_method
from retain.report import build_tables, collect, make_report, markdown_table
from retain.report.html import render_html
from retain.report.markdown import render_markdown
from retain.report.plots import ACC_LIMITS, accuracy_figure, layer_series
from retain.report.protocol import PROTOCOLS, method_protocol, protocol_key
from tests.test_report import write_run

#: what each registered method trains on by default (the brief of item 1, checked one by one)
DEFAULT_HEADS = {
    **dict.fromkeys(["finetune", "ewc", "lwf", "mas", "si"], "task"),
    **dict.fromkeys(["er", "der", "derpp", "agem", "joint", "dynamos", "dynamos-base"], "seen"),
    **dict.fromkeys(["icarl", "bic", "lucir"], "seen"),
    **dict.fromkeys(["wsn", "packnet", "hat", "supsup", "spg", "eidetic", "one"], "task"),
    "scrollnet": "task",  # its default base, finetune
    "gem": "seen",
    **dict.fromkeys(["er-ace", "mir", "xder", "gdumb"], "seen"),
    "rwalk": "task",  # as EWC
}
TAKES_LOSS_HEADS = {"finetune", "ewc", "lwf", "mas", "si", "er", "der", "derpp", "agem", "joint"}
TAKES_LOSS_HEADS |= {"dynamos", "dynamos-base"}
TAKES_LOSS_HEADS |= {"gem", "mir", "xder", "rwalk"}
FAST = ["--benchmark", "split-digits", "--set", "batch_size=32", "--seeds", "1"]
ROWS = [[0.9, 0.5], [0.6, 0.9]]


def _row(text: str, label: str) -> list[str]:
    line = next(x for x in text.splitlines() if x.startswith(f"| {label} |"))
    return [c.strip() for c in line.strip("|").split("|")]


def _configs(out: Path) -> dict[str, dict]:
    return {
        p.name.split("-")[2]: yaml.safe_load((p / "config.yaml").read_text())
        for p in out.iterdir()
        if p.is_dir() and p.name.startswith("split-digits-")
    }


# ---------------------------------------------------------------------------- the protocol
def test_every_registered_method_has_a_protocol():
    assert set(REGISTRY) == set(DEFAULT_HEADS), "a new method: add its heads to DEFAULT_HEADS"
    for name in REGISTRY:
        assert make_method(name).protocol == DEFAULT_HEADS[name], name
        assert method_protocol(name, {}) == DEFAULT_HEADS[name], name


@pytest.mark.parametrize("heads", ["task", "seen"])
def test_the_protocol_is_the_loss_heads_a_method_takes_or_fixes(heads):
    for name in REGISTRY:
        key = protocol_key(name, {})
        if name in TAKES_LOSS_HEADS:
            assert key == "method_args.loss_heads"
            assert method_protocol(name, {"loss_heads": heads}) == heads
        elif name == "scrollnet":  # from its base
            assert key == "method_args.base_args.loss_heads"
            assert method_protocol(name, {"base_args": {"loss_heads": heads}}) == heads
        else:
            assert key is None, name
    assert protocol_key("scrollnet", {"base": "wsn"}) is None
    assert method_protocol("scrollnet", {"base": "icarl"}) == "seen"
    assert method_protocol("not-registered-here", {}) is None
    assert cli.PROTOCOLS == PROTOCOLS


# ---------------------------------------------------------------------------- compare --protocol
def test_compare_trains_every_method_that_takes_it_on_seen_heads(tmp_path, capsys):
    out = tmp_path / "cmp"
    assert main(["compare", *FAST, "--methods", "finetune,wsn", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    configs = _configs(out)
    assert configs["finetune"]["method_args"] == {"loss_heads": "seen"}  # in the trial config
    assert "loss_heads" not in configs["wsn"]["method_args"]  # it fixes its own
    assert _row(captured.out, "finetune")[:3] == ["finetune", "1", "seen"]
    assert _row(captured.out, "wsn")[:3] == ["wsn", "1", "task"]
    assert "| method | seeds | heads | TAw ACC |" in captured.out
    assert "Rows differ in heads (seen: finetune; task: wsn)" in captured.out
    assert "--protocol seen; trained on other heads" in captured.err
    assert "wsn (task)" in captured.err and "finetune (" not in captured.err
    md = (out / "report" / "report.md").read_text()
    assert "| finetune | 1 | seen |" in md and "Rows differ in heads" in md

    # own: each method's default; the trial is another folder (its config, so its hash, differ)
    own = ["compare", *FAST, "--methods", "finetune", "--protocol", "own", "--out", str(out)]
    assert main(own) == 0
    captured = capsys.readouterr()
    assert _row(captured.out, "finetune")[:3] == ["finetune", "1", "task"]
    assert "trained on other heads" not in captured.err
    finetune = [p for p in out.iterdir() if p.is_dir() and "-finetune-" in p.name]
    assert len(finetune) == 2


def test_a_set_loss_heads_wins_over_the_protocol(tmp_path, capsys):
    out = tmp_path / "cmp"
    argv = ["compare", *FAST, "--methods", "finetune,er", "--protocol", "task", "--out", str(out)]
    assert main([*argv, "--set", "er:method_args.loss_heads=seen"]) == 0
    captured = capsys.readouterr()
    configs = _configs(out)
    assert configs["finetune"]["method_args"] == {"loss_heads": "task"}
    assert configs["er"]["method_args"] == {"loss_heads": "seen"}
    assert _row(captured.out, "er")[2] == "seen" and _row(captured.out, "finetune")[2] == "task"
    assert "er (seen)" in captured.err


def test_a_config_file_s_loss_heads_wins_over_the_protocol(tmp_path):
    from retain.experiment import resolve

    def make(file):
        return lambda extra: resolve(
            file, {"benchmark": "split-digits"}, [], axes=[("option", {"method": "er"})],
            overrides=list(extra),
        )  # fmt: skip

    config = tmp_path / "c.yaml"
    config.write_text("method_args: {loss_heads: task}\n")
    assert cli._under_protocol(make(str(config)), "seen").method_args == {"loss_heads": "task"}
    assert cli._under_protocol(make(None), "task").method_args == {"loss_heads": "task"}
    assert cli._under_protocol(make(None), "own").method_args == {}


def test_scrollnet_follows_the_protocol_through_its_base(tmp_path, capsys):
    out = tmp_path / "cmp"
    argv = ["compare", *FAST, "--methods", "scrollnet", "--out", str(out)]
    assert main([*argv, "--set", "scrollnet:method_args.splits=2"]) == 0
    args = _configs(out)["scrollnet"]["method_args"]
    assert args == {"splits": 2, "base_args": {"loss_heads": "seen"}}
    assert _row(capsys.readouterr().out, "scrollnet")[2] == "seen"


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (
            ["--set", "finetune:method_args.loss_heads=both"],
            "loss_heads must be one of task, seen, got 'both'",
        ),
        (
            ["--set", "wsn:method_args.loss_heads=seen"],
            "method 'wsn' has no argument 'loss_heads'",
        ),
    ],
)
def test_a_bad_loss_heads_is_one_line_and_nothing_is_written(tmp_path, capsys, extra, expected):
    out = tmp_path / "cmp"
    assert main(["compare", *FAST, "--methods", "finetune,wsn", "--out", str(out), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("retain: error: ") and expected in err, err
    assert not out.exists()


def test_an_unknown_protocol_is_refused_with_exit_2(tmp_path, capsys):
    out = tmp_path / "cmp"
    with pytest.raises(SystemExit) as e:
        main(["compare", *FAST, "--methods", "finetune", "--protocol", "both", "--out", str(out)])
    assert e.value.code == 2
    assert "argument --protocol: invalid choice: 'both'" in capsys.readouterr().err
    assert not out.exists()


def test_a_sweep_keeps_each_method_s_heads_and_labels_its_rows(tmp_path, capsys):
    spec = tmp_path / "s.yaml"
    data = {"seeds": 1, "set": {"batch_size": 32}, "benchmarks": ["split-digits"]}
    spec.write_text(yaml.safe_dump({**data, "methods": ["finetune", "er"]}))
    out = tmp_path / "out"
    assert main(["sweep", str(spec), "--workers", "1", "--out", str(out)]) == 0
    captured = capsys.readouterr().out
    assert all("loss_heads" not in c["method_args"] for c in _configs(out).values())
    assert _row(captured, "finetune")[2] == "task" and _row(captured, "er")[2] == "seen"
    assert "Rows differ in heads (task: finetune; seen: er)" in captured


# ---------------------------------------------------------------------------- tables
def _table(root: Path):
    (table,) = build_tables(collect([root]).runs)
    return table


def test_the_heads_column_and_note_in_markdown_and_html(tmp_path, capsys):
    root = tmp_path / "runs"
    write_run(root / "ft", "finetune", 0, ROWS, ROWS)
    write_run(root / "er", "er", 0, ROWS, ROWS)
    write_run(root / "x", "not-registered-here", 0, ROWS, ROWS)
    report = make_report(collect([root]), figures=False)
    md, html = render_markdown(report), render_html(report)
    assert _row(md, "finetune")[2] == "task" and _row(md, "er")[2] == "seen"
    assert _row(md, "not-registered-here")[2] == "n/a"
    assert "<th>heads</th>" in html and "<td>seen</td>" in html
    note = "Rows differ in heads (seen: er; task: finetune; n/a: not-registered-here)"
    assert note in md and note in html
    assert main(["report", str(root), "--out", str(tmp_path / "rep")]) == 0
    assert note in capsys.readouterr().out  # printed under the table too


def test_only_acc_is_ranked_and_not_across_different_heads(tmp_path):
    root = tmp_path / "runs"
    # er: the better ACC; finetune: learns less, so forgets less (the better BWT)
    write_run(root / "ft", "finetune", 0, [[0.6, 0.5], [0.6, 0.6]], [[0.6, 0.5], [0.6, 0.6]])
    write_run(root / "er", "er", 0, [[0.9, 0.5], [0.7, 0.9]], [[0.9, 0.5], [0.7, 0.9]])
    text = markdown_table(_table(root))
    er, ft = _row(text, "er"), _row(text, "finetune")
    assert er[3] == "**80.00**" and ft[3] == "60.00"  # TAw ACC
    assert ft[4] == "0.00" and er[4] == "-20.00"  # TAw BWT: shown, not ranked
    assert ft[6] == "0.00" and er[6] == "20.00"  # forgetting likewise
    assert er[7] == "80.00"  # TAg ACC: finetune trained on task heads, er on seen: no rank
    assert text.count("**") == 2

    same = tmp_path / "same"
    write_run(same / "ft", "finetune", 0, [[0.6, 0.5], [0.6, 0.6]], [[0.6, 0.5], [0.6, 0.6]])
    write_run(same / "ewc", "ewc", 0, [[0.9, 0.5], [0.7, 0.9]], [[0.9, 0.5], [0.7, 0.9]])
    assert _row(markdown_table(_table(same)), "ewc")[7] == "**80.00**"  # both task heads


def test_a_left_out_argument_is_labelled_with_its_default(tmp_path):
    root = tmp_path / "runs"
    write_run(root / "a", "finetune", 0, ROWS, model="mlp", model_args={"hidden": [100]})
    write_run(root / "b", "finetune", 0, ROWS, model="mlp")
    write_run(root / "c", "ewc", 0, ROWS, model="mlp", method_args={"lamb": 100.0})
    write_run(root / "d", "ewc", 0, ROWS, model="mlp")
    assert [g.label for g in _table(root).groups] == [
        "finetune (model_args.hidden=[100])",
        "finetune (model_args.hidden=[400, 400])",  # was model_args.hidden=-
        "ewc (model_args.hidden=[400, 400], lamb=100)",
        "ewc (model_args.hidden=[400, 400], lamb=5000)",  # was lamb=-
    ]


def test_an_argument_set_to_its_default_does_not_split_the_labels(tmp_path):
    root = tmp_path / "runs"
    write_run(root / "a", "finetune", 0, ROWS, model="mlp", model_args={"hidden": [400, 400]})
    write_run(root / "b", "ewc", 0, ROWS, model="mlp")
    assert [g.label for g in _table(root).groups] == ["finetune", "ewc"]


# ---------------------------------------------------------------------------- figures
def _mixed(tmp_path: Path) -> Path:
    root = tmp_path / "runs"
    near = [[0.99, 0.5], [0.97, 0.98]]  # task-aware: a small drop
    for seed in (0, 1):
        write_run(root / f"ft{seed}", "finetune", seed, near, [[0.99, 0.5], [0.2, 0.98]])
        write_run(root / f"wsn{seed}", "wsn", seed, near)  # no task-agnostic numbers
    return root


def test_accuracy_axes_start_at_0(tmp_path):
    fig = accuracy_figure(_table(_mixed(tmp_path)))
    axes = fig.axes
    assert [ax.get_title().split(": ")[1] for ax in axes] == ["task-aware", "task-agnostic"]
    assert ACC_LIMITS == (0.0, 100.0)
    for ax in axes:
        assert ax.get_ylim() == ACC_LIMITS


def test_a_panel_leaves_out_of_its_legend_what_it_does_not_draw_and_says_so(tmp_path):
    aware, agnostic = accuracy_figure(_table(_mixed(tmp_path))).axes
    legend = [t.get_text() for t in agnostic.get_legend().get_texts()]
    assert legend == ["finetune"]
    assert [line.get_label() for line in agnostic.get_lines()] == ["finetune"]
    assert [t.get_text() for t in agnostic.texts] == ["not shown, task-aware only: wsn"]
    assert [t.get_text() for t in aware.get_legend().get_texts()] == ["finetune", "wsn"]
    assert len(aware.texts) == 0


def test_layers_have_one_name_in_every_report(tmp_path, capsys):
    from retain.report import mask_report

    root = tmp_path / "runs"
    cap = {"total": {"used_frac_after_task": [0.1, 0.2]}, "layers": {}}
    cap["layers"]["layers.0"] = {"used_frac_after_task": [0.1, 0.3]}
    write_run(root / "wsn", "wsn", 0, ROWS, extra={"capacity": cap})
    blocked = [{"backbone.layers.0": 0.1, "total": 0.1}, {"backbone.layers.0": 0.3, "total": 0.3}]
    write_run(root / "spg", "spg", 0, ROWS, ROWS, extra={"blocked": blocked})
    wsn, spg = _table(root).groups
    assert list(layer_series(wsn)[1]) == ["layers.0", "total"]
    assert list(layer_series(spg)[1]) == ["layers.0", "total"]

    cap2 = {"total": {"used_frac_after_task": [0.5]}, "layers": {}}
    cap2["layers"]["backbone.layers.0"] = {"used_frac_after_task": [0.5]}
    rows = [{"benchmark": "b", "method": "m", "runs": [{"extra": {"capacity": cap2}}]}]
    table = mask_report.layer_table(rows)
    assert "| b | m | layers.0 | 50.0 |" in table and "backbone." not in table


def test_long_labels_keep_each_legend_under_its_panel(tmp_path):
    root = tmp_path / "runs"
    for name in ("finetune", "ewc", "er", "spg"):
        write_run(root / name, name, 0, ROWS, ROWS, lr=0.05, optimizer="sgd")
    write_run(root / "wsn", "wsn", 0, ROWS, lr=0.001, optimizer="adam")
    fig = accuracy_figure(_table(root))
    fig.draw_without_rendering()
    for ax in fig.axes:
        panel, legend = ax.get_window_extent(), ax.get_legend().get_window_extent()
        assert panel.width > 0.3 * fig.bbox.width  # not squeezed by its legend
        assert legend.width <= 1.1 * panel.width
    assert fig.axes[1].texts[0].get_window_extent().x1 <= fig.axes[1].get_window_extent().x1
