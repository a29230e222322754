"""Dynamos: agents, gates, reward, REINFORCE, prototype loss, buffer, warm-up (unit level)."""

import copy

import pytest
import torch
import torch.nn.functional as F

from retain.data import Benchmark, make_tasks
from retain.methods import BenchmarkInfo, make_method
from retain.methods.dynamos import js_divergence, keep_reward, prototype_loss, reinforce_loss
from retain.models import ContinualModel
from retain.models.gating import Agent, GatedBlock, bernoulli_log_prob, gate_resnet
from retain.models.resnet import BasicBlock, ReducedResNet18


def image_bench(n_tasks=2, per_class=12, shape=(1, 8, 8), seed=0):
    """``n_tasks`` tasks of two classes of noisy fixed patterns."""
    g = torch.Generator().manual_seed(seed)
    protos = torch.randn(2 * n_tasks, *shape, generator=g) * 2
    splits = []
    for t in range(n_tasks):
        parts = []
        for n in (per_class, per_class // 2):
            xs, ys = [], []
            for local in range(2):
                xs.append(protos[2 * t + local] + 0.5 * torch.randn(n, *shape, generator=g))
                ys.append(torch.full((n,), local, dtype=torch.long))
            parts += [torch.cat(xs), torch.cat(ys)]
        splits.append(tuple(parts))
    return Benchmark("imgs", make_tasks(splits), shape)


def tiny_model(bench, seed=0, nf=4):
    torch.manual_seed(seed)
    return ContinualModel(ReducedResNet18(bench.input_shape, nf=nf), bench.classes_per_task)


def info(bench):
    return BenchmarkInfo(bench.n_tasks, bench.classes_per_task, tuple(bench.input_shape))


def set_up(bench, **kw):
    model = tiny_model(bench)
    m = make_method("dynamos", **kw)
    m.setup(model, info(bench))
    return model, m


# ---------------------------------------------------------------------------- gates
@pytest.mark.parametrize("train", [True, False])
def test_all_ones_actions_or_bypassed_agents_give_the_ungated_backbone(train):
    torch.manual_seed(0)
    backbone = ReducedResNet18((1, 8, 8), nf=4)
    reference = copy.deepcopy(backbone)
    blocks = gate_resnet(backbone)
    assert list(blocks) == ["layer2.0", "layer2.1"]  # the second stage only
    assert all(isinstance(b, BasicBlock) for b in backbone.layer1)  # stage 1 untouched
    # the wrapped blocks share the original parameters; the state dict only gains the agents
    assert backbone.layer2[0].block.conv1 is blocks["layer2.0"].block.conv1
    x = torch.randn(6, 1, 8, 8)
    backbone.train(train)
    reference.train(train)
    for b in blocks.values():
        b.choose = lambda v, agent: torch.ones_like(v)
    assert torch.allclose(backbone(x), reference(x), atol=1e-6)
    for b in blocks.values():
        b.enabled = False
    assert torch.equal(backbone(x), reference(x))


@pytest.mark.parametrize("gate_shortcut", [True, False])
def test_gates_multiply_after_bn_before_relu_and_the_shortcut(gate_shortcut):
    torch.manual_seed(1)
    block = BasicBlock(4, 8, stride=2)  # projection shortcut, as Dynamos' first gated block
    gated = GatedBlock(block, gate_shortcut=gate_shortcut).eval()
    x = torch.randn(5, 4, 8, 8)
    a1 = torch.bernoulli(torch.full((5, 8), 0.5))
    a2 = torch.bernoulli(torch.full((5, 8), 0.5))
    seen = []

    def choose(v, agent):
        seen.append(v)
        return a1 if agent is gated.agent1 else a2

    gated.choose = choose
    out = gated(x)
    g1, g2 = a1[:, :, None, None], a2[:, :, None, None]
    h = (block.bn1(block.conv1(x)) * g1).relu()
    short = block.shortcut(x) * (g2 if gate_shortcut else 1)
    expected = (block.bn2(block.conv2(h)) * g2 + short).relu()
    assert torch.allclose(out, expected, atol=1e-6)
    # agent 1 sees the block input, agent 2 the gated output of conv1
    assert torch.allclose(seen[0], gated.agent1(x))
    assert torch.allclose(seen[1], gated.agent2(h))
    r1, r2 = gated.records
    assert torch.equal(r1.actions, a1) and torch.equal(r2.actions, a2)
    # gating before the ReLU: a dropped channel is exactly zero after conv1's ReLU
    assert (h[a1 == 0] == 0).all()


def test_agent_architecture_is_pointwise_conv_bn_gap_mlp_sigmoid_times_pooled():
    torch.manual_seed(0)
    agent = Agent(32, 64, tau=0.15).eval()
    assert agent.conv.kernel_size == (1, 1) and agent.conv.bias is None
    assert (agent.fc1.in_features, agent.fc1.out_features, agent.fc2.out_features) == (64, 4, 64)
    x = torch.randn(3, 32, 5, 5)
    p = agent.bn(agent.conv(x)).mean((2, 3))
    s = torch.sigmoid(agent.fc2(torch.relu(agent.fc1(p))))
    v = agent(x)
    assert torch.allclose(v, p * s)
    assert torch.allclose(agent.probability(v), torch.sigmoid(v / 0.15))


def test_actions_are_bernoulli_of_the_agent_probability_in_training_and_thresholded_in_eval():
    torch.manual_seed(0)
    gated = GatedBlock(BasicBlock(4, 8), tau=0.15)
    # the agents' weights made small so the probabilities are spread over (0, 1)
    with torch.no_grad():
        for a in gated.agents:
            a.fc2.bias.normal_(0, 2)
    x = torch.randn(1, 4, 6, 6).expand(4000, -1, -1, -1)  # one input, many trials
    gated.train()
    gated(x)
    rec = gated.records[0]
    p = rec.probability[0]
    assert torch.allclose(rec.probability, p.expand_as(rec.probability))
    assert ((p > 0.05) & (p < 0.95)).any()
    freq = rec.actions.mean(0)
    tol = 4 * (p * (1 - p) / 4000).sqrt() + 1e-3
    assert ((freq - p).abs() <= tol).all(), (freq, p)
    # eval: deterministic, keep iff p > 0.5
    gated.eval()
    out1 = gated(x[:3])
    r1 = gated.records[0]
    assert torch.equal(r1.actions, (r1.probability > 0.5).float())
    assert torch.equal(out1, gated(x[:3]))
    # optional sampling at inference (trial-to-trial variability)
    gated.inference = "sample"
    gated(x[:200])
    a, b = gated.records[0].actions, None
    gated(x[:200])
    b = gated.records[0].actions
    assert not torch.equal(a, b)


def test_log_prob_is_the_bernoulli_log_likelihood_summed_over_channels():
    logits = torch.tensor([[0.3, -1.2, 2.0]])
    a = torch.tensor([[1.0, 0.0, 1.0]])
    p = torch.sigmoid(logits)
    hand = (a * p.log() + (1 - a) * (1 - p).log()).sum(1)
    assert torch.allclose(bernoulli_log_prob(logits, a), hand)


# ---------------------------------------------------------------------------- losses
def test_reward_against_a_hand_computation():
    kept = torch.tensor([[0.5, 1.0], [0.7, 0.25]])
    correct = torch.tensor([True, False])
    r = keep_reward(kept, correct, keep_ratio=0.7, penalty=500.0)
    hand = torch.tensor([[-(0.2**2), -(0.3**2)], [-500 * 0.0**2, -500 * 0.45**2]])
    assert torch.allclose(r, hand)
    assert (r <= 0).all()


def test_reinforce_step_raises_the_log_prob_of_rewarded_actions():
    torch.manual_seed(0)
    agent = Agent(3, 8, tau=0.15)
    x = torch.randn(4, 3, 5, 5)
    with torch.no_grad():
        a = torch.bernoulli(agent.probability(agent(x)))

    def log_prob():
        return bernoulli_log_prob(agent(x) / agent.tau, a)

    for sign in (1.0, -1.0):
        snapshot = copy.deepcopy(agent.state_dict())
        before = log_prob().detach()
        loss = reinforce_loss(log_prob().unsqueeze(1), torch.full((4, 1), sign))
        agent.zero_grad()
        loss.backward()
        with torch.no_grad():
            for q in agent.parameters():
                q -= 1e-3 * q.grad
        after = log_prob().detach()
        assert (torch.sign(after - before) == sign).all(), (sign, after - before)
        agent.load_state_dict(snapshot)


def test_reinforce_with_the_keep_reward_drives_the_keep_ratio_to_kr():
    """Maximising Eq. 3 (all predictions correct) by Eq. 4 alone moves the agent from keeping
    about half of the channels to keeping ``kr`` of them."""
    torch.manual_seed(0)
    agent = Agent(3, 16, tau=0.15)
    x = torch.randn(32, 3, 4, 4)
    opt = torch.optim.SGD(agent.parameters(), lr=0.3)
    ok = torch.ones(32, dtype=torch.bool)
    with torch.no_grad():
        assert abs(float(agent.probability(agent(x)).mean()) - 0.5) < 0.05
    for _ in range(150):
        v = agent(x)
        a = torch.bernoulli(agent.probability(v.detach()))
        r = keep_reward(a.mean(1, keepdim=True), ok, keep_ratio=0.7, penalty=500.0)
        loss = reinforce_loss(bernoulli_log_prob(v / agent.tau, a).unsqueeze(1), r)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        kept = agent.probability(agent(x)).mean()
    assert abs(float(kept) - 0.7) < 0.05


def test_prototype_loss_against_a_hand_computation():
    v = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0], [1.0, 2.0]])
    y = torch.tensor([0, 0, 1, 1])
    # pairwise MSE = squared distance / D (D = 2)
    same = 1.0 / 2 + 1.0 / 2  # (0,1), (2,3)
    diff = 4.0 / 2 + 5.0 / 2 + 5.0 / 2 + 4.0 / 2  # (0,2), (0,3), (1,2), (1,3)
    assert torch.allclose(prototype_loss(v, y), torch.tensor((1 + same) / (1 + diff)))
    # skipped (zero, still differentiable) with 2 or fewer samples
    two = v[:2].clone().requires_grad_()
    out = prototype_loss(two, y[:2])
    assert float(out.detach()) == 0.0
    out.backward()
    # pulls same-class vectors together
    w = v.clone().requires_grad_()
    prototype_loss(w, y).backward()
    assert w.grad[0, 0] < 0 and w.grad[1, 0] > 0  # descent moves them together


