"""Dynamos through fit(): class-incremental by default, metrics (resume and a loop of one's own:
tests/test_contract.py)."""

import json
import math

import pytest
import torch

from retain.engine import fit
from retain.methods import make_method
from tests.test_dynamos import image_bench, info, tiny_model

KW = dict(memory_size=30, warmup=2)


@pytest.mark.parametrize("name", ["dynamos", "dynamos-base"])
def test_fit_is_class_incremental_and_reports_both_accuracies(name):
    bench = image_bench(n_tasks=2, per_class=16)
    kw = KW if name == "dynamos-base" else {**KW, "gamma": 0.1}
    m = make_method(name, **kw)
    assert m.loss_heads == "seen"
    r = fit(tiny_model(bench), bench, m, epochs=3, lr=0.05, batch_size=8)
    assert not math.isnan(r.task_agnostic.acc()) and not math.isnan(r.task_aware.acc())
    assert r.task_aware.rows[1][1] > 0.5
    if name == "dynamos-base":
        assert r.method_metrics == {}
        return
    mm = r.method_metrics
    assert len(mm["agents"]) == len(mm["keep_ratio"]) == 4
    assert all(0.0 <= k <= 1.0 for k in mm["keep_ratio"])
    assert set(mm["keep_ratio_by_task"]) == {"0", "1"}
    assert len(mm["firing_rate_by_task"]["0"]) == sum(mm["n_filters"]) == 32
    # the last task's training saw its own classes and replayed ones of task 0
    assert {"2", "3"} <= set(mm["keep_ratio_by_class"])
    jsd = mm["class_jsd_last_agent"]
    assert len(jsd["jsd"]) == len(jsd["classes"])
    json.dumps(mm)


def test_firing_rates_by_group_on_a_test_set():
    bench = image_bench(n_tasks=2, per_class=12)
    model = tiny_model(bench)
    m = make_method("dynamos", **KW)
    m.setup(model, info(bench))
    m.current_task = 1
    x = torch.cat([t.x_test for t in bench])
    y = torch.cat([t.y_test + t.class_offset for t in bench])
    rates = m.firing_rates(x, y, n_groups=5)
    assert rates.shape == (5, 32)
    assert model.training  # mode restored
    assert torch.isnan(rates[4]).all() and not torch.isnan(rates[:4]).any()
    # the mean of each group's inference actions, computed directly
    model.eval()
    with torch.inference_mode():
        model(x[y == 2])
        a = torch.cat([r.actions for r in m.records()], 1)
    assert torch.allclose(rates[2], a.mean(0).double())


def test_analysis_arrays_and_plots_in_the_run_folder(tmp_path):
    import numpy as np

    from retain.report.dynamos_analysis import NPZ, write_dynamos_analysis

    bench = image_bench(n_tasks=2, per_class=16)
    r = fit(
        tiny_model(bench),
        bench,
        make_method("dynamos", **KW, gamma=0.1),
        epochs=1,
        lr=0.05,
        batch_size=8,
    )
    paths = write_dynamos_analysis(tmp_path, r.method_metrics)
    names = sorted(p.name for p in paths)
    assert names == sorted([NPZ, "firing_by_class.png", "firing_by_task.png", "class_jsd.png"])
    for p in paths:
        if p.suffix == ".png":
            assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    a = np.load(tmp_path / NPZ)
    mm = r.method_metrics
    assert a["firing_by_class"].shape == (len(mm["firing_rate_by_class"]), sum(mm["n_filters"]))
    assert a["firing_by_task"].shape == (2, sum(mm["n_filters"]))
    assert ((a["firing_by_class"] >= 0) & (a["firing_by_class"] <= 1)).all()
    row = str(int(a["classes"][0]))
    assert np.allclose(a["firing_by_class"][0], mm["firing_rate_by_class"][row])
    jsd = a["class_jsd"]
    assert np.allclose(jsd, jsd.T) and np.allclose(np.diag(jsd), 0)
    # a method without agents writes nothing
    assert write_dynamos_analysis(tmp_path / "none", {}) == []
    assert not (tmp_path / "none").exists()
