"""The ScrollNet wrapper (retain.methods.scrollnet) around other methods."""

import json

import pytest
import torch

from retain.engine import fit
from retain.experiment import resolve
from retain.methods import REGISTRY, Method, make_method
from retain.methods.finetune import Finetune
from retain.methods.scrollnet import ScrollNet
from retain.models import MLP, ContinualModel
from retain.models.slimmable import get_scroll, slimmable_modules, width
from tests.own_loop import train_task
from tests.synthetic import TinyBackbone, blobs


def _model(bench, seed=0, dropout=0.0):
    torch.manual_seed(seed)
    return ContinualModel(TinyBackbone(dropout=dropout), bench.classes_per_task)


def _mlp_model(bench, seed=0):
    torch.manual_seed(seed)
    return ContinualModel(MLP(8, hidden=(16, 16)), bench.classes_per_task)


def _train_task(method, task, steps=3, lr=0.1):
    train_task(method, task, steps=steps, lr=lr)


def _at_task_one(bench, base, splits=4, **kw):
    """A ScrollNet around ``base`` that trained task 0 and is ready to train task 1."""
    method = ScrollNet(base, splits=splits, **kw)
    method.setup(_mlp_model(bench), None)
    _train_task(method, bench[0])
    method.before_task(bench[1])
    batch = next(method.batches(bench[1], 16, torch.Generator().manual_seed(1)))
    return method, batch


def test_make_method_builds_the_base_from_name_and_args():
    m = make_method("scrollnet", base="ewc", base_args={"lamb": 7}, splits=2)
    assert isinstance(m, ScrollNet) and m.base.name == "ewc" and m.base.lamb == 7
    assert m.splits == 2 and m.loss_heads == m.base.loss_heads
    with pytest.raises(ValueError):
        make_method("scrollnet", base="nope")
    with pytest.raises(ValueError):
        ScrollNet(Finetune(), base_args={"x": 1})
    with pytest.raises(ValueError):
        ScrollNet(ScrollNet())
    with pytest.raises(ValueError):
        ScrollNet(splits=0)


def test_config_with_nested_base_args():
    config = resolve(
        None,
        {"method": "scrollnet"},
        ["method_args.base=ewc", "method_args.base_args.lamb=123", "method_args.splits=2"],
    )
    method = make_method(config.method, **config.method_args)
    assert method.base.lamb == 123 and method.splits == 2


@pytest.mark.parametrize("base", ["finetune", "ewc", "lwf"])
def test_loss_is_the_sum_of_the_per_width_losses(bench, base):
    """Full width: the base's whole loss; narrower widths: its plain cross-entropy (so EWC's
    penalty counts once and LwF distils on the full-width pass only)."""
    method, batch = _at_task_one(bench, base)
    task = bench[1]
    total = method.loss(batch, task)
    expected = method.base.loss(batch, task)
    for k in (3, 2, 1):
        with width(method.model, k):
            expected = expected + Method.loss(method.base, batch, task)
    torch.testing.assert_close(total, expected, rtol=1e-6, atol=1e-6)
    # and the narrower losses are really different sub-networks
    with width(method.model, 1):
        narrow = Method.loss(method.base, batch, task)
    assert not torch.allclose(narrow, Method.loss(method.base, batch, task))


@pytest.mark.parametrize("base", ["ewc", "mas", "si"])
def test_penalty_once_per_step_or_once_per_width(bench, base):
    method, batch = _at_task_one(bench, base, splits=4)
    with torch.no_grad():  # move away from the anchor
        for p in method.model.backbone.parameters():
            p.add_(0.05 * torch.randn_like(p))
    reg = method.base.regularizer()
    assert reg is not None and reg > 0
    once = method.loss(batch, bench[1])
    method.penalty_per_width = True
    per_width = method.loss(batch, bench[1])
    torch.testing.assert_close(per_width - once, 3 * reg, rtol=1e-5, atol=1e-6)


def test_narrow_loss_base_runs_the_whole_base_loss_at_every_width(bench):
    method, batch = _at_task_one(bench, "lwf", splits=2, narrow_loss="base")
    task = bench[1]
    expected = method.base.loss(batch, task)
    with width(method.model, 1):
        expected = expected + method.base.loss(batch, task)
    torch.testing.assert_close(method.loss(batch, task), expected)
    with pytest.raises(ValueError):
        ScrollNet(narrow_loss="nope")


def test_base_regularizer_is_added_once_per_narrower_width(bench):
    """``Method.regularizer`` is a base member (not found by getattr): with
    ``penalty_per_width`` ScrollNet adds it to each of the K - 1 narrower widths' losses."""
    calls = []

    class WithPenalty(Finetune):
        def regularizer(self):
            calls.append(slimmable_modules(self.model)[0].width)
            return torch.ones(())

    losses = []
    for per_width in (False, True):
        torch.manual_seed(0)
        method = ScrollNet(WithPenalty(), splits=4, penalty_per_width=per_width)
        method.setup(_model(bench), None)
        method.before_task(bench[0])
        batch = next(method.batches(bench[0], 16, torch.Generator().manual_seed(0)))
        losses.append(method.loss(batch, bench[0]))
    torch.testing.assert_close(losses[1] - losses[0], torch.tensor(3.0))
    assert calls == [3, 2, 1]  # descending widths, as the official code