def test_js_divergence_is_zero_on_identical_rates_and_one_on_disjoint():
    rates = torch.tensor([[1.0, 1.0, 0.0, 0.0], [0.5, 0.5, 0.0, 0.0], [0.0, 0.0, 1.0, 1.0]])
    d = js_divergence(rates)
    assert torch.allclose(d, d.T)
    assert abs(float(d[0, 1])) < 1e-9 and abs(float(d[0, 2]) - 1.0) < 1e-9


# ---------------------------------------------------------------------------- the method
def _first_batch(m, task, bs=8, seed=0):
    return next(m.batches(task, bs, torch.Generator().manual_seed(seed)))


def test_method_loss_is_ce_plus_gamma_reinforce_plus_prototype_by_hand():
    bench = image_bench()
    model, m = set_up(bench, warmup=0, gamma=0.7, w_p=0.4)
    task = bench[0]
    m.before_task(task)
    model.train()
    batch = _first_batch(m, task, bs=12)
    torch.manual_seed(3)
    got = m.loss(batch, task)
    torch.manual_seed(3)  # the same Bernoulli draws
    z = model(batch.x, upto=1)
    recs = m.records()
    assert len(recs) == 4 and [r.actions.shape[1] for r in recs] == [8, 8, 8, 8]
    correct = z.argmax(1) == batch.y
    rewards, log_probs = [], []
    for r in recs:
        kept = r.actions.mean(1)
        err = (0.7 - kept) ** 2
        rewards.append(torch.where(correct, -err, -500.0 * err))
        p = torch.sigmoid(r.attention / 0.15)
        log_probs.append((r.actions * p.log() + (1 - r.actions) * (1 - p).log()).sum(1))
    l_r = -(torch.stack(rewards, 1) * torch.stack(log_probs, 1)).mean()
    v = torch.cat([r.attention for r in recs], 1)[correct]
    yc = batch.y[correct]
    l_p = prototype_loss(v, yc)
    expected = F.cross_entropy(z, batch.y) + 0.7 * l_r + 0.4 * l_p
    assert torch.allclose(got, expected, atol=1e-5)


