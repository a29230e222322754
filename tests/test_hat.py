import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from retain.engine import fit
from retain.methods import make_method
from retain.methods.hat import HAT
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


def _first_batch(method, task, batch_size=16):
    return next(method.batches(task, batch_size, torch.Generator().manual_seed(0)))


@pytest.mark.parametrize("opt", list(OPTIMISERS))
def test_binarised_hat_old_tasks_bit_identical_and_frozen_weights_exact(opt):
    bench = blobs(n_tasks=4, per_class=24)
    model = _mlp(bench)
    method = make_method("hat")
    r, logits, params = run_tracked(
        model, bench, method, epochs=3, batch_size=16, **OPTIMISERS[opt]
    )
    assert_old_logits_bit_identical(logits)
    assert r.task_aware.summary()["bwt"] == 0.0
    # every weight/bias an earlier task uses (Eq. 4 factor 0) is exactly unchanged
    for t in range(bench.n_tasks - 1):
        cum = [torch.zeros(u) for u in method.units]
        for s in range(t + 1):
            cum = [torch.maximum(c, m) for c, m in zip(cum, method.task_masks[s], strict=True)]
        for i, name in enumerate(method.layers):
            post = cum[i].bool()
            if i == 0:
                used = post[:, None].expand(-1, 8)
            else:
                used = post[:, None] & cum[i - 1].bool()[None, :]
            w, b = f"{name}.weight", f"{name}.bias"
            assert torch.equal(params[-1][w][used], params[t][w][used])
            assert torch.equal(params[-1][b][post], params[t][b][post])
    assert all(r.task_aware.rows[i][i] > 0.8 for i in range(bench.n_tasks))


@pytest.mark.parametrize("attention", ["binary-after-training", "real-valued"])
def test_gradient_conditioning_is_one_minus_min_of_cumulative_attention(attention):
    bench = blobs(n_tasks=2, per_class=24)
    model = _mlp(bench, hidden=(16, 12))
    method = HAT(clip_grad=None)
    fit(model, bench, method, epochs=2, lr=0.05, batch_size=16)  # learn both tasks
    if attention == "real-valued":  # Eq. 4 with any a in [0, 1] (binarize=False keeps these)
        torch.manual_seed(1)
        method.a_cum = [torch.rand(u) for u in method.units]
    # a step of a third pass over task 1, conditioned by the cumulative attention
    task = bench[1]
    method.before_task(task)
    method.trainable_parameters(task)
    a = method.a_cum
    batch = _first_batch(method, task)
    model.zero_grad()
    method.loss(batch, task).backward()
    raw = {n: p.grad.clone() for n, p in model.backbone.named_parameters()}
    method.after_backward(batch, task)
    for i, name in enumerate(method.layers):
        post = a[i]
        if i == 0:
            factor = 1 - post[:, None]
        else:
            factor = 1 - torch.minimum(post[:, None], a[i - 1][None, :])
        got = model.backbone.get_parameter(f"{name}.weight").grad
        assert torch.equal(got, factor * raw[f"{name}.weight"])
        got_b = model.backbone.get_parameter(f"{name}.bias").grad
        assert torch.equal(got_b, (1 - post) * raw[f"{name}.bias"])
    if attention == "binary-after-training":  # some weights are fully blocked
        assert any(bool((m == 0).any()) for m, _ in method._grad_masks)


def test_annealing_compensation_regulariser_and_clamp():
    bench = blobs(n_tasks=2, per_class=24)  # 48 samples -> 3 batches of 16
    model = _mlp(bench, hidden=(10, 6))
    method = HAT(smax=400, c=0.75, clip_grad=None)
    method.setup(model, None)
    task = bench[0]
    method.before_task(task)
    seen = [method.anneal(b.index, b.of) for b in method.batches(task, 16, torch.Generator())]
    assert seen == pytest.approx([1 / 400, (400 + 1 / 400) / 2, 400])  # Eq. 5 over b = 1..3

    # a batch 3 of 201 (b = 3, B = 201): s = 1/400 + (400 - 1/400) * 2/200, about 4
    batch = dataclasses.replace(_first_batch(method, task), index=2, of=201)
    s = method.anneal(batch.index, batch.of)
    assert s == pytest.approx(1 / 400 + (400 - 1 / 400) * 2 / 200)
    e = method.emb[0]
    with torch.no_grad():
        e[0].copy_(torch.linspace(-3, 3, 10))
    masks = method.attention(0, s)
    assert torch.allclose(masks[0], torch.sigmoid(s * e[0]))
    # regulariser of Eqs. 7-8 with no earlier task: mean attention over all units
    reg = method.regulariser(masks)
    assert torch.allclose(reg, torch.cat(masks).sum() / 16)
    method.trainable_parameters(task)
    model.zero_grad()
    method.loss(batch, task).backward()  # with the attention at this batch's s
    q = e[0].grad.clone()
    method.after_backward(batch, task)
    expected = 400 / s * (torch.cosh(s * e[0].detach()) + 1) / (torch.cosh(e[0].detach()) + 1) * q
    assert torch.allclose(e[0].grad, expected)
    with torch.no_grad():
        e[1].fill_(9.0)
    method.after_step(batch, task)
    assert e[1].max().item() == 6.0


