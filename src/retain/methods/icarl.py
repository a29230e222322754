"""iCaRL: herding exemplars, sigmoid distillation, nearest-mean-of-exemplars classification."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from retain.core.buffers import embed
from retain.core.distill import sigmoid_distillation
from retain.data.benchmark import Task
from retain.methods._exemplars import ExemplarMethod
from retain.methods.base import Batch, register


@register
class ICaRL(ExemplarMethod):
    """iCaRL, Rebuffi et al. 2017, "iCaRL: Incremental Classifier and Representation Learning".

    * Representation learning (Algorithm 3) on the new task's data plus all exemplars, with
      one sigmoid output per class seen so far and a binary cross-entropy whose targets are the
      one-hot labels on the new classes and the previous network's sigmoid outputs on the old
      classes (distillation, :func:`~retain.core.distill.sigmoid_distillation`). The loss is
      the mean over samples and outputs (as the common implementations; the paper sums over
      outputs).
    * Exemplars (Algorithms 4 and 5): a fixed total ``K = memory_size`` (``m = K / classes``
      each; reduction keeps the first ``m`` in herding order) or ``memory_size`` per class,
      chosen by herding on L2-normalised features (:func:`~retain.core.buffers.herding`).
    * Classification (Algorithm 1): nearest mean of exemplars. After every task the class means
      ``mu_y`` are the re-normalised means of the exemplars' normalised features; a sample goes
      to ``argmin_y || phi(x)/|phi(x)| - mu_y ||``. :meth:`predict` returns ``-distance^2``
      as scores (classes without exemplars get ``-inf``; a task none of whose classes has
      exemplars yet falls back to its head). ``nme=False`` predicts with the heads instead.

    Args:
        memory_size: total exemplars (K), or per class with ``per_class``.
        per_class: see ``memory_size``.
        selection: ``"herding"`` or ``"random"`` exemplars.
        nme: classify by nearest mean of exemplars (default) or with the trained heads.

    Deviations and choices: docs/methods/icarl.md
    """

    name = "icarl"

    def __init__(
        self,
        memory_size: int = 2000,
        per_class: bool = False,
        selection: str = "herding",
        nme: bool = True,
    ) -> None:
        super().__init__(memory_size, per_class, selection)
        self.nme = bool(nme)
        self.class_means: Tensor | None = None  # [n_classes, d], normalised
        self.has_mean: Tensor | None = None  # [n_classes] bool

    def loss(self, batch: Batch, task: Task) -> Tensor:
        assert self.model is not None
        logits = self.model(batch.x, upto=self.current_task + 1)
        n_old, n_seen = self.n_old, self.n_seen
        target = F.one_hot(self.global_targets(batch), n_seen).to(logits.dtype)
        new = F.binary_cross_entropy_with_logits(logits[:, n_old:], target[:, n_old:])
        if self.old_model is None or n_old == 0:
            return new
        with torch.no_grad():
            old = self.old_model(batch.x, upto=self.current_task)
        dist = sigmoid_distillation(logits[:, :n_old], old)
        # the mean of one BCE over all n_seen outputs with the old outputs' targets replaced
        return (n_old * dist + (n_seen - n_old) * new) / n_seen

    def after_task(self, task: Task) -> None:
        super().after_task(task)
        self.compute_means()

    def compute_means(self) -> None:
        """Class means of the exemplars' normalised features, re-normalised."""
        assert self.model is not None
        m = self.memory.get_all()
        feats = F.normalize(embed(self.model, m["x"]), dim=1)
        n_classes = sum(self.model.classes_per_task)
        sums = feats.new_zeros((n_classes, feats.shape[1])).index_add_(0, m["group"], feats)
        counts = torch.bincount(m["group"], minlength=n_classes)
        self.has_mean = counts > 0
        self.class_means = F.normalize(sums / counts.clamp_min(1).unsqueeze(1), dim=1)

    def nme_scores(self, features: Tensor, n_outputs: int) -> Tensor:
        """``-|| phi(x)/|phi(x)| - mu_y ||^2`` for the first ``n_outputs`` classes (``-inf``
        where a class has no exemplars)."""
        assert self.class_means is not None and self.has_mean is not None
        f = F.normalize(features, dim=1)
        d = torch.cdist(f, self.class_means[:n_outputs]).square()
        return (-d).masked_fill(~self.has_mean[:n_outputs], float("-inf"))

    def _use_nme(self, lo: int, hi: int) -> bool:
        return self.nme and self.has_mean is not None and bool(self.has_mean[lo:hi].any())

    @torch.inference_mode()
    def predict(self, x: Tensor, task_id: int | None = None, upto: int | None = None) -> Tensor:
        aware, agnostic = self._predict(x, task_id, upto)
        return aware if task_id is not None else agnostic  # type: ignore[return-value]

    @torch.inference_mode()
    def predict_both(self, x: Tensor, task_id: int, upto: int) -> tuple[Tensor, Tensor | None]:
        return self._predict(x, task_id, upto)  # type: ignore[return-value]

    def _predict(
        self, x: Tensor, task_id: int | None, upto: int | None
    ) -> tuple[Tensor | None, Tensor | None]:
        assert self.model is not None
        cpt = self.model.classes_per_task
        feats = self.model.features(x)
        aware = agnostic = None
        if task_id is not None:
            lo = sum(cpt[:task_id])
            hi = lo + cpt[task_id]
            if self._use_nme(lo, hi):
                aware = self.nme_scores(feats, hi)[:, lo:hi]
            else:
                aware = self.model.logits(feats, task_id=task_id)
        if upto is not None or task_id is None:
            upto = self.current_task + 1 if upto is None else upto
            n_out = sum(cpt[:upto])
            if self._use_nme(0, n_out):
                agnostic = self.nme_scores(feats, n_out)
            else:
                agnostic = self.model.logits(feats, upto=upto)
        return aware, agnostic

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "class_means": self.class_means, "has_mean": self.has_mean}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.class_means = state["class_means"]
        self.has_mean = state["has_mean"]