def test_buffer_admits_only_correct_predictions_with_their_logits_and_attention():
    bench = image_bench()
    model, m = set_up(bench, warmup=0, memory_size=100)
    task = bench[0]
    m.before_task(task)
    model.train()
    with torch.no_grad():  # the network always predicts class 0 of task 0
        for head in model.heads:
            head.weight.zero_()
            head.bias.copy_(torch.arange(len(head.bias), 0, -1, dtype=torch.float) + 5.0)
    captured = []
    records = m.records

    def spy():
        out = records()
        captured.append(out)
        return out

    m.records = spy
    batch = _first_batch(m, task, bs=12)
    m.loss(batch, task)
    m.after_step(batch, task)
    stored = m.buffer.get_all()
    assert m.buffer.seen == 12  # the reservoir counter advances for every sample
    assert (batch.y == 0).sum() == len(stored["y"]) > 0  # only the correct ones are written
    assert (stored["y"] == 0).all()
    rows = torch.nonzero(batch.y == 0).squeeze(1)
    assert torch.equal(stored["x"], batch.x[rows])
    # logits over every head, as predicted in the training pass
    assert stored["logits"].shape == (len(rows), 4)
    assert torch.allclose(stored["logits"], model.heads[0].bias.new_tensor([7, 6, 7, 6.0]))
    attention = torch.cat([r.attention for r in captured[0]], 1)
    assert torch.allclose(stored["attention"], attention[rows])
    assert stored["attention"].shape == (len(rows), 4 * 8)


