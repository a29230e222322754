"""BiC: exemplar replay with distillation and a two-parameter bias correction of new classes."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from retain.core.buffers import ExemplarMemory
from retain.core.distill import kd_cross_entropy
from retain.data.benchmark import Task
from retain.methods._exemplars import ExemplarMethod
from retain.methods.base import Batch, register


def correct_bias(logits: Tensor, lo: int, hi: int, alpha: Tensor, beta: Tensor) -> Tensor:
    """BiC's bias-correction layer (Wu et al. 2019, Eq. 5): ``alpha * o_k + beta`` for the
    outputs ``lo <= k < hi`` (the newest task's classes); every other output is unchanged."""
    return torch.cat([logits[:, :lo], alpha * logits[:, lo:hi] + beta, logits[:, hi:]], dim=1)


@register
class BiC(ExemplarMethod):
    """BiC, Wu et al. 2019, "Large Scale Incremental Learning" (CVPR).

    Exemplars are split: a fraction ``val_fraction`` of every class's share is a held-out,
    class-balanced validation memory (for the new classes: random samples removed from the
    task's training data before training); the rest are training exemplars chosen by herding.

    * Stage 1 (training task ``t`` on its data plus the training exemplars), Eq. 4:
      ``L = lambda * L_d + (1 - lambda) * L_c`` with ``lambda = n / (n + m)`` (``n`` old and
      ``m`` new classes), ``L_c`` the cross-entropy over all classes seen, and ``L_d`` the
      distillation of the old classes' softmax at temperature ``T = 2`` (Eq. 2-3) from the
      previous model, whose newest-task outputs go through its own bias correction.
    * Stage 2 (``after_task``, ``t > 0``): the model is frozen and the bias-correction layer
      ``q_k = alpha * o_k + beta`` on the new classes' logits (Eq. 5; old logits unchanged) is
      fitted by minimising the cross-entropy of the corrected logits on the validation memory
      (Eq. 6). The problem is convex in ``(alpha, beta)``; we solve it with L-BFGS.
    * Prediction: the model's logits with the current correction on the newest task's classes.
      The correction is monotone inside a task (``alpha > 0``), so it matters for the
      task-agnostic prediction only.

    Args:
        memory_size: total exemplars, training and validation (or per class, ``per_class``).
        per_class: see ``memory_size``.
        val_fraction: share of each class's exemplars held out for stage 2 (paper: 0.1).
        temperature: distillation temperature (paper: 2).
        bias_iterations: L-BFGS iterations of stage 2.
        selection: ``"herding"`` or ``"random"`` training exemplars.

    Deviations and choices: docs/methods/bic.md
    """

    name = "bic"

    def __init__(
        self,
        memory_size: int = 2000,
        per_class: bool = False,
        val_fraction: float = 0.1,
        temperature: float = 2.0,
        bias_iterations: int = 100,
        selection: str = "herding",
    ) -> None:
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
        n_val = max(1, round(memory_size * val_fraction))
        if n_val >= memory_size:
            raise ValueError(f"memory_size {memory_size} is too small to hold out a validation set")
        super().__init__(memory_size - n_val, per_class, selection)
        self.val_memory = ExemplarMemory(n_val, per_group=per_class)
        self.temperature = float(temperature)
        self.bias_iterations = int(bias_iterations)
        # the current correction: (alpha, beta) on the outputs of task ``bias_task``
        self.alpha = torch.ones(())
        self.beta = torch.zeros(())
        self.bias_task: int | None = None
        # the previous model's correction (applied to the teacher in distillation)
        self._old_bias: tuple[Tensor, Tensor, int | None] = (self.alpha, self.beta, None)
        self._train_idx: Tensor | None = None

    # ------------------------------------------------------------------ data
    def before_task(self, task: Task) -> None:
        super().before_task(task)
        self._old_bias = (self.alpha.clone(), self.beta.clone(), self.bias_task)
        # hold out a class-balanced validation sample of the new classes, never trained on
        y = task.y_train
        held = self.val_memory.add(
            task.x_train,
            y,
            torch.full_like(y, task.id),
            task.class_offset + y,
            selection="random",
            n_groups=task.class_offset + task.n_classes,
        )
        keep = torch.ones(len(y), dtype=torch.bool)
        keep[held] = False
        self._train_idx = torch.nonzero(keep).squeeze(1)

    def task_indices(self, task: Task) -> Tensor | None:
        return self._train_idx

    # ------------------------------------------------------------------ outputs
    def _span(self, task_id: int) -> tuple[int, int]:
        assert self.model is not None
        lo = sum(self.model.classes_per_task[:task_id])
        return lo, lo + self.model.classes_per_task[task_id]

    def corrected(
        self, logits: Tensor, bias: tuple[Tensor, Tensor, int | None] | None = None
    ) -> Tensor:
        """``logits`` (concatenated heads) with a correction (default: the current one) on its
        task's outputs, if those outputs are present."""
        alpha, beta, task = bias if bias is not None else (self.alpha, self.beta, self.bias_task)
        if task is None:
            return logits
        lo, hi = self._span(task)
        if hi > logits.shape[1]:
            return logits
        return correct_bias(logits, lo, hi, alpha, beta)

    def loss(self, batch: Batch, task: Task) -> Tensor:
        assert self.model is not None
        logits = self.model(batch.x, upto=self.current_task + 1)
        ce = F.cross_entropy(logits, self.global_targets(batch))
        n_old, n_seen = self.n_old, self.n_seen
        if self.old_model is None or n_old == 0:
            return ce
        with torch.no_grad():
            old = self.corrected(self.old_model(batch.x, upto=self.current_task), self._old_bias)
        kd = kd_cross_entropy(logits[:, :n_old], old, self.temperature)
        lam = n_old / n_seen
        return lam * kd + (1.0 - lam) * ce

    # ------------------------------------------------------------------ stage 2
    def after_task(self, task: Task) -> None:
        super().after_task(task)
        if task.id > 0:
            self.fit_bias(task)

    def fit_bias(self, task: Task) -> None:
        """Fit ``(alpha, beta)`` on task ``task``'s outputs by minimising the cross-entropy of
        the corrected logits over the validation memory (model frozen)."""
        assert self.model is not None
        v = self.val_memory.get_all()
        was_training = self.model.training
        self.model.eval()
        with torch.no_grad():
            logits = self.model(v["x"], upto=task.id + 1)
        self.model.train(was_training)
        target = self.model.global_labels(v["y"], v["task_ids"])
        lo, hi = self._span(task.id)
        alpha = torch.ones((), requires_grad=True)
        beta = torch.zeros((), requires_grad=True)
        opt = torch.optim.LBFGS(
            [alpha, beta], lr=1.0, max_iter=self.bias_iterations, line_search_fn="strong_wolfe"
        )

        def closure() -> Tensor:
            opt.zero_grad()
            loss = F.cross_entropy(correct_bias(logits, lo, hi, alpha, beta), target)
            loss.backward()
            return loss

        with torch.enable_grad():
            opt.step(closure)
        a, b = alpha.detach(), beta.detach()
        if not (math.isfinite(float(a)) and math.isfinite(float(b))):  # pragma: no cover
            a, b = torch.ones(()), torch.zeros(())
        self.alpha, self.beta, self.bias_task = a, b, task.id

    # ------------------------------------------------------------------ inference
    @torch.inference_mode()
    def predict(self, x: Tensor, task_id: int | None = None, upto: int | None = None) -> Tensor:
        assert self.model is not None
        if task_id is not None:
            lo, hi = self._span(task_id)
            return self.corrected(self.model(x, upto=task_id + 1))[:, lo:hi]
        upto = self.current_task + 1 if upto is None else upto
        return self.corrected(self.model(x, upto=upto))

    def extra_metrics(self) -> dict[str, Any]:
        """The current bias correction (``alpha``, ``beta`` on task ``task``'s outputs)."""
        return {
            "bias_task": self.bias_task,
            "alpha": round(float(self.alpha), 6),
            "beta": round(float(self.beta), 6),
        }

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "val_memory": self.val_memory.state_dict(),
            "bias": (self.alpha, self.beta, self.bias_task),
            "old_bias": self._old_bias,
            "train_idx": self._train_idx,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.val_memory.load_state_dict(state["val_memory"])
        self.alpha, self.beta, self.bias_task = state["bias"]
        self._old_bias = state["old_bias"]
        self._train_idx = state["train_idx"]
