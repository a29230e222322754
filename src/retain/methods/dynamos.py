"""Dynamos: dynamically modular and sparse general continual learning (Varma et al. 2023)."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from retain.core.distill import logit_mse
from retain.data.benchmark import Task
from retain.methods._replay import ReplayMethod
from retain.methods.base import Batch, BenchmarkInfo, register
from retain.models.continual import ContinualModel
from retain.models.gating import (
    INFERENCE_MODES,
    GatedBlock,
    GateRecord,
    collect_records,
    gate_resnet,
)

WARMUP_UNITS = ("iterations", "epochs")


# ---------------------------------------------------------------------------- the losses
def keep_reward(keep_ratios: Tensor, correct: Tensor, keep_ratio: float, penalty: float) -> Tensor:
    """Eq. 3: ``R_l = -(kr - kept_l)^2`` when the prediction is correct, else
    ``-lambda (kr - kept_l)^2``.

    Args:
        keep_ratios: ``[N, L]`` fraction of channels each agent kept, ``(1/c_l) sum_i a_{l,i}``.
        correct: ``[N]`` bool, whether the network's prediction was right.
        keep_ratio: the target ``kr``.
        penalty: ``lambda`` (positive; the official code passes ``-lambda`` and multiplies
            the already negative reward by its negation, the same value).
    """
    err = (keep_ratio - keep_ratios).square()
    return torch.where(correct.unsqueeze(1), -err, -penalty * err)


def reinforce_loss(log_probs: Tensor, rewards: Tensor) -> Tensor:
    """Eq. 4 as a loss to minimise: ``-mean_{n,l} R_l(x_n) log pi_l(a_{n,l})`` (REINFORCE,
    Williams 1992; no baseline, as the official code). Its gradient step raises the
    log-probability of actions with positive reward and lowers it for negative reward
    (with Eq. 3's rewards, all <= 0: the further from ``kr``, the more).

    Args:
        log_probs: ``[N, L]`` log-probabilities of the sampled actions of each agent.
        rewards: ``[N, L]`` (treated as constants).
    """
    return -(rewards.detach() * log_probs).mean()


def prototype_loss(attention: Tensor, labels: Tensor, min_samples: int = 3) -> Tensor:
    """Eq. 5: ``(1 + sum_{same class} MSE(V_i, V_j)) / (1 + sum_{different} MSE(V_i, V_j))``
    over the unordered pairs ``i < j`` of ``attention`` ``[N, D]`` (concatenated ``v_l`` of all
    agents); MSE is the squared distance divided by ``D``. Zero when fewer than
    ``min_samples`` rows are given (the official code skips 2 or fewer).

    Callers pass the correctly predicted samples only (Sec. 3.1)."""
    n = len(attention)
    if n < max(min_samples, 2):
        return attention.sum() * 0.0
    i, j = torch.triu_indices(n, n, offset=1, device=attention.device)
    mse = (attention[i] - attention[j]).square().mean(1)
    same = labels[i] == labels[j]
    return (1 + mse[same].sum()) / (1 + mse[~same].sum())


def js_divergence(rates: Tensor, eps: float = 1e-12) -> Tensor:
    """Jensen-Shannon divergence (base 2, in [0, 1]) between every pair of rows of ``rates``
    ``[G, F]``, each row normalised to a distribution over the filters (Sec. 6.1, Fig. 4,
    after Abbasi et al. 2022). Returns ``[G, G]``."""
    p = rates.to(torch.float64).clamp_min(0)
    p = p / p.sum(1, keepdim=True).clamp_min(eps)
    a, b = p.unsqueeze(1), p.unsqueeze(0)
    m = (a + b) / 2

    def kl(x: Tensor, y: Tensor) -> Tensor:
        return torch.where(x > 0, x * (x.clamp_min(eps) / y.clamp_min(eps)).log2(), 0.0).sum(-1)

    return (kl(a, m) + kl(b, m)) / 2


@register
class Dynamos(ReplayMethod):
    """Dynamos (Varma, Arani, Zonooz, VISAPP 2023): replay with agents that drop channels.

    Varma, Arani & Zonooz, "Dynamically Modular and Sparse General Continual Learning",
    VISAPP 2023. On every convolution of the gated stages an agent
    (:mod:`retain.models.gating`) computes a channel-wise attention vector ``v_l`` from the
    layer's input; the keep/drop actions ``a_l ~ Bernoulli(sigmoid(v_l / tau))`` (Eq. 1;
    ``sigmoid(v_l / tau) > 0.5`` at inference) multiply the convolution's output after BN,
    before the ReLU. For a stream batch ``B`` and one memory batch ``M`` (Eq. 7)::

        L = CE(B) + gamma L_R(B) + beta [CE(M) + gamma L_R(M)]
            + alpha ||Z'_M - Z_M||^2 + alpha_p ||V'_M - V_M||^2 + w_p [L_P(B) + L_P(M)]

    with ``L_R = -mean_{n,l} R_l log pi_l(a_l)`` (Eq. 4, REINFORCE, no baseline), the reward
    ``R_l = -(kr - kept_l)^2`` if the prediction is right, ``-lambda (kr - kept_l)^2``
    otherwise (Eq. 3), the prototype loss ``L_P`` on the correctly predicted samples (Eq. 5)
    and the consistency MSEs to the logits ``Z_M`` and attention vectors ``V_M`` stored with
    the sample (Eq. 6). The reservoir buffer stores only correctly predicted samples; for the
    first ``warmup`` steps (or epochs) agents are bypassed and the buffer is unused (Sec. 3.2).
    Defaults: Table 5, seq-MNIST, buffer 500 (SGD, lr 0.07, batch 10, 1 epoch).

    Args:
        memory_size: buffer slots.
        alpha: weight of the logit consistency (Eq. 6).
        alpha_p: weight of the attention-vector consistency (Eq. 6).
        beta: weight of the memory cross-entropy and reward losses.
        gamma: weight of the reward (REINFORCE) losses.
        w_p: weight of the prototype losses.
        keep_ratio: target fraction ``kr`` of channels each agent keeps.
        penalty: ``lambda`` > 0, multiplies the squared error of wrong predictions (the official
            code's ``--policy_penalty -500`` is ``penalty=500`` here).
        tau: temperature of the agents' probability layer.
        reduction: agents' MLP hidden width is ``C / reduction``.
        threshold: inference keep threshold on the probability.
        inference: ``"threshold"`` (default) or ``"sample"`` (Bernoulli at inference too,
            Sec. 6.2's trial-to-trial variability).
        gate_shortcut: gate the residual shortcut with the second agent's actions (official
            code: yes).
        detach_agent_input: agents see detached inputs, so the REINFORCE, prototype and
            attention losses train the agents only (default ``False``: they reach the backbone,
            as in the official code).
        gated_stages: 1-based ResNet stages whose blocks get agents (default: the last, the
            second block of Dynamos' reduced ResNet-18: 4 agents).
        warmup: length of the warm-up (0: none).
        warmup_unit: ``"iterations"`` (optimiser steps; Table 5's 1-epoch settings) or
            ``"epochs"`` (SVHN).
        minibatch_size: memory samples per step (default: the stream batch's size).
        separate_passes: forward the stream and memory batches separately (default, official
            code) or as one concatenated batch.
        loss_heads: ``"seen"`` (default: one growing head, class-incremental) or ``"task"``.

    Deviations and choices: docs/methods/dynamos.md
    """

    name = "dynamos"
    #: whether the method has agents (the Eq. 8 baseline has none)
    use_agents = True

    def __init__(
        self,
        memory_size: int = 500,
        alpha: float = 0.2,
        alpha_p: float = 0.2,
        beta: float = 2.0,
        gamma: float = 0.5,
        w_p: float = 0.3,
        keep_ratio: float = 0.7,
        penalty: float = 500.0,
        tau: float = 0.15,
        reduction: int = 16,
        threshold: float = 0.5,
        inference: str = "threshold",
        gate_shortcut: bool = True,
        detach_agent_input: bool = False,
        gated_stages: Sequence[int] | None = None,
        warmup: int = 10,
        warmup_unit: str = "iterations",
        minibatch_size: int | None = None,
        separate_passes: bool = True,
        loss_heads: str = "seen",
    ) -> None:
        super().__init__(memory_size, minibatch_size, loss_heads)
        for key, value in (
            ("alpha", alpha),
            ("alpha_p", alpha_p),
            ("beta", beta),
            ("gamma", gamma),
            ("w_p", w_p),
            ("penalty", penalty),
            ("warmup", warmup),
        ):
            if value < 0:
                raise ValueError(f"{key} must be >= 0, got {value}")
        if not 0.0 <= keep_ratio <= 1.0:
            raise ValueError(f"keep_ratio must be in [0, 1], got {keep_ratio}")
        if inference not in INFERENCE_MODES:
            raise ValueError(
                f"inference must be one of {', '.join(INFERENCE_MODES)}, got {inference!r}"
            )
        if warmup_unit not in WARMUP_UNITS:
            raise ValueError(
                f"warmup_unit must be one of {', '.join(WARMUP_UNITS)}, got {warmup_unit!r}"
            )
        self.alpha, self.alpha_p, self.beta = float(alpha), float(alpha_p), float(beta)
        self.gamma, self.w_p = float(gamma), float(w_p)
        self.keep_ratio, self.penalty = float(keep_ratio), float(penalty)
        self.gate_options = {
            "tau": float(tau),
            "reduction": int(reduction),
            "threshold": float(threshold),
            "inference": inference,
            "gate_shortcut": bool(gate_shortcut),
            "detach_input": bool(detach_agent_input),
        }
        self.gated_stages = None if gated_stages is None else [int(s) for s in gated_stages]
        self.warmup, self.warmup_unit = int(warmup), warmup_unit
        self.separate_passes = bool(separate_passes)
        self.blocks: dict[str, GatedBlock] = {}
        self._steps = 0  # optimiser steps since the start of training
        self._epochs = 0  # epochs started since the start of training
        self._warm_done = self.warmup == 0
        # analysis: per-filter action sums by global class (training) and by task (evaluation)
        self._train_sum: Tensor | None = None
        self._train_count: Tensor | None = None
        self._eval_sum: dict[int, Tensor] = {}
        self._eval_count: dict[int, int] = {}

    # ------------------------------------------------------------------ setup
    def setup(self, model: ContinualModel, info: BenchmarkInfo) -> None:
        super().setup(model, info)
        if self.use_agents:
            self.blocks = gate_resnet(model.backbone, self.gated_stages, **self.gate_options)

    @property
    def agent_names(self) -> list[str]:
        """``layer2.0.conv1, layer2.0.conv2, ...``: one per agent, in forward order."""
        return [f"{name}.conv{k}" for name in self.blocks for k in (1, 2)]

    @property
    def n_filters(self) -> list[int]:
        """Channels (actions) of each agent, in forward order."""
        return [a.conv.out_channels for b in self.blocks.values() for a in b.agents]

    @contextlib.contextmanager
    def gating(self, enabled: bool) -> Iterator[None]:
        """Within the block, the agents are used (``True``) or bypassed (``False``)."""
        before = [b.enabled for b in self.blocks.values()]
        for b in self.blocks.values():
            b.enabled = enabled
        try:
            yield
        finally:
            for b, e in zip(self.blocks.values(), before):
                b.enabled = e

    def records(self) -> list[GateRecord]:
        """The agents' records of the last forward pass (see :func:`collect_records`)."""
        return collect_records(self.blocks.values())

    # ------------------------------------------------------------------ training
    @property
    def in_warmup(self) -> bool:
        """Whether the next step is a warm-up step (no agents, no buffer)."""
        if self._warm_done:
            return False
        done = self._steps if self.warmup_unit == "iterations" else self._epochs - 1
        if done >= self.warmup:
            self._warm_done = True
        return not self._warm_done

    def before_epoch(self, task: Task, epoch: int) -> None:
        self._epochs += 1

    def before_task(self, task: Task) -> None:
        super().before_task(task)
        self._train_sum = self._train_count = None

    def after_task(self, task: Task) -> None:
        self._warm_done = True  # warm-up only ever happens at the start of the first task
        self._eval_sum, self._eval_count = {}, {}

    def _targets_and_correct(self, z_seen: Tensor, batch: Batch) -> tuple[Tensor, Tensor]:
        """Labels in the output space of ``z_seen`` and whether each prediction is right."""
        assert self.model is not None
        if self.model.shared_head:
            return batch.y, z_seen.argmax(1) == batch.y
        target = self.model.global_labels(batch.y, batch.task_ids)
        if self.loss_heads == "task":
            own = self.model.own_task_mask(batch.task_ids, self.current_task + 1)
            z_seen = z_seen.masked_fill(~own, float("-inf"))
        return target, z_seen.argmax(1) == target

    def _agent_losses(
        self, recs: list[GateRecord], sl: slice, correct: Tensor, labels: Tensor
    ) -> tuple[Tensor, Tensor]:
        """(L_R, L_P) of rows ``sl`` (Eq. 4 and Eq. 5)."""
        kept = torch.stack([r.keep_ratio[sl] for r in recs], 1)
        log_probs = torch.stack([r.log_prob[sl] for r in recs], 1)
        rewards = keep_reward(kept, correct, self.keep_ratio, self.penalty)
        attention = torch.cat([r.attention[sl] for r in recs], 1)
        proto = prototype_loss(attention[correct], labels[correct])
        return reinforce_loss(log_probs, rewards), proto

    def _forward(self, x: Tensor, x_mem: Tensor | None) -> tuple[Tensor, list[GateRecord]]:
        """Logits of every head and the agents' records for the stream rows, then the memory
        rows: one concatenated pass, or two (``separate_passes``, the official code's)."""
        assert self.model is not None
        if x_mem is None or not self.separate_passes:
            full = self.model(x if x_mem is None else torch.cat([x, x_mem]))
            return full, self.records()
        z, recs = self.model(x), self.records()
        zm, recs_m = self.model(x_mem), self.records()
        merged = [
            GateRecord(
                torch.cat([a.attention, b.attention]), torch.cat([a.actions, b.actions]), a.tau
            )
            for a, b in zip(recs, recs_m)
        ]
        return torch.cat([z, zm]), merged

    def loss(self, batch: Batch, task: Task) -> Tensor:
        """Eq. 7 (Eq. 8 for the baseline); plain cross-entropy during the warm-up."""
        assert self.model is not None
        model = self.model
        n = len(batch)
        warm = self.in_warmup
        mem = None
        if not warm and not self.buffer.is_empty:
            mem = self.buffer.sample(self.memory_batch_size(batch))
        with self.gating(not warm):
            full, recs = self._forward(batch.x, None if mem is None else mem["x"])
        seen = sum(model.classes_per_task[: self.current_task + 1])
        z_seen = full if model.shared_head else full[:, :seen]
        target, correct = self._targets_and_correct(z_seen[:n], batch)
        loss = self.cross_entropy(z_seen[:n], batch, task)
        if recs:
            l_r, l_p = self._agent_losses(recs, slice(0, n), correct, target)
            loss = loss + self.gamma * l_r + self.w_p * l_p
        if mem is not None:
            m = len(mem["y"])
            rows = slice(n, n + m)
            replay = Batch(mem["x"], mem["y"], mem["task_ids"])
            zm = z_seen[rows]
            loss = loss + self.beta * self.cross_entropy(zm, replay, task)
            mask = None
            if self.loss_heads == "task" and not model.shared_head:
                mask = model.own_task_mask(mem["task_ids"], model.n_tasks)
            loss = loss + self.alpha * logit_mse(full[rows], mem["logits"], mask)
            if recs:
                target_m, correct_m = self._targets_and_correct(zm, replay)
                l_r, l_p = self._agent_losses(recs, rows, correct_m, target_m)
                attention = torch.cat([r.attention[rows] for r in recs], 1)
                loss = (
                    loss
                    + self.beta * self.gamma * l_r
                    + self.w_p * l_p
                    + self.alpha_p * logit_mse(attention, mem["attention"])
                )
        if recs:
            self._track_training(recs, batch, mem)
        if not warm:  # stored with the samples after the step (not during the warm-up)
            batch.memo = {"logits": full[:n].detach(), "keep": correct.detach()}
            if recs:
                batch.memo["attention"] = torch.cat([r.attention[:n] for r in recs], 1).detach()
        return loss

    def after_step(self, batch: Batch, task: Task) -> None:
        self._steps += 1
        super().after_step(batch, task)

    # ------------------------------------------------------------------ analysis
    @torch.no_grad()
    def _track_training(self, recs: list[GateRecord], batch: Batch, mem) -> None:
        """Sum the actions per filter by global class (stream and replayed samples)."""
        assert self.model is not None
        y, tid = batch.y, batch.task_ids
        if mem is not None:
            y, tid = torch.cat([y, mem["y"]]), torch.cat([tid, mem["task_ids"]])
        cls = self.model.global_labels(y, tid)
        actions = torch.cat([r.actions for r in recs], 1)
        if self._train_sum is None:
            n_cls = (
                self.model.classes_per_task[0]
                if self.model.shared_head
                else sum(self.model.classes_per_task)
            )
            self._train_sum = torch.zeros(n_cls, actions.shape[1], dtype=torch.float64)
            self._train_count = torch.zeros(n_cls, dtype=torch.float64)
        assert self._train_count is not None
        self._train_sum.index_add_(0, cls, actions.to(torch.float64))
        self._train_count.index_add_(0, cls, torch.ones(len(cls), dtype=torch.float64))

    @torch.inference_mode()
    def predict_both(self, x: Tensor, task_id: int, upto: int) -> tuple[Tensor, Tensor | None]:
        out = super().predict_both(x, task_id, upto)
        recs = self.records()
        if recs:  # per-filter firing rates by task, from the evaluation's inference actions
            s = torch.cat([r.actions for r in recs], 1).sum(0).to(torch.float64)
            self._eval_sum[task_id] = self._eval_sum.get(task_id, 0) + s
            self._eval_count[task_id] = self._eval_count.get(task_id, 0) + len(x)
        return out

    def _per_agent(self, rates: Tensor) -> list[float]:
        out, start = [], 0
        for c in self.n_filters:
            out.append(round(float(rates[start : start + c].mean()), 4))
            start += c
        return out

    def extra_metrics(self) -> dict[str, Any]:
        """Keep ratios of the agents (Sec. 6.1's modularity analysis), when there are agents:

        * ``keep_ratio``: mean fraction of channels kept per agent on the test sets of the
          tasks seen so far (inference actions, from the last evaluation);
        * ``keep_ratio_by_task``: the same per evaluated task (unseen tasks included);
        * ``keep_ratio_by_class``: per global class, on the training samples of the last task
          (stream and replayed; sampled actions);
        * ``firing_rate_by_task`` / ``firing_rate_by_class``: the same per filter (all agents'
          filters concatenated in ``agents`` order; Fig. 3);
        * ``class_jsd_last_agent``: Jensen-Shannon divergences between the training firing
          rates of class pairs in the last agent (Fig. 4; classes without samples omitted).
        """
        if not self.blocks:
            return {}
        out: dict[str, Any] = {"agents": self.agent_names, "n_filters": self.n_filters}
        by_task = {t: self._eval_sum[t] / self._eval_count[t] for t in sorted(self._eval_sum)}
        if by_task:
            seen = [r for t, r in by_task.items() if t <= self.current_task]
            if seen:
                weights = [self._eval_count[t] for t in by_task if t <= self.current_task]
                mean = sum(w * r for w, r in zip(weights, seen)) / sum(weights)
                out["keep_ratio"] = self._per_agent(mean)
            out["keep_ratio_by_task"] = {str(t): self._per_agent(r) for t, r in by_task.items()}
            out["firing_rate_by_task"] = {
                str(t): [round(float(v), 4) for v in r] for t, r in by_task.items()
            }
        if self._train_sum is not None and self._train_count is not None:
            present = torch.nonzero(self._train_count > 0).squeeze(1).tolist()
            rates = self._train_sum[present] / self._train_count[present].unsqueeze(1)
            out["keep_ratio_by_class"] = {
                str(c): self._per_agent(r) for c, r in zip(present, rates)
            }
            out["firing_rate_by_class"] = {
                str(c): [round(float(v), 4) for v in r] for c, r in zip(present, rates)
            }
            last = self.n_filters[-1]
            jsd = js_divergence(rates[:, -last:])
            out["class_jsd_last_agent"] = {
                "classes": present,
                "jsd": [[round(float(v), 6) for v in row] for row in jsd],
            }
        return out

    @torch.inference_mode()
    def firing_rates(
        self, x: Tensor, groups: Tensor, n_groups: int | None = None, batch_size: int = 1000
    ) -> Tensor:
        """Per-filter firing rates ``[n_groups, sum(n_filters)]`` of the inference actions on
        ``x`` (eval mode), averaged within each group (a class or a task; ``groups`` int64).
        Sec. 6.1's Fig. 3 on a test set; rows of empty groups are NaN."""
        assert self.model is not None
        n_groups = int(groups.max()) + 1 if n_groups is None else n_groups
        was = self.model.training
        self.model.eval()
        total = torch.zeros(n_groups, sum(self.n_filters), dtype=torch.float64)
        count = torch.zeros(n_groups, dtype=torch.float64)
        try:
            for i in range(0, len(x), batch_size):
                self.model(x[i : i + batch_size])
                a = torch.cat([r.actions for r in self.records()], 1).to(torch.float64)
                g = groups[i : i + batch_size]
                total.index_add_(0, g, a)
                count.index_add_(0, g, torch.ones(len(g), dtype=torch.float64))
        finally:
            self.model.train(was)
        return total / count.unsqueeze(1).where(count.unsqueeze(1) > 0, math.nan)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "steps": self._steps,
            "epochs": self._epochs,
            "warm_done": self._warm_done,
            "train_sum": self._train_sum,
            "train_count": self._train_count,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self._steps = int(state["steps"])
        self._epochs = int(state["epochs"])
        self._warm_done = bool(state["warm_done"])
        self._train_sum = state["train_sum"]
        self._train_count = state["train_count"]

    def write_artifacts(self, run_dir: Path) -> None:
        """The modularity analysis (Sec. 6, Figs. 3-4) of the firing rates the run stored in
        its ``metrics.json`` (:mod:`retain.report.dynamos_analysis`); nothing without agents."""
        import json

        from retain.engine import runio
        from retain.report.dynamos_analysis import write_dynamos_analysis

        path = Path(run_dir) / runio.METRICS
        if path.is_file():
            write_dynamos_analysis(run_dir, json.loads(path.read_text()).get("method", {}))
