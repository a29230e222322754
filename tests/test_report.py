"""`retain report`: grouping, mean ± std over seeds, Markdown and self-contained HTML, and run
folders that are corrupt or unfinished skipped with a warning that names them."""

from __future__ import annotations

import base64
import json
import math
import re
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from retain.cli import main
from retain.metrics import AccuracyMatrix
from retain.report import build_tables, collect, make_report, markdown_table
from retain.report.html import render_html

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def write_run(
    path: Path,
    method: str,
    seed: int,
    aware: list[list[float]],
    agnostic: list[list[float]] | None = None,
    n_tasks: int | None = None,
    extra: dict | None = None,
    seconds: list[float] | None = None,
    **config,
) -> Path:
    """A run folder as `retain.fit` writes it, with the given accuracy matrices."""
    n = n_tasks or len(aware[0])
    path.mkdir(parents=True)
    cfg = {"benchmark": "toy", "method": method, "seed": seed, "lr": 0.01, "epochs": 1, **config}
    (path / "config.yaml").write_text(yaml.safe_dump(cfg))
    metrics = {}
    for key, rows in (("task_aware", aware), ("task_agnostic", agnostic)):
        m = AccuracyMatrix(n)
        m.set_initial([0.5] * n)
        for row in rows or [[math.nan] * n] * len(aware):
            m.add_row(row)
        metrics[key] = {**m.to_dict(), "summary": m.summary()}
    if extra:
        metrics["method"] = extra
    (path / "metrics.json").write_text(json.dumps(metrics))
    (path / "timings.json").write_text(json.dumps({"seconds_per_task": seconds or [1.0] * n}))
    return path


FT_ROWS = {  # final rows give ACC 0.6 (seed 0) and 0.7 (seed 1)
    0: [[0.9, 0.5], [0.4, 0.8]],
    1: [[0.8, 0.5], [0.6, 0.8]],
}


@pytest.fixture
def runs(tmp_path) -> Path:
    root = tmp_path / "runs"
    for seed, rows in FT_ROWS.items():
        write_run(root / f"ft-{seed}", "finetune", seed, rows, rows, seconds=[1.0, 2.0 + seed])
    cap = {"total": {"cap": 0.25, "used_frac_after_task": [0.1, 0.2]}, "layers": {}}
    cap["layers"]["fc1"] = {"used_frac_after_task": [0.1, 0.3]}
    for seed in (0, 1):
        write_run(
            root / f"wsn-{seed}", "wsn", seed, [[0.9, 0.5], [0.9, 0.9]], extra={"capacity": cap}
        )
    return root


def test_mean_and_std_over_seeds_from_known_metrics(runs):
    coll = collect([runs])
    assert not coll.skipped
    (table,) = build_tables(coll.runs)
    ft = next(g for g in table.groups if g.method == "finetune")
    assert ft.seeds == [0, 1]
    acc = ft.metric("task_aware", "acc")
    assert acc.mean == pytest.approx(0.65)
    assert acc.std == pytest.approx(statistics.stdev([0.6, 0.7]))
    bwt = ft.metric("task_aware", "bwt")  # (0.4 - 0.9, 0.6 - 0.8) -> -0.5, -0.2
    assert bwt.mean == pytest.approx(-0.35)
    text = markdown_table(table)
    ft_line = next(line for line in text.splitlines() if line.startswith("| finetune"))
    std = f"{100 * statistics.stdev([0.6, 0.7]):.2f}"
    assert f"65.00 ± {std}" in ft_line
    assert "-35.00 ± " in ft_line
    assert "3.5 ± 0.7" in ft_line  # time: 1 + 2 and 1 + 3 seconds
    wsn_line = next(line for line in text.splitlines() if line.startswith("| wsn"))
    assert "25.0" in wsn_line  # CAP in %
    assert wsn_line.count("n/a") == 4  # no task-agnostic numbers: n/a, not 0