@pytest.mark.parametrize("separate", [True, False])
def test_memory_terms_use_one_memory_batch_with_attention_consistency(separate):
    bench = image_bench()
    model, m = set_up(bench, warmup=0, memory_size=100, separate_passes=separate)
    task = bench[0]
    m.before_task(task)
    model.train()
    g = torch.Generator().manual_seed(0)
    for batch in m.batches(task, 8, g):  # fill the buffer
        m.loss(batch, task).backward()
        m.after_step(batch, task)
    assert not m.buffer.is_empty
    batch = _first_batch(m, task, bs=8)
    # every memory term switched off but the attention consistency: its value is the MSE
    m.alpha = m.beta = m.w_p = m.gamma = 0.0
    m.alpha_p = 1.0
    state = m.buffer.generator.get_state()
    torch.manual_seed(5)
    total = m.loss(batch, task)
    m.buffer.generator.set_state(state)
    mem = m.buffer.sample(8)
    torch.manual_seed(5)
    if separate:  # the official code: stream and memory batches in separate passes
        z = model(batch.x, upto=1)
        model(mem["x"], upto=1)
        vm = torch.cat([r.attention for r in m.records()], 1)
    else:
        z = model(torch.cat([batch.x, mem["x"]]), upto=1)
        vm = torch.cat([r.attention for r in m.records()], 1)[8:]
    expected = F.cross_entropy(z[:8], batch.y) + F.mse_loss(vm, mem["attention"])
    assert torch.allclose(total, expected, atol=1e-5)


