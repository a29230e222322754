"""Replay memories, held as tensors.

Two memories and the selection rules they use:

* :class:`ReservoirBuffer` -- a fixed number of slots filled from a stream by reservoir
  sampling (Vitter 1985, "Random sampling with a reservoir", algorithm R): the ``i``-th stream
  item (1-based) goes to slot ``i`` while the buffer is filling, afterwards it replaces slot
  ``j ~ U{1..i}`` if ``j <= size``. Every item seen so far is then kept with probability
  ``size / seen``. Used online by ER, DER/DER++ (which store the logits as an extra tensor)
  and Dynamos (which writes only some items: ``keep``).
* :class:`ExemplarMemory` -- exemplars per group (a class for iCaRL/BiC/LUCIR/A-GEM), chosen
  when a group arrives by :func:`herding` (Rebuffi et al. 2017, iCaRL Algorithm 4) or at
  random. The memory is class-balanced: either a fixed total (``memory_size`` shared by all
  groups seen so far, so each group's share shrinks as groups arrive; iCaRL's
  ReduceExemplarSet keeps the first ``m`` of each group's selection order) or a fixed number
  per group (``per_group=True``).

Both hold their storage as preallocated tensors, insert and sample with whole-tensor operations,
and draw random numbers from their own ``torch.Generator``, whose state is part of
:meth:`state_dict` (so a resumed run continues exactly). The generator is seeded lazily, on
first use, from torch's global generator unless ``seed`` is given, so seeding torch (as
:func:`retain.fit` does) fixes every draw.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class _Seeded:
    """A lazily seeded ``torch.Generator`` shared by the buffers' sampling code."""

    def __init__(self, seed: int | None) -> None:
        self._seed = seed
        self._generator = torch.Generator()
        self._seeded = False

    @property
    def generator(self) -> torch.Generator:
        """The buffer's generator (seeded on first access). Methods may draw from it too."""
        if not self._seeded:
            seed = self._seed
            if seed is None:  # from the global generator: torch.manual_seed fixes it
                seed = int(torch.randint(0, 2**62, (), dtype=torch.long))
            self._generator.manual_seed(seed)
            self._seeded = True
        return self._generator

    def _generator_state(self) -> dict[str, Any]:
        return {
            "seeded": self._seeded,
            "generator": self._generator.get_state() if self._seeded else None,
        }

    def _load_generator_state(self, state: dict[str, Any]) -> None:
        self._seeded = bool(state["seeded"])
        if self._seeded:
            self._generator.set_state(state["generator"])


def _gather(data: dict[str, Tensor], index: Tensor) -> dict[str, Tensor]:
    return {k: v[index] for k, v in data.items()}