def test_groups_by_config_and_labels_the_difference(tmp_path):
    root = tmp_path / "runs"
    rows = [[0.9, 0.5], [0.5, 0.9]]
    write_run(root / "a0", "ewc", 0, rows, method_args={"lamb": 10})
    write_run(root / "a1", "ewc", 1, rows, method_args={"lamb": 10})
    write_run(root / "b0", "ewc", 0, rows, method_args={"lamb": 100})
    write_run(root / "c0", "finetune", 0, rows, threads=4)  # threads: not a setting
    write_run(root / "c1", "finetune", 1, rows, threads=1)
    write_run(root / "d0", "finetune", 0, rows, benchmark="other")
    tables = build_tables(collect([root]).runs)
    assert [t.benchmark for t in tables] == ["toy", "other"]
    labels = {g.label: len(g.runs) for g in tables[0].groups}
    assert labels == {"ewc (lamb=10)": 2, "ewc (lamb=100)": 1, "finetune": 2}
    assert tables[0].common["lr"] == 0.01


def test_corrupt_and_unfinished_folders_are_skipped_with_a_warning(runs, tmp_path, capsys):
    bad = runs / "broken"
    write_run(bad, "finetune", 2, FT_ROWS[0])
    (bad / "metrics.json").write_text('{"task_aware": {"n_tasks": 2, "ro')  # cut mid-write
    half = runs / "half"
    write_run(half, "finetune", 3, [[0.9, 0.5]], n_tasks=2)  # killed after task 1 of 2
    (runs / "no-yaml").mkdir()
    (runs / "no-yaml" / "config.yaml").write_text("method: [oops\n")
    (runs / "no-yaml" / "metrics.json").write_text("{}")
    (runs / "started").mkdir()
    (runs / "started" / "config.yaml").write_text("benchmark: toy\nmethod: finetune\n")
    (runs / "not-a-run").mkdir()  # holds nothing: silently ignored
    (runs / "bad-values").mkdir()
    write_run(runs / "bad-values" / "r", "finetune", 4, [[0.9, 7.0], [0.5, 0.5]])

    out = tmp_path / "rep"
    assert main(["report", str(runs), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "Traceback" not in err
    warnings = [line for line in err.splitlines() if "warning" in line]
    for name, why in [
        ("broken", "not valid JSON"),
        ("half", "1 of 2 tasks done"),
        ("no-yaml", "not valid YAML"),
        ("started", "no task done yet"),
        ("r", "outside [0, 1]"),
    ]:
        assert any(f"/{name}: " in w and why in w for w in warnings), (name, warnings)
    assert len(warnings) == 5
    md = (out / "report.md").read_text()
    assert "| finetune | 2 |" in md  # the two good finetune seeds only
    assert "half" in md and "Skipped run folders" in md


def test_markdown_and_self_contained_html(runs, tmp_path):
    out = tmp_path / "rep"
    assert main(["report", str(runs), "--out", str(out), "--note", "reduced setting"]) == 0
    md = (out / "report.md").read_text()
    links = re.findall(r"!\[[^\]]*\]\((figures/[^)]+\.png)\)", md)
    # curves, one matrix per group, the layer plot of wsn
    assert len(links) == 1 + 2 + 1
    for link in links:
        assert (out / link).read_bytes().startswith(PNG_MAGIC)
    html = (out / "report.html").read_text()
    assert "reduced setting" in html and "reduced setting" in md
    srcs = re.findall(r'src="([^"]+)"', html)
    assert len(srcs) == len(links)
    for src in srcs:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1]).startswith(PNG_MAGIC)
    assert not re.search(r"(href|src)=\"(https?:|//|/)", html)  # nothing outside the file
    assert html.count("<table>") == 1 and "<td>finetune</td>" in html
    assert "task-agnostic" in html


def test_html_escapes_labels(tmp_path):
    write_run(tmp_path / "r", "a<b>&", 0, [[0.9, 0.5], [0.5, 0.9]])
    html = render_html(make_report(collect([tmp_path]), figures=False))
    assert "a&lt;b&gt;&amp;" in html and "a<b>" not in html


