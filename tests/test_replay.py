"""Replay methods: each mechanism does what its paper says, through fit() or one's own loop."""

import pytest
import torch
import torch.nn.functional as F

from retain.engine import fit
from retain.methods import BenchmarkInfo, make_method
from retain.methods.agem import project_gradient
from retain.methods.lucir import CosineHead
from retain.models import ContinualModel
from tests.own_loop import train_task
from tests.synthetic import TinyBackbone, blobs

SMALL = {"memory_size": 40}


def _model(bench, seed=0, dropout=0.0):
    torch.manual_seed(seed)
    return ContinualModel(TinyBackbone(dropout=dropout), bench.classes_per_task)


def _info(bench):
    return BenchmarkInfo(bench.n_tasks, bench.classes_per_task, tuple(bench.input_shape))


def _train_task(method, task, epochs=5, lr=0.1, batch_size=16, seed=0):
    """The documented loop of one's own, for one task."""
    g = torch.Generator().manual_seed(seed)
    train_task(method, task, g, epochs=epochs, lr=lr, batch_size=batch_size)


def _flat_grad(params):
    return torch.cat(
        [(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params]
    )


# ---------------------------------------------------------------------------- A-GEM
def test_agem_projection_is_nonnegative_against_reference_and_identity_otherwise():
    g = torch.Generator().manual_seed(0)
    conflicts = 0
    for _ in range(200):
        v, ref = torch.randn(30, generator=g), torch.randn(30, generator=g)
        p = project_gradient(v, ref)
        if torch.dot(v, ref) < 0:
            conflicts += 1
            assert abs(torch.dot(p, ref)) < 1e-5 * v.norm() * ref.norm()
            # only the component along ref was removed
            residual = p - v
            assert torch.allclose(residual, residual.dot(ref) / ref.dot(ref) * ref, atol=1e-6)
        else:
            assert torch.equal(p, v)
    assert 50 < conflicts < 150
    assert torch.equal(project_gradient(torch.ones(3), torch.zeros(3)), torch.ones(3))


def test_agem_hook_projects_training_gradient_against_memory_gradient():
    bench = blobs(n_tasks=2, per_class=60)
    model = _model(bench)
    # a reference batch larger than the memory: the whole memory, so g_ref is reproducible
    m = make_method("agem", memory_size=40, minibatch_size=1000)
    m.setup(model, _info(bench))
    _train_task(m, bench[0])
    assert len(m.memory) == 40
    t1 = bench[1]
    m.before_task(t1)
    params = m._parameters()

    def grads_for(batch):
        for p in params:
            p.grad = None
        m.loss(batch, t1).backward()
        g = _flat_grad(params)
        g_ref = torch.cat(
            [
                (r if r is not None else torch.zeros_like(p)).reshape(-1)
                for r, p in zip(m.reference_gradient(params, t1), params)
            ]
        )
        m.after_backward(batch, t1)
        return g, g_ref, _flat_grad(params)

    # new-task batches conflict with the memory (projected) or not (left exactly as they were)
    cases = {"projected": 0, "kept": 0}
    for seed in range(6):
        for task in bench:
            batch = next(m.batches(task, 32, torch.Generator().manual_seed(seed)))
            g, g_ref, g_new = grads_for(batch)
            if torch.dot(g, g_ref) < 0:
                cases["projected"] += 1
                assert torch.dot(g_new, g_ref) >= -1e-5 * g.norm() * g_ref.norm()
                assert torch.allclose(g_new, project_gradient(g, g_ref), atol=1e-6)
                assert not torch.allclose(g_new, g)
            else:
                cases["kept"] += 1
                assert torch.equal(g_new, g)
    assert cases["projected"] > 0 and cases["kept"] > 0, cases


# ---------------------------------------------------------------------------- DER
def test_der_stores_logits_at_insertion_and_its_loss_is_mse_to_them():
    bench = blobs(n_tasks=2, per_class=60)
    model = _model(bench)
    alpha = 0.7
    m = make_method("der", memory_size=500, alpha=alpha)
    m.setup(model, _info(bench))
    t0 = bench[0]
    m.before_task(t0)
    opt = torch.optim.SGD(m.trainable_parameters(t0), lr=0.5)
    it = m.batches(t0, 16, torch.Generator().manual_seed(0))
    b1 = next(it)
    with torch.no_grad():
        z_before = model(b1.x)
    loss = m.loss(b1, t0)
    opt.zero_grad()
    loss.backward()
    opt.step()
    m.after_step(b1, t0)
    stored = m.buffer.get_all()
    assert torch.equal(stored["x"], b1.x)
    assert torch.allclose(stored["logits"], z_before)  # all heads, as they were before the step
    with torch.no_grad():
        assert not torch.allclose(model(b1.x), z_before, atol=1e-3)  # the model has moved
    # the loss of the next step: CE on the stream + alpha * MSE(f(x'), z') on a memory batch
    b2 = next(it)
    state = m.buffer.generator.get_state()
    mem = m.buffer.sample(len(b2))
    m.buffer.generator.set_state(state)
    got = m.loss(b2, t0)
    want = F.cross_entropy(model(b2.x, upto=1), b2.y) + alpha * F.mse_loss(
        model(mem["x"]), mem["logits"]
    )
    assert torch.allclose(got, want, atol=1e-6)


def test_derpp_adds_cross_entropy_on_a_second_memory_batch():
    bench = blobs(n_tasks=2, per_class=60)
    model = _model(bench)
    m = make_method("derpp", memory_size=500, alpha=0.3, beta=0.9)
    m.setup(model, _info(bench))
    _train_task(m, bench[0], epochs=1)
    t1 = bench[1]
    m.before_task(t1)
    b = next(m.batches(t1, 16, torch.Generator().manual_seed(0)))
    state = m.buffer.generator.get_state()
    m1, m2 = m.buffer.sample(16), m.buffer.sample(16)
    m.buffer.generator.set_state(state)
    got = m.loss(b, t1)
    g1 = model.global_labels(b.y, b.task_ids)
    g2 = model.global_labels(m2["y"], m2["task_ids"])
    want = (
        F.cross_entropy(model(b.x), g1)
        + 0.3 * F.mse_loss(model(m1["x"]), m1["logits"])
        + 0.9 * F.cross_entropy(model(m2["x"]), g2)
    )
    assert torch.allclose(got, want, atol=1e-6)


# ---------------------------------------------------------------------------- ER
def test_er_concatenates_an_equal_size_memory_batch():
    bench = blobs(n_tasks=2, per_class=60)
    model = _model(bench)
    m = make_method("er", memory_size=30)
    m.setup(model, _info(bench))
    _train_task(m, bench[0], epochs=2)
    assert m.buffer.seen == 2 * len(bench[0].y_train) and len(m.buffer) == 30
    t1 = bench[1]
    m.before_task(t1)
    b = next(m.batches(t1, 16, torch.Generator().manual_seed(0)))
    state = m.buffer.generator.get_state()
    mem = m.buffer.sample(16)
    m.buffer.generator.set_state(state)
    got = m.loss(b, t1)
    x = torch.cat([b.x, mem["x"]])
    y = model.global_labels(torch.cat([b.y, mem["y"]]), torch.cat([b.task_ids, mem["task_ids"]]))
    assert torch.allclose(got, F.cross_entropy(model(x), y), atol=1e-6)


# ---------------------------------------------------------------------------- iCaRL
def test_icarl_nme_classifier_uses_exemplar_means():
    bench = blobs(n_tasks=3, per_class=60)
    model = _model(bench)
    m = make_method("icarl", memory_size=30)
    fit(model, bench, m, epochs=3, lr=0.1, batch_size=16)
    mem = m.memory.get_all()
    assert torch.bincount(mem["group"]).tolist() == [5] * 6  # 30 shared by 6 classes
    with torch.no_grad():
        phi = F.normalize(model.features(mem["x"]), dim=1)
    means = torch.stack([F.normalize(phi[mem["group"] == c].mean(0), dim=0) for c in range(6)])
    assert torch.allclose(m.class_means, means, atol=1e-5)
    x = torch.cat([t.x_test for t in bench])
    with torch.no_grad():
        f = F.normalize(model.features(x), dim=1)
    nearest = torch.cdist(f, means).argmin(1)
    assert torch.equal(m.predict(x, upto=3).argmax(1), nearest)
    # task-aware: the nearest mean among the task's own classes
    assert torch.equal(m.predict(x, task_id=1).argmax(1), torch.cdist(f, means[2:4]).argmin(1))
    # nme=False predicts with the heads
    m.nme = False
    heads = m.predict(x, upto=3)
    assert torch.equal(heads, model(x))


def test_icarl_distills_old_outputs_with_sigmoid_targets():
    bench = blobs(n_tasks=2, per_class=60)
    model = _model(bench)
    m = make_method("icarl", memory_size=20)
    m.setup(model, _info(bench))
    _train_task(m, bench[0], epochs=2)
    t1 = bench[1]
    m.before_task(t1)
    b = next(m.batches(t1, 64, torch.Generator().manual_seed(0)))
    assert set(b.task_ids.tolist()) == {0, 1}  # exemplars are in the training set
    logits = model(b.x)
    target = F.one_hot(model.global_labels(b.y, b.task_ids), 4).float()
    with torch.no_grad():
        target[:, :2] = torch.sigmoid(m.old_model(b.x, upto=1))
    want = F.binary_cross_entropy_with_logits(logits, target)
    assert torch.allclose(m.loss(b, t1), want, atol=1e-6)


# ---------------------------------------------------------------------------- BiC
def test_bic_correction_only_touches_new_class_logits():
    bench = blobs(n_tasks=3, per_class=60)
    model = _model(bench)
    m = make_method("bic", memory_size=40)
    fit(model, bench, m, epochs=2, lr=0.1, batch_size=16)
    assert m.bias_task == 2 and float(m.alpha) > 0
    x = torch.cat([t.x_test for t in bench])
    m.alpha, m.beta = torch.tensor(0.5), torch.tensor(2.0)
    with torch.no_grad():
        raw = model(x)
    out = m.predict(x, upto=3)
    assert torch.equal(out[:, :4], raw[:, :4])
    assert torch.allclose(out[:, 4:], 0.5 * raw[:, 4:] + 2.0)
    assert torch.equal(m.predict(x, task_id=0), raw[:, :2])
    # task-aware predictions of the newest task are unchanged (alpha > 0)
    assert torch.equal(m.predict(x, task_id=2).argmax(1), raw[:, 4:].argmax(1))


def test_bic_holds_out_a_balanced_validation_set_and_fits_the_bias_on_it():
    bench = blobs(n_tasks=3, per_class=60)
    model = _model(bench)
    m = make_method("bic", memory_size=60, val_fraction=0.2)
    trained_x = []

    class Spy(type(m)):
        def loss(self, batch, task):
            trained_x.append(batch.x)
            return super().loss(batch, task)

    spy = Spy(memory_size=60, val_fraction=0.2)
    fit(model, bench, spy, epochs=2, lr=0.1, batch_size=16)
    val = spy.val_memory.get_all()
    assert torch.bincount(val["group"]).tolist() == [2] * 6  # 12 held out, balanced
    assert torch.bincount(spy.memory.get_all()["group"]).tolist() == [8] * 6
    seen = torch.cat(trained_x)
    assert not (torch.cdist(val["x"], seen) == 0).any()  # never trained on
    # the fitted correction does not raise the validation loss over no correction
    with torch.no_grad():
        logits = model(val["x"])
    target = model.global_labels(val["y"], val["task_ids"])
    fitted = F.cross_entropy(spy.corrected(logits), target)
    assert fitted <= F.cross_entropy(logits, target) + 1e-6


# ---------------------------------------------------------------------------- LUCIR
def test_lucir_cosine_heads_are_bounded_by_the_shared_scale():
    bench = blobs(n_tasks=3, per_class=60)
    model = _model(bench)
    m = make_method("lucir", memory_size=30)
    m.setup(model, _info(bench))
    assert all(isinstance(h, CosineHead) for h in model.heads)
    assert model.heads[0].scale is model.heads[2].scale  # one sigma for the classifier
    with torch.no_grad():
        model.heads[0].scale.fill_(3.7)
        x = torch.randn(500, 8) * 100
        logits = model(x)
        assert logits.abs().max() <= 3.7 + 1e-5
        # the bound is reached by a feature aligned with a class weight
        f = model.heads[1].weight[:1].clone()
        assert torch.allclose(model.heads[1](f)[0, 0], torch.tensor(3.7))


def test_lucir_trains_backbone_and_current_head_and_margin_ranking():
    bench = blobs(n_tasks=2, per_class=60)
    model = _model(bench)
    m = make_method("lucir", memory_size=30, margin=0.5, k=1)
    fit(model, bench, m, epochs=2, lr=0.1, batch_size=16)
    ids = {id(p) for p in m.trainable_parameters(bench[1])}
    assert id(model.heads[1].weight) in ids and id(model.heads[0].weight) not in ids
    assert id(model.heads[0].scale) in ids
    # margin ranking: only old-class samples, hinge at the margin against new classes
    cos = torch.tensor([[0.9, 0.1, 0.2, 0.6], [0.1, 0.8, 0.5, 0.0], [0.0, 0.0, 0.9, 0.0]])
    target = torch.tensor([0, 1, 2])
    got = m.margin_ranking(cos, target, n_old=2)
    assert torch.allclose(got, torch.tensor((0.2 + 0.2) / 2))


# ---------------------------------------------------------------------------- behaviour
@pytest.mark.parametrize("name", ["er", "der", "derpp", "icarl", "bic", "lucir"])
def test_replay_beats_finetune_on_task_agnostic_forgetting(name):
    bench = blobs(n_tasks=3, per_class=60)
    ft = fit(_model(bench), bench, make_method("finetune", loss_heads="seen"), epochs=8, lr=0.1)
    r = fit(_model(bench), bench, make_method(name, **SMALL), epochs=8, lr=0.1, batch_size=16)
    assert ft.task_agnostic.forgetting() > 0.9
    assert r.task_agnostic.forgetting() < ft.task_agnostic.forgetting() - 0.3
    assert r.task_agnostic.acc() > ft.task_agnostic.acc() + 0.2


@pytest.mark.parametrize("name", ["er", "der", "derpp", "agem"])
def test_stream_replay_runs_with_a_shared_head(name):
    bench = blobs(n_tasks=3, per_class=30)
    torch.manual_seed(0)
    model = ContinualModel(TinyBackbone(), bench.classes_per_task, head="shared")
    r = fit(model, bench, make_method(name, **SMALL), epochs=2, lr=0.1)
    assert r.task_aware.rows == r.task_agnostic.rows


@pytest.mark.parametrize("name", ["icarl", "bic", "lucir"])
def test_exemplar_methods_need_one_head_per_task(name):
    bench = blobs(n_tasks=2, per_class=30)
    model = ContinualModel(TinyBackbone(), bench.classes_per_task, head="shared")
    with pytest.raises(ValueError, match="one head per task"):
        make_method(name).setup(model, _info(bench))


def test_bic_and_lucir_report_their_learned_scalars():
    bench = blobs(n_tasks=2, per_class=30)
    r = fit(_model(bench), bench, make_method("bic", **SMALL), epochs=2, lr=0.1)
    assert r.metrics()["method"]["bias_task"] == 1
    r = fit(_model(bench), bench, make_method("lucir", **SMALL), epochs=2, lr=0.1)
    assert r.metrics()["method"]["scale"] > 1.0