def test_reported_capacity_and_units():
    bench = blobs(n_tasks=3, per_class=16)
    model = _mlp(bench, hidden=(20, 20))
    method = make_method("hat")
    r = fit(model, bench, method, epochs=2, lr=0.05, batch_size=16)
    rep = r.metrics()["method"]["capacity"]
    assert rep == method.capacity_report()
    cum = [torch.zeros(20), torch.zeros(20)]
    for t in range(3):
        cum = [torch.maximum(c, m) for c, m in zip(cum, method.task_masks[t], strict=True)]
        n0, n1 = int(cum[0].sum()), int(cum[1].sum())
        assert rep["units"]["layers.0"]["used_frac_after_task"][t] == round(n0 / 20, 6)
        assert rep["layers"]["layers.0"]["used_frac_after_task"][t] == round(n0 * 8 / 160, 6)
        assert rep["layers"]["layers.1"]["used_frac_after_task"][t] == round(n0 * n1 / 400, 6)
    assert rep["total"]["mask_bits"] == 3 * 40  # one bit per unit and task


def test_alexnet_chain_through_flatten_zero_forgetting():
    bench = tiny_images(n_tasks=3)
    torch.manual_seed(0)
    model = ContinualModel(AlexNet((1, 16, 16), nhid=32, drop1=0.0, drop2=0.0), [2, 2, 2])
    method = make_method("hat")
    _, logits, _ = run_tracked(
        model, bench, method, epochs=2, batch_size=8, lr=0.05, momentum=0.9, weight_decay=0.01
    )
    assert method.expand == [0, 1, 1, 1, 1]  # c3 leaves a 1x1 map at 16 px
    assert_old_logits_bit_identical(logits)
    rep = method.capacity_report()
    assert set(rep["layers"]) == {"c1", "c2", "c3", "fc1", "fc2"}


def test_gate_on_conv_output_equals_gating_after_relu_and_pool():
    torch.manual_seed(0)
    net = AlexNet((1, 16, 16), nhid=8, drop1=0.0, drop2=0.0)
    model = ContinualModel(net, [2])
    method = HAT()
    method.setup(model, None)
    x = torch.randn(4, 1, 16, 16)
    g = [torch.rand(u) for u in method.units]
    method._gates = g
    out = model.backbone(x)
    method._gates = None
    h = net.pool(F.relu(net.c1(x))) * g[0].view(1, -1, 1, 1)
    h = net.pool(F.relu(net.c2(h))) * g[1].view(1, -1, 1, 1)
    h = net.pool(F.relu(net.c3(h))) * g[2].view(1, -1, 1, 1)
    h = F.relu(net.fc1(h.flatten(1))) * g[3]
    h = F.relu(net.fc2(h)) * g[4]
    assert torch.allclose(out, h, atol=1e-6)


def test_smax_inference_masks_are_binary_and_chain_errors():
    bench = blobs(n_tasks=2)
    model = _mlp(bench)
    method = HAT()
    method.setup(model, None)
    masks = method.inference_masks(1)  # an unlearned task: its embeddings at s_max, binarised
    assert all(set(m.unique().tolist()) <= {0.0, 1.0} for m in masks)
    assert math.isclose(method.anneal(0, 1), 400)

    class NotAChain(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a = torch.nn.Linear(8, 5)
            self.b = torch.nn.Linear(7, 4)
            self.out_features = 4

    bad = ContinualModel(NotAChain(), [2, 2])
    with pytest.raises(ValueError, match="chain"):
        HAT().setup(bad, None)
