"""SPG's variants as configuration (-CHI, @en, SPG-FI, EWC-GI, HPG), the blocked-fraction
metric, resume, and a behavioural check."""

import copy
import json

import pytest
import torch

from retain.core.importance import FisherImportance, fisher_diagonal, task_batches, task_forward
from retain.core.spg_importance import SPGImportance, spg_normalize
from retain.engine import fit
from retain.methods import make_method
from retain.models import ContinualModel
from tests.synthetic import TinyBackbone, blobs
from tests.test_regularization import rotated_blobs
from tests.test_spg import _model, _spg, _train


def test_hard_variant_blocks_exactly_the_thresholded_entries():
    bench = blobs(n_tasks=2)
    model = _model(bench)
    spg = _spg(model, threshold=0.5)
    _train(spg, bench[0])
    gamma = {n: g.clone() for n, g in spg.mask.gamma.items()}
    blocked = {n: g > 0.5 for n, g in gamma.items()}
    assert (
        0 < sum(int(b.sum()) for b in blocked.values()) < sum(b.numel() for b in blocked.values())
    )
    task = bench[1]
    spg.before_task(task)
    # momentum and weight decay would move a weight whose gradient is merely zeroed
    opt = torch.optim.SGD(spg.trainable_parameters(task), lr=0.1, momentum=0.9, weight_decay=0.1)
    params = spg.mask.params
    start = {n: p.detach().clone() for n, p in params.items()}
    for b in spg.batches(task, 16, torch.Generator().manual_seed(0)):
        opt.zero_grad()
        spg.loss(b, task).backward()
        raw = {n: p.grad.clone() for n, p in params.items()}
        spg.after_backward(b, task)
        for n, p in params.items():  # factor 0 where gamma > h, 1 elsewhere
            assert torch.equal(p.grad, torch.where(blocked[n], torch.zeros_like(raw[n]), raw[n]))
        opt.step()
        spg.after_step(b, task)
    for n, p in params.items():
        assert torch.equal(p.detach()[blocked[n]], start[n][blocked[n]])  # bit-identical
        assert not torch.equal(p.detach()[~blocked[n]], start[n][~blocked[n]])
    # the metric counts exactly those entries; the stored importance stays real-valued
    frac = spg.mask.blocked_fraction()
    n_all = sum(b.numel() for b in blocked.values())
    assert frac["total"] == pytest.approx(sum(int(b.sum()) for b in blocked.values()) / n_all)
    assert frac["backbone.net.0"] == pytest.approx(
        (int(blocked["backbone.net.0.weight"].sum()) + int(blocked["backbone.net.0.bias"].sum()))
        / (gamma["backbone.net.0.weight"].numel() + gamma["backbone.net.0.bias"].numel())
    )
    assert torch.equal(spg.mask.gamma["backbone.net.0.weight"], gamma["backbone.net.0.weight"])


def test_blocked_fraction_per_layer_after_every_task_in_the_run_metrics():
    bench = blobs(n_tasks=3)
    model = _model(bench)
    spg = make_method("spg")
    r = fit(model, bench, spg, epochs=2, lr=0.1, batch_size=16)
    m = r.metrics()["method"]
    assert len(m["blocked"]) == 3 and len(m["mean_importance"]) == 3
    assert set(m["blocked"][0]) == {"backbone.net.0", "total"}
    totals = [b["total"] for b in m["blocked"]]
    assert totals == sorted(totals)  # gamma never decreases, so neither does the fraction
    assert m["blocked_total"] == totals[-1]
    means = m["mean_importance"]
    assert means == sorted(means) and 0 < means[0] < 1
    json.dumps(m)  # serialisable
    # by hand from the stored importance
    g = spg.mask.gamma
    n_blocked = sum(int((v >= 1 - 1e-6).sum()) for v in g.values())
    assert totals[-1] == pytest.approx(n_blocked / sum(v.numel() for v in g.values()))
    # the per-layer count of a mask set by hand
    spg.mask.gamma = {n: torch.zeros_like(v) for n, v in g.items()}
    spg.mask.gamma["backbone.net.0.bias"][:4] = 1.0
    spg.mask.gamma["backbone.net.0.weight"][0, :3] = 1 - 1e-7  # within tolerance
    spg.mask.gamma["backbone.net.0.weight"][1, :3] = 1 - 1e-3  # not fully blocked
    frac = spg.mask.blocked_fraction()
    assert frac["backbone.net.0"] == pytest.approx(7 / (16 * 8 + 16))