class ReservoirBuffer(_Seeded):
    """A reservoir-sampled replay buffer of ``size`` slots.

    Stores inputs ``x``, local labels ``y``, task ids and any extra per-sample tensors given to
    :meth:`add` (e.g. ``logits=...``). Storage is allocated on the first :meth:`add` from the
    shapes and dtypes given there.

    Args:
        size: number of slots.
        seed: seed of the buffer's generator; ``None`` draws one from torch's global generator
            on first use.
    """

    def __init__(self, size: int, seed: int | None = None) -> None:
        if size < 1:
            raise ValueError(f"buffer size must be at least 1, got {size}")
        super().__init__(seed)
        self.size = int(size)
        #: number of stream items offered to :meth:`add` so far (kept or not)
        self.seen = 0
        self.data: dict[str, Tensor] = {}
        #: slots that hold a sample (a slot can stay empty when ``keep`` refused its item)
        self.valid = torch.zeros(self.size, dtype=torch.bool)

    def __len__(self) -> int:
        return int(self.valid.sum())

    @property
    def is_empty(self) -> bool:
        return not bool(self.valid.any())

    def _allocate(self, tensors: dict[str, Tensor]) -> None:
        self.data = {
            k: torch.zeros((self.size, *v.shape[1:]), dtype=v.dtype) for k, v in tensors.items()
        }

    def add(
        self,
        x: Tensor,
        y: Tensor,
        task_ids: Tensor,
        keep: Tensor | None = None,
        **extras: Tensor,
    ) -> Tensor:
        """Offer a batch of stream items, in order; returns the slot each item was written to
        (``-1``: not stored, or stored and replaced by a later item of the same batch).

        Vectorised algorithm R: every item draws its slot independently; when two items of the
        batch draw the same slot the later one wins, exactly as if they arrived one at a time.
        ``keep`` (bool per item) writes only some items while the counter advances for all
        (Dynamos keeps only correctly classified samples); refused items leave their slot as
        it was, and empty slots are never sampled.
        """
        tensors = {"x": x, "y": y, "task_ids": task_ids, **extras}
        n = len(y)
        if any(len(v) != n for v in tensors.values()):
            raise ValueError("all tensors given to add() must have the same length")
        if not self.data:
            self._allocate(tensors)
        elif set(tensors) != set(self.data):
            raise ValueError(f"add() needs exactly the fields {sorted(self.data)}")
        pos = torch.arange(self.seen, self.seen + n)  # 0-based stream positions
        u = torch.rand(n, generator=self.generator, dtype=torch.float64)
        j = (u * (pos + 1).to(torch.float64)).long()  # uniform on 0..pos
        slot = torch.where(pos < self.size, pos, torch.where(j < self.size, j, -1))
        if keep is not None:
            slot = torch.where(keep.to(torch.bool), slot, -1)
        self.seen += n
        items = torch.nonzero(slot >= 0).squeeze(1)
        if len(items) == 0:
            return slot
        targets = slot[items]
        # last write wins: the latest item aimed at each slot
        last = torch.full((self.size,), -1, dtype=torch.long)
        last.scatter_reduce_(0, targets, items, reduce="amax")
        winners = items[last[targets] == items]
        out = torch.full_like(slot, -1)
        out[winners] = slot[winners]
        dest = slot[winners]
        for k, v in tensors.items():
            self.data[k][dest] = v[winners].detach().to(self.data[k].dtype)
        self.valid[dest] = True
        return out

    def sample(self, n: int) -> dict[str, Tensor]:
        """Up to ``n`` distinct stored samples, uniformly without replacement; a dict of the
        stored fields plus ``"index"`` (their slots)."""
        filled = torch.nonzero(self.valid).squeeze(1)
        pick = filled[torch.randperm(len(filled), generator=self.generator)[:n]]
        return {**_gather(self.data, pick), "index": pick}

    def get_all(self) -> dict[str, Tensor]:
        """Every stored sample, in slot order."""
        filled = torch.nonzero(self.valid).squeeze(1)
        return {**_gather(self.data, filled), "index": filled}

    def update(self, index: Tensor, **tensors: Tensor) -> None:
        """Overwrite fields (e.g. refreshed logits) of the samples in slots ``index``."""
        for k, v in tensors.items():
            self.data[k][index] = v.detach().to(self.data[k].dtype)

    def state_dict(self) -> dict[str, Any]:
        return {
            "size": self.size,
            "seen": self.seen,
            "data": dict(self.data),
            "valid": self.valid.clone(),
            **self._generator_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["size"] != self.size:
            raise ValueError(f"buffer of size {self.size} cannot load a state of {state['size']}")
        self.seen = int(state["seen"])
        self.data = {k: v.clone() for k, v in state["data"].items()}
        self.valid = state["valid"].clone()
        self._load_generator_state(state)


# ---------------------------------------------------------------------------- exemplar memory
def herding(features: Tensor, m: int) -> Tensor:
    """Indices of ``m`` exemplars chosen by herding, in selection order (iCaRL Algorithm 4).

    Features are L2-normalised and ``mu`` is their mean. Step ``k`` picks the not yet chosen
    sample ``p`` minimising ``|| mu - (phi(p) + sum_{j<k} phi(p_j)) / k ||``, so the mean of the
    first ``k`` exemplars approaches the class mean greedily. Expanding the square, only the
    inner products ``<phi(x), mu>`` (computed once) and ``<phi(x), sum_j phi(p_j)>`` (updated
    with one matrix-vector product per step) are needed. ``m`` larger than the number of
    samples returns all of them.
    """
    if features.ndim != 2:
        raise ValueError(f"herding needs [n, d] features, got shape {tuple(features.shape)}")
    phi = F.normalize(features.detach().float(), dim=1)
    n = len(phi)
    m = min(int(m), n)
    mu = phi.double().mean(0)
    s_mu = (phi.double() @ mu).float()  # <phi(x), mu>
    s_acc = torch.zeros(n)  # <phi(x), sum of the chosen>
    sq = (phi * phi).sum(1)  # 1, or 0 for an all-zero feature
    penalty = torch.zeros(n)  # +inf once chosen
    phi_t = phi.t().contiguous()  # [d, n]: a vector-matrix product reads it fastest
    chosen = torch.empty(m, dtype=torch.long)
    for k in range(1, m + 1):
        # || mu - (acc + phi)/k ||^2 = const - (2/k) <mu - acc/k, phi> + |phi|^2 / k^2
        dist = sq / (k * k) - (2.0 / k) * (s_mu - s_acc / k) + penalty
        i = int(torch.argmin(dist))
        chosen[k - 1] = i
        penalty[i] = float("inf")
        s_acc += phi[i] @ phi_t
    return chosen


SELECTIONS = ("herding", "random")


class ExemplarMemory(_Seeded):
    """Class-balanced exemplars: the same number of samples for every group seen so far.

    A group is usually a global class (``task.class_offset + local label``). Samples are stored
    with their local label, task id, group and rank (position in the group's selection order).

    Args:
        memory_size: total number of exemplars shared by every group seen so far
            (``per_group=False``; each group keeps ``memory_size // n_groups``), or the number
            kept per group (``per_group=True``).
        per_group: see ``memory_size``.
        seed: seed of the generator used by random selection (``None``: drawn from torch's
            global generator on first use).
    """

    def __init__(self, memory_size: int, per_group: bool = False, seed: int | None = None):
        if memory_size < 1:
            raise ValueError(f"memory_size must be at least 1, got {memory_size}")
        super().__init__(seed)
        self.memory_size = int(memory_size)
        self.per_group = bool(per_group)
        self.data: dict[str, Tensor] = {}

    def __len__(self) -> int:
        return len(self.data["y"]) if self.data else 0

    @property
    def is_empty(self) -> bool:
        return len(self) == 0

    @property
    def groups(self) -> list[int]:
        """Groups present, sorted."""
        if not self.data:
            return []
        return [int(g) for g in torch.unique(self.data["group"])]

    def quota(self, n_groups: int) -> int:
        """Exemplars per group when ``n_groups`` groups share the memory."""
        if self.per_group:
            return self.memory_size
        return self.memory_size // max(n_groups, 1)

    def reduce(self, m: int) -> None:
        """Keep the first ``m`` exemplars (in selection order) of every group."""
        if self.data:
            self.data = _gather(self.data, self.data["rank"] < m)

    def add(
        self,
        x: Tensor,
        y: Tensor,
        task_ids: Tensor,
        groups: Tensor,
        features: Tensor | None = None,
        selection: str = "herding",
        n_groups: int | None = None,
    ) -> Tensor:
        """Make room and add exemplars of the groups in ``groups`` not yet in memory; returns
        the indices (into ``x``) of the samples added.

        Existing groups are reduced to the new quota, then each new group gets ``quota``
        exemplars chosen among its samples by herding on ``features`` (required for
        ``selection="herding"``) or uniformly at random.

        Args:
            n_groups: groups sharing the memory after this call (default: the groups present
                plus the new ones); pass it to reserve room for groups added later.
        """
        if selection not in SELECTIONS:
            raise ValueError(f"selection must be one of {', '.join(SELECTIONS)}, not {selection!r}")
        if selection == "herding" and features is None:
            raise ValueError("herding needs features")
        present = set(self.groups)
        new = [int(g) for g in torch.unique(groups) if int(g) not in present]
        total = len(present) + len(new) if n_groups is None else n_groups
        m = self.quota(total)
        self.reduce(m)
        parts = [self.data] if self.data else []
        picked = [torch.empty(0, dtype=torch.long)]
        for g in new:
            idx = torch.nonzero(groups == g).squeeze(1)
            if selection == "herding":
                assert features is not None
                order = herding(features[idx], m)
            else:
                order = torch.randperm(len(idx), generator=self.generator)[:m]
            pick = idx[order]
            picked.append(pick)
            parts.append(
                {
                    "x": x[pick].detach().clone(),
                    "y": y[pick].clone(),
                    "task_ids": task_ids[pick].clone(),
                    "group": groups[pick].clone(),
                    "rank": torch.arange(len(pick)),
                }
            )
        if parts:
            self.data = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
        return torch.cat(picked)

    def get_all(self) -> dict[str, Tensor]:
        """Every exemplar (fields ``x``, ``y``, ``task_ids``, ``group``, ``rank``)."""
        return dict(self.data)

    def sample(self, n: int) -> dict[str, Tensor]:
        """Up to ``n`` distinct exemplars, uniformly without replacement."""
        pick = torch.randperm(len(self), generator=self.generator)[:n]
        return _gather(self.data, pick)

    def state_dict(self) -> dict[str, Any]:
        return {
            "memory_size": self.memory_size,
            "per_group": self.per_group,
            "data": dict(self.data),
            **self._generator_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.data = {k: v.clone() for k, v in state["data"].items()}
        self._load_generator_state(state)


# ---------------------------------------------------------------------------- helpers
@torch.inference_mode()
def embed(model: nn.Module, x: Tensor, batch_size: int = 1000) -> Tensor:
    """``model.features`` of ``x`` in eval mode and large batches (the mode is restored)."""
    was_training = model.training
    model.eval()
    try:
        out = [model.features(x[i : i + batch_size]) for i in range(0, len(x), batch_size)]
    finally:
        model.train(was_training)
    return torch.cat(out) if out else torch.empty(0)


# ---------------------------------------------------------------------------- class-balanced slots
def balanced_quotas(capacity: Tensor, total: int, priority: Tensor) -> Tensor:
    """Slots per group when ``total`` slots are shared as evenly as possible (water-filling).

    ``capacity[k]`` is the most group ``k`` can fill. Every group gets ``min(capacity, L)`` for
    the largest level ``L`` that fits, and the slots left over go, one each, to the groups
    that could take more, in the order ``priority`` (indices into ``capacity``). Groups not
    limited by their capacity then differ by at most one."""
    cap = capacity.long()
    if len(cap) == 0 or total <= 0:
        return torch.zeros_like(cap)
    lo, hi = 0, int(cap.max())
    while lo < hi:  # largest L with sum(min(cap, L)) <= total
        mid = (lo + hi + 1) // 2
        if int(cap.clamp(max=mid).sum()) <= total:
            lo = mid
        else:
            hi = mid - 1
    quota = cap.clamp(max=lo)
    spare = total - int(quota.sum())
    if spare > 0:
        room = priority[cap[priority] > lo][:spare]
        quota[room] += 1
    return quota


class ClassBalancedBuffer(ReservoirBuffer):
    """Slots shared evenly by the groups (classes) seen so far, refilled once per task.

    The storage, :meth:`sample` and :meth:`update` are those of :class:`ReservoirBuffer`
    (same slots, same draws). Instead of admitting a stream item by item, :meth:`rebalance`
    is called with the labels of a whole task: every group present gives up samples to the
    new shares (it keeps its first ones in slot order), each new group gets a uniformly random
    subset of its candidates, and the caller writes the chosen candidates with :meth:`write`.
    Shares come from :func:`balanced_quotas`, so groups with enough samples differ by at most
    one slot; new groups take the odd slots first (in a random order), then the groups
    present by id (X-DER's class-balanced buffer, Boschini et al. 2022).

    Args:
        size: number of slots.
        seed: seed of the buffer's generator; ``None`` draws one from torch's global generator
            on first use.
    """

    def __init__(self, size: int, seed: int | None = None) -> None:
        super().__init__(size, seed)
        #: group of the sample in every slot (-1: empty)
        self.group = torch.full((self.size,), -1, dtype=torch.long)

    def counts(self) -> dict[int, int]:
        """Stored samples per group."""
        g, c = torch.unique(self.group[self.valid], return_counts=True)
        return {int(a): int(b) for a, b in zip(g, c)}

    def rebalance(self, groups: Tensor) -> tuple[Tensor, Tensor]:
        """Shrink the groups present to their new shares and choose the candidates of the new
        groups in ``groups`` (one group per candidate); returns ``(chosen, slots)``: indices
        into ``groups`` and the free slots they are to be written to (with :meth:`write`).
        Candidates of a group already present are ignored."""
        groups = groups.long()
        present = self.counts()
        new = [int(g) for g in torch.unique(groups) if int(g) not in present]
        order = torch.randperm(len(new), generator=self.generator)
        names = [new[i] for i in order] + sorted(present)
        cap = torch.tensor(
            [int((groups == g).sum()) for g in names[: len(new)]]
            + [present[g] for g in sorted(present)],
            dtype=torch.long,
        )
        quota = balanced_quotas(cap, self.size, torch.arange(len(names)))
        for g, q in zip(names[len(new) :], quota[len(new) :].tolist()):
            slots = torch.nonzero(self.valid & (self.group == g)).squeeze(1)
            drop = slots[int(q) :]
            self.valid[drop] = False
            self.group[drop] = -1
        chosen = []
        for g, q in zip(names[: len(new)], quota[: len(new)].tolist()):
            idx = torch.nonzero(groups == g).squeeze(1)
            chosen.append(idx[torch.randperm(len(idx), generator=self.generator)[: int(q)]])
        pick = torch.cat(chosen) if chosen else torch.empty(0, dtype=torch.long)
        free = torch.nonzero(~self.valid).squeeze(1)[: len(pick)]
        self.group[free] = groups[pick]
        return pick, free

    def write(self, slots: Tensor, **tensors: Tensor) -> None:
        """Store samples (every field, as in :meth:`ReservoirBuffer.add`) in ``slots``, the
        slots :meth:`rebalance` returned."""
        if not self.data:
            self._allocate(tensors)
        elif set(tensors) != set(self.data):
            raise ValueError(f"write() needs exactly the fields {sorted(self.data)}")
        for k, v in tensors.items():
            self.data[k][slots] = v.detach().to(self.data[k].dtype)
        self.valid[slots] = True
        self.seen += len(slots)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "group": self.group.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.group = state["group"].clone()
