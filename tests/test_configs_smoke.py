"""Every shipped config runs end to end with ``--smoke`` on the fake datasets, through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from retain.cli import main
from retain.data.fakes import write_fake_datasets
from retain.experiment import resolve

CONFIG_DIR = Path(__file__).parent.parent / "configs"
CONFIGS = sorted(CONFIG_DIR.glob("**/*.yaml"))
#: the fake Omniglot has 24 characters, not 1200
OVERRIDES = {
    "omniglot-rotation": [
        "benchmark_args.n_classes=24",
        "benchmark_args.n_tasks=2",
        "benchmark_args.test_per_class=2",
    ]
}


@pytest.fixture(scope="module")
def fake_root(tmp_path_factory):
    return write_fake_datasets(tmp_path_factory.mktemp("data"))


def test_every_paper_folder_has_configs():
    for paper in ("scrollnet", "dynamos", "wsn", "eidetic", "spg"):
        assert list((CONFIG_DIR / paper).glob("*.yaml")), paper


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_config_smoke_run(config, fake_root, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RETAIN_DATA", str(fake_root))
    monkeypatch.setenv("RETAIN_FASHION_MNIST", str(fake_root / "fashion-mnist"))
    bench = yaml.safe_load(config.read_text())["benchmark"]
    sets = [a for s in OVERRIDES.get(bench, []) for a in ("--set", s)]
    out = tmp_path / "run"
    assert (
        main(["run", "--config", str(config), "--smoke", "--quiet", "--out", str(out), *sets]) == 0
    )
    written = yaml.safe_load((out / "config.yaml").read_text())
    assert written["smoke"] is True and written["epochs"] == 1
    rows = json.loads((out / "metrics.json").read_text())["task_aware"]["rows"]
    assert 1 <= len(rows) <= 3


def test_smoke_overlay_really_shrinks(fake_root, monkeypatch):
    from retain.experiment import build

    monkeypatch.setenv("RETAIN_DATA", str(fake_root))
    path = "configs/spg/c10.yaml"
    full, smoke = resolve(path), resolve(path, {"smoke": True})
    assert (full.epochs, full.lr_milestones) == (100, [50, 75])
    assert (smoke.epochs, smoke.lr_milestones) == (1, [])
    bench, _, _ = build(smoke)
    assert bench.n_tasks == 3 and bench.info["smoke"] == {"tasks": 3, "of": 10}
    assert all(t.y_train.bincount().tolist() == [2] * 10 for t in bench)
    assert all(t.y_test.bincount().tolist() == [1] * 10 for t in bench)
    eid = resolve("configs/eidetic/imagenette.yaml", {"smoke": True})
    assert eid.method_args["patience"] == 1 and eid.method_args["max_recovery_epochs"] == 1
    assert eid.benchmark_args["size"] == 32 and eid.model_args["nf"] == 8
    assert "smoke" not in full.to_dict() and smoke.to_dict()["smoke"] is True


def test_smoke_bounds_come_from_the_method_class(monkeypatch):
    """smoke.py names no method: a class's ``smoke_caps``/``smoke_floors`` are what it applies,
    converted to the bound's type, and a wrapper's ``base_args`` get its base's bounds."""
    from retain.methods import REGISTRY

    monkeypatch.setattr(REGISTRY["ewc"], "smoke_caps", {"lamb": 10.0})
    monkeypatch.setattr(REGISTRY["ewc"], "smoke_floors", {"alpha": 0.5})
    ewc = resolve(None, {"method": "ewc", "smoke": True}, ["method_args.lamb=5000"])
    assert ewc.method_args == {"lamb": 10.0, "alpha": 0.5}
    assert resolve(None, {"method": "ewc"}, ["method_args.lamb=5000"]).method_args["lamb"] == 5000
    wrapped = resolve(None, {"method": "scrollnet", "smoke": True}, ["method_args.base=ewc"])
    assert wrapped.method_args == {"base": "ewc", "base_args": {"lamb": 10.0, "alpha": 0.5}}
    eidetic = resolve(
        None,
        {"method": "eidetic", "smoke": True},
        ["method_args.patience=4", "method_args.step=0.1"],
    )
    assert eidetic.method_args == {"patience": 1, "max_recovery_epochs": 1, "step": 0.3}
    plain = resolve(None, {"method": "scrollnet", "smoke": True})  # finetune base: no bounds
    assert plain.method_args == {}


def test_smoke_caps_of_a_backbone_are_given_at_its_registration(monkeypatch):
    from retain.models import MLP, MODEL_SMOKE, MODELS, register_model

    assert MODEL_SMOKE["mlp"] == {"hidden": 64} and set(MODEL_SMOKE) == set(MODELS)
    monkeypatch.setitem(MODEL_SMOKE, "mlp", {"hidden": 16})
    config = resolve(None, {"model": "mlp", "smoke": True}, ["model_args.hidden=[400, 8, 30]"])
    assert config.model_args == {"hidden": [16, 8, 16]}
    assert resolve(None, {"model": "mlp", "smoke": True}).model_args == {"hidden": [16, 16]}
    with pytest.raises(ValueError, match="registered twice"):
        register_model("mlp", MLP, "again")
    with pytest.raises(ValueError, match=r"unknown options: \['width'\]"):
        register_model("mlp-2", MLP, "an MLP", smoke={"width": 8})
    assert "mlp-2" not in MODELS
