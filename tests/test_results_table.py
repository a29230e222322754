"""benchmarks/results_table.py: merging runs across files and the derived columns."""

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "results_table.py"
spec = importlib.util.spec_from_file_location("results_table", SCRIPT)
results_table = importlib.util.module_from_spec(spec)
spec.loader.exec_module(results_table)


def run(seed, acc, bwt, tasks=4, extra=None, seconds=10.0):
    return {
        "seed": seed,
        "seconds": seconds,
        "taw_acc": acc,
        "taw_bwt": bwt,
        "taw_final_row": [acc] * tasks,
        "extra": extra or {},
    }


def write(path, rows):
    path.write_text(json.dumps({"argv": [], "rows": rows}))
    return str(path)


@pytest.fixture
def files(tmp_path):
    a = write(
        tmp_path / "a.json",
        [
            {
                "benchmark": "b",
                "method": "spg",
                "runs": [run(0, 0.8, -0.04, extra={"blocked_total": 0.1})],
            },
            {"benchmark": "b", "method": "one", "runs": [run(0, 0.9, 0.0), run(1, 0.7, 0.0)]},
        ],
    )
    b = write(
        tmp_path / "b.json",
        [
            {
                "benchmark": "b",
                "method": "spg",
                # seed 0 again (skipped: the first file wins) and a new seed 1
                "runs": [run(0, 0.1, 0.0), run(1, 0.6, -0.08, extra={"blocked_total": 0.3})],
            },
            {
                "benchmark": "b",
                "method": "hat",
                "runs": [run(1, 0.5, 0.0, extra={"capacity": {"total": {"used_frac": 0.6}}})],
            },
        ],
    )
    return [a, b]


def test_runs_merge_by_seed_and_the_first_file_wins(files):
    table = results_table.merged(files)
    assert list(table) == [("b", "spg"), ("b", "one"), ("b", "hat")]
    assert {s: r["taw_acc"] for s, r in table[("b", "spg")].items()} == {0: 0.8, 1: 0.6}


def test_fwt_against_one_and_blocked(files):
    out = results_table.rows(files, ["taw_acc", "fwt_one", "blocked"])
    spg = next(line for line in out if line.startswith("| spg |"))
    # diagonal mean = ACC - (T-1)/T BWT: seed 0: 0.83 - 0.90, seed 1: 0.66 - 0.70
    cells = [c.strip() for c in spg.split("|")[1:-1]]
    assert cells[:4] == ["spg", "70.0 ± 14.1", "-5.5 ± 2.1", "20.0 ± 14.1"]
    assert cells[4:] == ["2", "10"]
    hat = next(line for line in out if line.startswith("| hat |"))
    assert "| 60.0 |" in hat  # HAT's mask capacity in use


def test_cli_rejects_unknown_columns_and_old_files_without_tasks(files, tmp_path, capsys):
    assert results_table.main(["--columns", "nope", *files]) == 2
    old = run(0, 0.9, 0.0)
    del old["taw_final_row"]
    path = write(tmp_path / "old.json", [{"benchmark": "b", "method": "one", "runs": [old]}])
    assert results_table.main(["--columns", "fwt_one", path]) == 2
    assert "--tasks" in capsys.readouterr().err
    assert results_table.main(["--columns", "fwt_one", "--tasks", "4", path]) == 0


def test_eidetic_table_merges_seeds_run_as_separate_jobs(tmp_path):
    script = SCRIPT.parent / "eidetic_table.py"
    spec_e = importlib.util.spec_from_file_location("eidetic_table", script)
    eidetic_table = importlib.util.module_from_spec(spec_e)
    spec_e.loader.exec_module(eidetic_table)
    row = {"benchmark": "b", "method": "eidetic:step=0.2"}
    a = write(tmp_path / "a.json", [{**row, "runs": [run(0, 0.5, 0.0), run(2, 0.6, 0.0)]}])
    b = write(
        tmp_path / "b.json",
        [
            {**row, "runs": [run(1, 0.7, 0.0), run(2, 0.9, 0.0)]},  # seed 2 again: a's kept
            {"benchmark": "b", "method": "finetune", "runs": [run(0, 0.1, -0.5)]},
        ],
    )
    (rows,) = eidetic_table.merged([a, b]).values()
    assert [r["method"] for r in rows] == ["eidetic:step=0.2", "finetune"]
    assert [(r["seed"], r["taw_acc"]) for r in rows[0]["runs"]] == [(0, 0.5), (2, 0.6), (1, 0.7)]
