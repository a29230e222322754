"""Replay memories: reservoir sampling, herding, class-balanced exemplars, exact resume."""

import itertools

import pytest
import torch
import torch.nn.functional as F

from retain.core.buffers import ExemplarMemory, ReservoirBuffer, herding


def _stream(buf: ReservoirBuffer, n: int, batch: int, start: int = 0) -> None:
    for s in range(start, start + n, batch):
        ids = torch.arange(s, min(s + batch, start + n))
        buf.add(ids.float().unsqueeze(1), ids, torch.zeros_like(ids))


def _kept(buf: ReservoirBuffer) -> torch.Tensor:
    return buf.get_all()["y"]


def test_reservoir_keeps_each_seen_sample_with_probability_size_over_seen():
    """Over many seeded repetitions every item's inclusion frequency is size/seen, both while
    the stream goes on and at the end. Batches of 64 into 20 slots: items of one batch often
    aim at the same slot (the batched algorithm's hard case; see also the next test)."""
    size, first, total, reps, batch = 20, 100, 200, 1500, 64
    counts_mid = torch.zeros(first)
    counts_end = torch.zeros(total)
    for rep in range(reps):
        buf = ReservoirBuffer(size, seed=rep)
        _stream(buf, first, batch)
        counts_mid[_kept(buf)] += 1
        _stream(buf, total - first, batch, start=first)
        kept = _kept(buf)
        assert len(kept) == size and len(set(kept.tolist())) == size
        counts_end[kept] += 1
    for counts, seen in ((counts_mid, first), (counts_end, total)):
        p = size / seen
        freq = counts / reps
        sd = (p * (1 - p) / reps) ** 0.5
        # every item within 4.5 standard deviations, and no drift between early and late items
        assert (freq - p).abs().max() < 4.5 * sd, (freq - p).abs().max()
        half = seen // 2
        assert abs(freq[:half].mean() - freq[half:].mean()) < 3 * sd
    # a chi-square statistic over the items is close to its expectation (dof = total - 1)
    p = size / total
    chi2 = ((counts_end - reps * p) ** 2 / (reps * p * (1 - p))).sum()
    assert 0.7 * total < chi2 < 1.3 * total


def test_vectorised_reservoir_equals_one_item_at_a_time():
    """With the same random draws, a batched add gives exactly algorithm R applied item by item
    (several items of a batch may aim at one slot: the later one wins)."""
    size = 8
    buf = ReservoirBuffer(size, seed=4)
    ref = [None] * size
    g = torch.Generator().manual_seed(4)
    seen = 0
    for s in range(0, 300, 25):
        ids = torch.arange(s, s + 25)
        buf.add(ids.float().unsqueeze(1), ids, torch.zeros_like(ids))
        u = torch.rand(25, generator=g, dtype=torch.float64)
        for k, item in enumerate(ids.tolist()):
            if seen < size:
                ref[seen] = item
            else:
                j = int(u[k] * (seen + 1))
                if j < size:
                    ref[j] = item
            seen += 1
        assert buf.data["y"].tolist() == ref


def test_reservoir_fills_in_order_then_replaces():
    buf = ReservoirBuffer(10, seed=0)
    _stream(buf, 6, 4)
    assert buf.seen == 6 and len(buf) == 6
    assert sorted(_kept(buf).tolist()) == list(range(6))
    _stream(buf, 1000, 32, start=6)
    assert buf.seen == 1006 and len(buf) == 10
    assert _kept(buf).max() > 100  # later items did get in


def test_reservoir_stores_extras_and_samples_without_replacement():
    buf = ReservoirBuffer(50, seed=1)
    ids = torch.arange(30)
    logits = torch.randn(30, 4)
    slots = buf.add(ids.float().unsqueeze(1), ids, ids % 3, logits=logits)
    assert torch.equal(slots, ids)  # filling: item i goes to slot i
    s = buf.sample(20)
    assert len(s["y"]) == 20 and len(set(s["y"].tolist())) == 20
    assert torch.equal(s["logits"], logits[s["y"]])
    assert torch.equal(s["task_ids"], s["y"] % 3)
    assert len(buf.sample(1000)["y"]) == 30  # never more than stored
    with pytest.raises(ValueError):
        buf.add(ids.float().unsqueeze(1), ids, ids)  # logits missing


def test_reservoir_keep_mask_advances_counter_and_never_samples_empty_slots():
    buf = ReservoirBuffer(10, seed=0)
    ids = torch.arange(8)
    keep = ids % 2 == 0
    slots = buf.add(ids.float().unsqueeze(1), ids, torch.zeros_like(ids), keep=keep)
    assert buf.seen == 8 and len(buf) == 4
    assert (slots[~keep] == -1).all()
    for _ in range(20):
        assert set(buf.sample(10)["y"].tolist()) == {0, 2, 4, 6}