def test_warmup_bypasses_agents_and_buffer_then_never_returns():
    bench = image_bench(per_class=24)
    model, m = set_up(bench, warmup=3, memory_size=50)
    task = bench[0]
    m.before_task(task)
    model.train()
    opt = torch.optim.SGD(m.trainable_parameters(task), lr=0.05)
    agent_params = [p for b in m.blocks.values() for a in b.agents for p in a.parameters()]
    for step, batch in enumerate(m.batches(task, 8, torch.Generator().manual_seed(0))):
        assert m.in_warmup == (step < 3)
        loss = m.loss(batch, task)
        opt.zero_grad()
        loss.backward()
        if step < 3:
            # plain CE of the ungated network, no gradient to the agents, nothing stored
            assert all(b.records is None for b in m.blocks.values())
            assert all(p.grad is None for p in agent_params)
        else:
            assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in agent_params)
        opt.step()
        m.after_step(batch, task)
        assert m.buffer.seen == (0 if step < 3 else 8 * (step - 2))
    m.after_task(task)
    assert not m.in_warmup


def test_warmup_loss_is_the_plain_cross_entropy_of_the_ungated_network():
    bench = image_bench()
    model, m = set_up(bench, warmup=1)
    reference = tiny_model(bench)  # same seed: same backbone and heads, no agents
    task = bench[0]
    m.before_task(task)
    model.train()
    reference.train()
    batch = _first_batch(m, task)
    loss = m.loss(batch, task)
    assert torch.allclose(loss, F.cross_entropy(reference(batch.x, upto=1), batch.y))


def test_warmup_in_epochs():
    bench = image_bench()
    _, m = set_up(bench, warmup=1, warmup_unit="epochs")
    task = bench[0]
    m.before_task(task)
    g = torch.Generator().manual_seed(0)
    flags = []
    for epoch in range(2):
        m.before_epoch(task, epoch)  # counts the epochs of the warm-up
        for batch in m.batches(task, 8, g):
            flags.append(m.in_warmup)
            m.loss(batch, task)
            m.after_step(batch, task)
    assert flags == [True] * 3 + [False] * 3


def test_inference_is_deterministic_and_baseline_has_no_agents():
    bench = image_bench()
    model, m = set_up(bench)
    model.eval()
    x = bench[0].x_test
    assert torch.equal(m.predict(x, upto=2), m.predict(x, upto=2))
    base_model = tiny_model(bench)
    base = make_method("dynamos-base")
    base.setup(base_model, info(bench))
    assert not any(isinstance(mod, GatedBlock) for mod in base_model.modules())
    assert base.extra_metrics() == {}
    with pytest.raises(ValueError):
        make_method("dynamos-base", gamma=0.5)  # no agent hyperparameters


def test_setup_twice_does_not_gate_twice_and_bad_options_fail():
    bench = image_bench()
    model, m = set_up(bench)
    n = sum(p.numel() for p in model.parameters())
    m.setup(model, info(bench))
    assert sum(p.numel() for p in model.parameters()) == n
    assert m.agent_names == [
        "layer2.0.conv1",
        "layer2.0.conv2",
        "layer2.1.conv1",
        "layer2.1.conv2",
    ]
    for bad in ({"penalty": -1}, {"keep_ratio": 1.5}, {"inference": "x"}, {"warmup_unit": "s"}):
        with pytest.raises(ValueError):
            make_method("dynamos", **bad)


def test_a_gated_model_can_be_deep_copied_after_a_training_forward():
    bench = image_bench()
    model, m = set_up(bench)
    model.train()
    model(bench[0].x_train[:4])  # records with a graph stay on the blocks
    clone = copy.deepcopy(model)
    assert all(b.records is None for b in clone.modules() if isinstance(b, GatedBlock))
    assert any(b.records is not None for b in m.blocks.values())


@pytest.mark.parametrize("detach", [False, True])
def test_agent_losses_reach_the_backbone_unless_detached(detach):
    torch.manual_seed(0)
    backbone = ReducedResNet18((1, 8, 8), nf=4)
    blocks = gate_resnet(backbone, detach_input=detach)
    backbone.train()
    backbone(torch.randn(6, 1, 8, 8))
    v = torch.cat([r.attention for b in blocks.values() for r in b.records], 1)
    v.square().sum().backward()  # a loss of the attention vectors only
    stem = backbone.conv1.weight.grad
    assert (stem is None or stem.abs().sum() == 0) == detach
    assert all(p.grad is not None for b in blocks.values() for p in b.agent1.parameters())
