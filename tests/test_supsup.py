import math

import pytest
import torch

from retain.core.masks import density_count, mask_of, raw_weight
from retain.engine import fit
from retain.methods import make_method
from retain.methods.supsup import SupSup
from retain.models import MLP, AlexNet, ContinualModel
from tests.synthetic import blobs
from tests.test_packnet import (
    OPTIMISERS,
    assert_old_logits_bit_identical,
    run_tracked,
    tiny_images,
)


def _mlp(bench, seed=0, hidden=(32, 32)):
    torch.manual_seed(seed)
    return ContinualModel(MLP(bench.input_shape, hidden=hidden), bench.classes_per_task)


@pytest.mark.parametrize("opt", list(OPTIMISERS))
def test_old_tasks_bit_identical_and_weights_never_move(opt):
    bench = blobs(n_tasks=4, per_class=24)
    model = _mlp(bench)
    method = make_method("supsup", density=0.5)
    layers = [*model.backbone.layers, *model.heads]
    signs = [layer.weight.detach().sign() for layer in layers]
    r, logits, _ = run_tracked(model, bench, method, epochs=3, batch_size=16, **OPTIMISERS[opt])
    assert_old_logits_bit_identical(logits)
    assert r.task_aware.summary()["bwt"] == 0.0
    for layer, sign in zip(layers, signs, strict=True):  # still the signed constants, exactly
        w = raw_weight(layer)
        assert torch.equal(w, sign * math.sqrt(2 / w.shape[1]))
        assert torch.equal(layer.bias, torch.zeros_like(layer.bias))
    assert sum(r.task_aware.rows[i][i] for i in range(4)) / 4 > 0.75  # masks do learn


def test_signed_kaiming_constant_weights_and_zero_biases():
    bench = blobs(n_tasks=2)
    model = _mlp(bench, hidden=(24, 10))
    SupSup().setup(model, None)
    for layer in [*model.backbone.layers, *model.heads]:
        w = raw_weight(layer)
        assert torch.equal(w.abs(), torch.full_like(w, math.sqrt(2 / w.shape[1])))
        assert not w.requires_grad
        assert torch.equal(layer.bias, torch.zeros_like(layer.bias))


@pytest.mark.parametrize("density", [0.03, 0.1, 0.5, 0.9])
def test_every_supermask_has_exactly_the_requested_density(density):
    bench = blobs(n_tasks=3, per_class=16)
    model = _mlp(bench, hidden=(37, 23))
    method = make_method("supsup", density=density)
    fit(model, bench, method, epochs=1, optimizer="adam", lr=0.01, batch_size=16)
    for t in range(3):
        names = [*method.layers, f"head.{t}"]
        for name in names:
            m = method.bank.get(t, name)
            assert int(m.sum()) == density_count(m.numel(), density)
        # and during training: the forward uses exactly that many weights
    for layer in method.layers.values():
        pm = mask_of(layer)
        w_eff = layer.weight  # through the parametrization: W * top-k(|scores|)
        assert int((w_eff != 0).sum()) == density_count(w_eff.numel(), density)
        assert pm.mask is None


def test_straight_through_gradient_reaches_scores_and_tasks_get_different_masks():
    bench = blobs(n_tasks=2, per_class=24)
    model = _mlp(bench)
    method = SupSup()
    method.setup(model, None)
    task = bench[0]
    method.before_task(task)
    params = method.trainable_parameters(task)
    assert all("scores" in n for n, p in model.named_parameters() if p.requires_grad)
    assert len(params) == len(method.layers) + 1  # backbone scores + this task's head scores
    batch = next(method.batches(task, 16, torch.Generator().manual_seed(0)))
    method.loss(batch, task).backward()
    layer = model.backbone.layers[1]
    scores = mask_of(layer).scores
    # d loss / d scores = sign(s) * (d loss / d W_eff) * W  (edge-popup's straight-through)
    x = torch.relu(model.backbone.layers[0](batch.x))
    w_eff = layer.weight.detach().requires_grad_(True)
    h = torch.relu(torch.nn.functional.linear(x.detach(), w_eff, layer.bias))
    loss = torch.nn.functional.cross_entropy(model.heads[0](h), batch.y)
    (g,) = torch.autograd.grad(loss, w_eff)
    assert torch.allclose(scores.grad, torch.sign(scores) * g * raw_weight(layer), atol=1e-7)

    r = fit(_mlp(bench), bench, SupSup(), epochs=2, optimizer="adam", lr=0.01, batch_size=16)
    assert r.task_aware.rows[1][1] > 0.8


def test_dense_heads_option_trains_the_head_only_for_its_task():
    bench = blobs(n_tasks=2, per_class=24)
    model = _mlp(bench)
    method = make_method("supsup", mask_heads=False)
    head1 = [p.detach().clone() for p in model.heads[1].parameters()]
    _, logits, _ = run_tracked(model, bench, method, epochs=2, optimizer="adam", lr=0.01)
    assert_old_logits_bit_identical(logits)
    assert not torch.equal(head1[0], model.heads[1].weight)
    assert "heads" not in method.capacity_report()


def test_capacity_report_union_and_mask_memory():
    bench = blobs(n_tasks=3, per_class=16)
    model = _mlp(bench, hidden=(40, 40))
    method = make_method("supsup", density=0.1)
    r = fit(model, bench, method, epochs=1, optimizer="adam", lr=0.01, batch_size=16)
    rep = r.metrics()["method"]["capacity"]
    for name in method.layers:
        n = raw_weight(method.layers[name]).numel()
        line = rep["layers"][name]
        assert line["used"] == int(method.bank.union(name).sum())
        assert line["mask_bits"] == 3 * n
        # a 10% mask codes well below 1 bit per weight (entropy 0.47 bit)
        assert line["mask_bytes_encoded"] < 0.7 * line["mask_bytes_packed"]
    assert rep["heads"]["mask_bits"] == 3 * 40 * 2


def test_alexnet_zero_forgetting():
    bench = tiny_images(n_tasks=2)
    torch.manual_seed(0)
    model = ContinualModel(AlexNet((1, 16, 16), nhid=32, drop1=0.0, drop2=0.0), [2, 2])
    method = make_method("supsup")
    _, logits, _ = run_tracked(
        model, bench, method, epochs=1, batch_size=8, lr=0.1, momentum=0.9, weight_decay=0.01
    )
    assert_old_logits_bit_identical(logits)
    assert set(method.capacity_report()["layers"]) == {"c1", "c2", "c3", "fc1", "fc2"}