def test_reservoir_resume_is_exact():
    a = ReservoirBuffer(16, seed=3)
    _stream(a, 100, 10)
    b = ReservoirBuffer(16, seed=99)
    b.load_state_dict(a.state_dict())
    _stream(a, 50, 10, start=100)
    _stream(b, 50, 10, start=100)
    assert torch.equal(a.get_all()["y"], b.get_all()["y"])
    assert torch.equal(a.sample(8)["y"], b.sample(8)["y"])


def test_reservoir_seeds_from_torch_global_generator():
    def run():
        torch.manual_seed(7)
        buf = ReservoirBuffer(5)
        _stream(buf, 40, 8)
        return _kept(buf)

    assert torch.equal(run(), run())


def _class_features(n=300, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g) + 2.0 * torch.randn(d, generator=g)


def _gap(phi, idx):
    """Distance between the mean of the chosen normalised features and the class mean."""
    return (phi[idx].mean(0) - phi.mean(0)).norm().item()


def test_herding_mean_approaches_class_mean_better_than_random():
    feats = _class_features()
    phi = F.normalize(feats, dim=1)
    order = herding(feats, 60)
    assert len(set(order.tolist())) == 60
    gaps = [_gap(phi, order[:k]) for k in (1, 2, 5, 10, 20, 40, 60)]
    assert all(a > b for a, b in itertools.pairwise(gaps)), gaps
    g = torch.Generator().manual_seed(1)
    for k in (5, 10, 20, 40):
        rand = sum(_gap(phi, torch.randperm(len(phi), generator=g)[:k]) for _ in range(50)) / 50
        assert _gap(phi, order[:k]) < 0.5 * rand
    # step k minimises the gap over every remaining candidate (greedy herding)
    for k in (1, 4, 11):
        best = min(
            (_gap(phi, torch.cat([order[:k], torch.tensor([i])])), i)
            for i in range(len(phi))
            if i not in order[:k].tolist()
        )
        assert best[1] == int(order[k])


def test_exemplar_memory_fixed_total_shrinks_per_class_and_keeps_herding_prefix():
    feats = torch.cat([_class_features(seed=s) for s in range(4)])
    x = feats.clone()
    y = torch.arange(4).repeat_interleave(300)
    mem = ExemplarMemory(40, per_group=False, seed=0)
    mem.add(x[:600], y[:600] % 2, torch.zeros(600, dtype=torch.long), y[:600], feats[:600])
    assert len(mem) == 40 and mem.groups == [0, 1]
    first = mem.get_all()
    c0 = first["x"][first["group"] == 0]
    assert torch.equal(c0, x[herding(feats[:300], 20)])
    mem.add(x[600:], y[600:] % 2, torch.ones(600, dtype=torch.long), y[600:], feats[600:])
    data = mem.get_all()
    assert len(mem) == 40 and mem.groups == [0, 1, 2, 3]
    assert torch.bincount(data["group"]).tolist() == [10, 10, 10, 10]
    # reduction keeps the first m of each class in herding order
    assert torch.equal(data["x"][data["group"] == 0], c0[:10])
    assert set(data["task_ids"][data["group"] >= 2].tolist()) == {1}


def test_exemplar_memory_per_class_and_random_selection():
    x = torch.randn(400, 3)
    y = torch.arange(4).repeat_interleave(100)
    mem = ExemplarMemory(7, per_group=True, seed=0)
    picked = mem.add(x[:200], y[:200], torch.zeros(200, dtype=torch.long), y[:200], None, "random")
    assert len(picked) == 14 and torch.equal(mem.get_all()["x"], x[picked])
    mem.add(x[200:], y[200:], torch.ones(200, dtype=torch.long), y[200:], None, "random")
    assert torch.bincount(mem.get_all()["group"]).tolist() == [7, 7, 7, 7]
    with pytest.raises(ValueError):
        mem.add(x, y, y, y + 10, None, "herding")  # herding needs features


def test_exemplar_memory_reserves_room_for_n_groups_and_resumes():
    x = torch.randn(200, 3)
    y = torch.arange(2).repeat_interleave(100)
    mem = ExemplarMemory(40, seed=5)
    mem.add(x, y, torch.zeros_like(y), y, None, "random", n_groups=4)
    assert len(mem) == 20
    other = ExemplarMemory(40, seed=0)
    other.load_state_dict(mem.state_dict())
    assert torch.equal(mem.sample(5)["x"], other.sample(5)["x"])