def test_scroll_before_every_task_and_full_width_evaluation(bench):
    seen = []

    class Spy(Finetune):
        def before_task(self, task):
            seen.append(("before", get_scroll(self.model)))  # still the previous scroll
            super().before_task(task)

        def loss(self, batch, task):
            seen.append(("loss", get_scroll(self.model)))
            return super().loss(batch, task)

        def predict_both(self, x, task_id, upto):
            assert all(m.width == 4 for m in slimmable_modules(self.model))
            return super().predict_both(x, task_id, upto)

    method = ScrollNet(Spy(), splits=4)
    model = _model(bench)
    fit(model, bench, method, epochs=1, lr=0.1, batch_size=500)
    # (one batch per task) the base's before_task still sees the previous task's scroll
    assert seen == [
        *[("before", 0), ("loss", 0)],
        *[("before", 0), ("loss", 1)],
        *[("before", 1), ("loss", 2)],
    ]
    assert get_scroll(model) == 2
    two = ScrollNet("finetune", splits=2, scroll_step=1)
    assert [two.scroll_for(t) for t in range(4)] == [0, 1, 0, 1]


def test_one_split_is_exactly_the_base_method(bench):
    for base in ("finetune", "ewc", "lwf"):
        plain = fit(_model(bench), bench, make_method(base), epochs=2, lr=0.1, batch_size=16)
        wrapped = fit(
            _model(bench), bench, ScrollNet(base, splits=1), epochs=2, lr=0.1, batch_size=16
        )
        assert json.dumps(plain.metrics()) == json.dumps(wrapped.metrics())


COMPATIBLE = [
    "finetune",
    "joint",
    "one",
    "ewc",
    "mas",
    "si",
    "lwf",
    "er",
    "der",
    "derpp",
    "agem",
    "icarl",
    "bic",
    "lucir",
]


@pytest.mark.parametrize("base", COMPATIBLE)
def test_wraps_every_base_method(base):
    if base not in REGISTRY:
        pytest.skip(f"{base} is not implemented")
    bench = blobs(n_tasks=2, per_class=16)
    args = {"memory_size": 8} if "memory_size" in _params(base) else {}
    method = ScrollNet(base, base_args=args, splits=2)
    r = fit(_model(bench), bench, method, epochs=1, lr=0.05, batch_size=16)
    assert r.task_aware.trained == 2
    assert all(0.0 <= a <= 1.0 for a in r.task_aware.rows[-1])
    # the base's own metrics (BiC's bias layer, LUCIR's scale, ...) reach metrics.json
    assert r.method_metrics["scroll"] == 1
    assert set(method.base.extra_metrics()) <= set(r.method_metrics)


def _params(name):
    import inspect

    return inspect.signature(REGISTRY[name].__init__).parameters


def test_scrollnet_learns_every_task_on_an_mlp():
    """ScrollNet-4 end to end on an MLP whose every hidden layer is sliced and scrolled."""
    bench = blobs(n_tasks=3, per_class=30)
    method = ScrollNet("finetune", splits=4)
    r = fit(_mlp_model(bench), bench, method, epochs=3, lr=0.1, batch_size=16)
    for i in range(3):
        assert r.task_aware.rows[i][i] > 0.9


class Crash(Exception):
    pass


# kept beside tests/test_contract.py (ScrollNet over finetune): a stateful base (LwF's teacher)
# inside the wrapper
def test_resume_after_kill_gives_identical_metrics(tmp_path, base="lwf", crash_at=16):
    """3 tasks x 4 epochs x 3 batches: a crash in task 2, after the first scroll."""
    bench = blobs(n_tasks=3, per_class=24)

    def model():
        return _model(bench, seed=3, dropout=0.2)

    kw = dict(epochs=4, lr=0.1, batch_size=16, momentum=0.9, checkpoint_every=1, seed=5)
    full = tmp_path / "full"
    fit(model(), bench, ScrollNet(base, splits=4), run_dir=full, **kw)

    broken = tmp_path / "broken"
    crashing = _crashing_lwf(crash_at)
    with pytest.raises(Crash):
        fit(model(), bench, ScrollNet(crashing, splits=4), run_dir=broken, **kw)
    fit(model(), bench, ScrollNet(base, splits=4), run_dir=broken, resume=True, **kw)
    assert (full / "metrics.json").read_bytes() == (broken / "metrics.json").read_bytes()


def _crashing_lwf(n):
    from retain.methods.lwf import LwF

    class CrashingLwF(LwF):
        steps = 0

        def after_step(self, batch, task):
            self.steps += 1
            if self.steps == n:
                raise Crash

    return CrashingLwF()