def test_report_errors_are_one_line_and_exit_2(runs, tmp_path, capsys):
    assert main(["report", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "is not a folder" in err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["report", str(empty), "--out", str(tmp_path / "o")]) == 2
    assert "no finished run folders" in capsys.readouterr().err
    target = tmp_path / "file"
    target.write_text("keep me")
    assert main(["report", str(runs), "--out", str(target)]) == 2
    assert "not a folder" in capsys.readouterr().err
    assert target.read_text() == "keep me"


def test_mask_report_tables(tmp_path, capsys):
    """``python -m retain.report.mask_report``: capacity tables of masked methods."""
    from retain.core.masks import LayerUsage, capacity_report
    from retain.report import mask_report

    def cap(used):
        return {
            "capacity": capacity_report(
                {
                    "fc": LayerUsage(
                        100, used[-1], used, mask_bits=200, packed_bytes=26, encoded_bytes=9
                    )
                }
            )
        }

    runs = [
        {"seed": s, "seconds": 1.0 + s, "taw_acc": 0.9, "taw_bwt": 0.0, "extra": cap([30, 60 + s])}
        for s in range(2)
    ]
    rows = [
        {"benchmark": "b", "method": "packnet", "runs": runs},
        {"benchmark": "b", "method": "finetune", "runs": [{**runs[0], "extra": {}}]},
    ]
    path = tmp_path / "t.json"
    path.write_text(json.dumps({"rows": rows}))
    assert mask_report.main([str(path)]) == 0
    out = capsys.readouterr().out
    assert "| b | packnet | 90.00 ± 0.00 | 0.00 ± 0.00 | 60.5 ± 0.7 |" in out
    assert "| b | packnet | fc | 30.0 | 60.5 |" in out
    assert "| b | finetune | 90.00 ± 0.00 | 0.00 ± 0.00 | - |" in out
    command = [sys.executable, "-m", "retain.report.mask_report", str(path)]
    assert subprocess.run(command, capture_output=True, text=True, check=True).stdout == out


def test_a_corrupt_timings_json_keeps_the_run_with_time_na(runs, tmp_path, capsys):
    (runs / "ft-0" / "timings.json").write_text('{"seconds_per_task": [1.0, ')  # cut mid-write
    (runs / "ft-1" / "timings.json").write_text('{"seconds_per_task": "soon"}')
    out = tmp_path / "rep"
    assert main(["report", str(runs), "--out", str(out)]) == 0
    assert "warning" not in capsys.readouterr().err
    md = (out / "report.md").read_text()
    ft = next(line for line in md.splitlines() if line.startswith("| finetune |"))
    assert ft.startswith("| finetune | 2 |") and ft.endswith("| n/a |"), ft  # both seeds kept


def test_markdown_escapes_html_in_the_note_methods_and_folders(tmp_path):
    runs = tmp_path / "runs"
    write_run(runs / "ok", "<script>alert(1)</script>", 0, [[0.9, 0.5], [0.5, 0.9]])
    (runs / "<img src=x onerror=alert(2)>").mkdir()
    (runs / "<img src=x onerror=alert(2)>" / "config.yaml").write_text("method: [oops\n")
    out = tmp_path / "rep"
    note = "<b>bold</b> & <a href='x'>link</a>"
    assert main(["report", str(runs), "--out", str(out), "--note", note]) == 0
    md = (out / "report.md").read_text()
    span = "`" + str(runs / "<img src=x onerror=alert(2)>") + "`"
    assert f"- {span}: " in md  # the folder as a code span: shown, never rendered
    for raw in ("<script>", "<b>", "<a href", "<img"):
        assert raw not in md.replace(span, ""), raw
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in md
    assert "&lt;b&gt;bold&lt;/b&gt; &amp; &lt;a href='x'&gt;link&lt;/a&gt;" in md