def test_importance_after_epoch_n_uses_the_model_after_that_epoch():
    bench = blobs(n_tasks=2)
    model = _model(bench)
    spg = _spg(model, importance_epoch=1)
    task = bench[0]
    spg.before_task(task)
    opt = torch.optim.SGD(spg.trainable_parameters(task), lr=0.1)
    gen = torch.Generator().manual_seed(0)
    snapshot = None
    for epoch in range(3):
        if epoch == 1:
            snapshot = copy.deepcopy(model)
        spg.before_epoch(task, epoch)
        for b in spg.batches(task, 16, gen):
            opt.zero_grad()
            spg.loss(b, task).backward()
            spg.after_backward(b, task)
            opt.step()
            spg.after_step(b, task)
    spg.after_task(task)
    est = SPGImportance()
    est.setup({"backbone." + n: p for n, p in snapshot.backbone.named_parameters()})
    want = est.compute(snapshot, task)
    est.setup({"backbone." + n: p for n, p in model.backbone.named_parameters()})
    at_end = est.compute(model, task)
    for n, g in spg.mask.gamma.items():
        assert torch.equal(g, want[n])
    assert any(not torch.equal(spg.mask.gamma[n], at_end[n]) for n in at_end)
    # fewer epochs than n: taken at the end
    spg2 = _spg(_model(bench), importance_epoch=5)
    _train(spg2, bench[0], epochs=2, finish=False)
    est.setup(spg2.mask.params)
    want = est.compute(spg2.model, bench[0])
    spg2.after_task(bench[0])
    assert all(torch.equal(spg2.mask.gamma[n], want[n]) for n in want)


def test_spg_fi_soft_masks_with_the_normalised_fisher():
    bench = blobs(n_tasks=2)
    model = _model(bench)
    spg = _spg(model, importance="fisher")
    assert isinstance(spg.estimator, FisherImportance) and spg.normalize == "spg"
    _train(spg, bench[0], finish=False)
    fisher = fisher_diagonal(
        model, task_batches(model, bench[0]), task_forward(0), params=spg.mask.params
    )
    spg.after_task(bench[0])
    for n, g in spg.mask.gamma.items():
        assert torch.allclose(g, spg_normalize(fisher[n]), atol=1e-6)
    # and it is consumed by the same soft mask
    _train(spg, bench[1], finish=False)
    spg.after_task(bench[1])
    assert all(g.max() <= 1 for g in spg.mask.gamma.values())


def test_spg_fi_positive_mapping_is_monotone_and_frees_below_mean_weights():
    """``normalize="positive"``: ``max(tanh(Norm(F)), 0)``; a larger Fisher never gets a
    smaller mask, and every value at or below its tensor's mean gets 0 (the default ``|.|``
    gives those a positive mask)."""
    bench = blobs(n_tasks=2)
    model = _model(bench)
    spg = _spg(model, importance="fisher", normalize="positive")
    _train(spg, bench[0], finish=False)
    fisher = fisher_diagonal(
        model, task_batches(model, bench[0]), task_forward(0), params=spg.mask.params
    )
    spg.after_task(bench[0])
    literal_positive_below_mean = 0
    for n, g in spg.mask.gamma.items():
        f = fisher[n].flatten()
        gamma = g.flatten()
        below = f <= f.mean()
        assert torch.all(gamma[below] == 0)
        order = torch.argsort(f)
        assert torch.all(gamma[order].diff() >= -1e-7)  # monotone in the Fisher
        mean_std = (f - f.mean()) / f.std()  # Norm of Eq. 1 (eps is negligible here)
        assert torch.allclose(gamma, torch.tanh(mean_std).clamp(min=0), atol=1e-5)
        literal_positive_below_mean += int((spg_normalize(f)[below] > 0.05).sum())
    assert literal_positive_below_mean > 0  # what the default mapping does differently


def test_ewc_gi_is_ewc_with_the_accumulated_spg_importance():
    """EWC-GI (paper Sec. 4): lambda/2 sum gamma^{<=t-1} (theta - theta*)^2, two lines."""
    bench = blobs(n_tasks=3)
    model = _model(bench)
    ewc = make_method(
        "ewc",
        lamb=100.0,
        importance="spg",
        importance_args={"accumulate": True},
        online=True,
        alpha=0.0,
    )
    ewc.setup(model, None)
    assert isinstance(ewc.estimator, SPGImportance)
    prev = None
    for t in range(3):
        _train(ewc, bench[t], finish=False)
        est = SPGImportance()
        est.setup(ewc.penalty.params)
        gamma_t = est.compute(model, bench[t])
        ewc.after_task(bench[t])
        for n, w in ewc.penalty.weight.items():
            want = gamma_t[n] if prev is None else torch.maximum(prev[n], gamma_t[n])
            assert torch.equal(w, want)  # the max-accumulated importance, Eq. 4
            assert torch.equal(ewc.penalty.center[n], ewc.penalty.params[n].detach())
        prev = {n: w.clone() for n, w in ewc.penalty.weight.items()}
    assert torch.equal(
        ewc.estimator.state_dict()["accumulated"]["backbone.net.0.weight"],
        prev["backbone.net.0.weight"],
    )
    # the plain form, one term per task, also works
    plain = make_method("ewc", importance="spg")
    plain.setup(_model(bench), None)
    _train(plain, bench[0])
    assert plain.penalty.weight["backbone.net.0.weight"].max() <= 1


class Crash(Exception):
    pass


def _crashing(n, **kw):
    cls = type(make_method("spg", **kw))

    class Crashing(cls):
        def after_step(self, batch, task):
            super().after_step(batch, task)
            self.steps = getattr(self, "steps", 0) + 1
            if self.steps == n:
                raise Crash

    return Crashing(**kw)


# kept beside tests/test_contract.py (SPG killed right after a checkpoint): kills mid-epoch
# where the checkpoint holds the early gamma, and with the Fisher estimator
@pytest.mark.parametrize(
    "kw,crash_at",
    [
        ({"chi": False, "importance_epoch": 1}, 26),  # task 2, checkpoint holds the early gamma
        ({"importance": "fisher", "scale_head": False}, 9),  # at the end of task 0
    ],
)
def test_resume_after_kill_gives_identical_metrics(tmp_path, kw, crash_at):
    bench = blobs(n_tasks=3, per_class=24)  # 3 batches of 16 per epoch, 9 steps a task

    def model():
        torch.manual_seed(3)
        return ContinualModel(TinyBackbone(dropout=0.2), bench.classes_per_task)

    kwargs = dict(epochs=3, lr=0.05, batch_size=16, momentum=0.9, checkpoint_every=1, seed=5)
    full = tmp_path / "full"
    fit(model(), bench, make_method("spg", **kw), run_dir=full, **kwargs)
    broken = tmp_path / "broken"
    with pytest.raises(Crash):
        fit(model(), bench, _crashing(crash_at, **kw), run_dir=broken, **kwargs)
    fit(model(), bench, make_method("spg", **kw), run_dir=broken, resume=True, **kwargs)
    a = json.loads((full / "metrics.json").read_text())
    assert a == json.loads((broken / "metrics.json").read_text())
    assert len(a["method"]["blocked"]) == 3
    ev = [json.loads(x) for x in (full / "events.jsonl").read_text().splitlines()]
    ev2 = [json.loads(x) for x in (broken / "events.jsonl").read_text().splitlines()]
    assert [(e["task"], e["epoch"], e["loss"]) for e in ev] == [
        (e["task"], e["epoch"], e["loss"]) for e in ev2
    ]


def test_spg_forgets_less_than_finetune():
    """Domain-incremental blobs with a shared head: finetune overwrites it, SPG protects it."""
    bench = rotated_blobs(seed=2)
    bwt = {}
    for name in ("finetune", "spg"):
        torch.manual_seed(0)
        model = ContinualModel(TinyBackbone(d=32), bench.classes_per_task, head="shared")
        r = fit(model, bench, make_method(name), epochs=8, lr=0.02, batch_size=16)
        bwt[name] = r.task_aware.bwt()
    assert bwt["finetune"] < -0.3, bwt
    assert bwt["spg"] > bwt["finetune"] + 0.1, bwt


def test_spg_importance_is_not_normalised_twice():
    with pytest.raises(ValueError, match="already normalised"):
        make_method("spg", normalize="spg")
    assert make_method("spg", normalize="none").normalize == "none"
