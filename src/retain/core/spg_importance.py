"""SPG's gradient importance (Konishi, Kurokawa, Ono, Ke, Kim & Liu, "Parameter-level
soft-masking for continual learning", ICML 2023, Sec. 3.1), as an estimator of
:mod:`retain.core.importance`.

After training task ``t``, task ``t``'s training data goes through the trained model again (no
update). For every earlier-or-current task ``tau <= t`` a loss is formed (Eq. 2)::

    L_{t,tau} = CE(M_tau(X_t), Y_t)      if tau == t   (the task's own head)
              = Sum(M_tau(X_t))          if tau <  t   (cross-head importance, CHI: the plain
                                                        sum of head tau's logits over the batch
                                                        and classes, X_t used as unlabelled data)

and, per parameter tensor ``i`` (every weight and every bias separately, as the official code),

    gamma^{t,tau}_i = |tanh(Norm(dL_{t,tau} / d theta_i))|                       (Eq. 1)
    Norm(x) = (x - Mean(x)) / sqrt(Var(x) + eps)                                (Eq. 2)
    gamma^t_i = max(gamma^{t,0}_i, ..., gamma^{t,t}_i)   (elementwise)           (Eq. 3)

A consumer accumulates ``gamma^{<=t} = max(gamma^t, gamma^{<=t-1})`` (Eq. 4): the soft
gradient mask of :class:`~retain.methods.spg.SPG`, or EWC's quadratic penalty (EWC-GI, with
``accumulate=True`` so the estimator returns ``gamma^{<=t}`` itself).

Choices, following the official code (``approaches/spg``) unless stated:

* the gradient of every loss is the **sum over the batches** of the gradient of the batch loss
  (CE averaged within a batch; the CHI sum over the whole batch); data in stored order,
  ``batch_size`` 64;
* one pass over the data per ``tau`` (``tau`` outer, batches inner), so only one gradient
  accumulator and the running maximum are held, whatever the number of tasks;
* the **absolute value** of the tanh is taken (it is in the code, not in the paper's Eq. 1;
  without it, importance could be negative and amplify gradients);
* ``Var`` is the unbiased variance (``torch.std`` in the code) **plus** the paper's ``eps``
  (the code has none and skips the standardisation of an all-zero tensor; with ``eps`` a
  constant tensor simply gets importance 0). ``eps`` defaults to 1e-12 so that it only
  prevents 0/0: summed gradients of a converged layer can have a variance far below 1e-8;
* the model is in **train mode** (dropout active) as in the official code; ``eval_mode=True``
  uses eval mode instead. Either way the pass changes no parameter, no ``.grad`` (gradients
  come from :func:`torch.autograd.grad`) and no buffer: every buffer (BatchNorm running
  statistics and counters) is saved before and restored after, so a BN backbone sees batch
  statistics in train mode but keeps its running statistics.

It is registered as ``"spg"`` in :data:`~retain.core.estimators.ESTIMATORS`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from retain.core.importance import (
    HEADS,
    Importance,
    ImportanceDict,
    _check,
    named_parameters,
    task_batches,
    task_forward,
)
from retain.data.benchmark import Task

#: ``loss(model, x, y) -> scalar``: one of the losses ``L_{t,tau}`` of Eq. 2.
BatchLoss = Callable[[nn.Module, Tensor, Tensor], Tensor]


def spg_normalize(g: Tensor, eps: float = 1e-12, signed: bool = False) -> Tensor:
    """``|tanh(Norm(g))|`` with ``Norm(g) = (g - Mean(g)) / sqrt(Var(g) + eps)`` over the whole
    tensor (Eqs. 1-2; the absolute value as the official code). Unbiased variance (a single
    element: variance 0). Always in ``[0, 1]``; float32. ``signed``: ``tanh(Norm(g))``
    without the absolute value, in ``(-1, 1)``."""
    g = g.detach().float()
    if g.numel() == 0:
        return g.clone()
    var = g.var(correction=1 if g.numel() > 1 else 0)
    out = torch.tanh((g - g.mean()) / torch.sqrt(var + eps))
    return out if signed else out.abs()


def gradient_importance(
    model: nn.Module,
    batches: Iterable[tuple[Tensor, Tensor]],
    losses: Sequence[BatchLoss],
    *,
    params: Mapping[str, Tensor] | Iterable[str] | None = None,
    eps: float = 1e-12,
    eval_mode: bool = False,
) -> ImportanceDict:
    """``max_k |tanh(Norm(sum_b d losses[k](model, x_b, y_b) / d theta))|`` per parameter
    tensor: Eqs. 1-3 for any list of losses (SPG: the task's CE, then one CHI loss per old
    head).

    Runs in train mode (default; ``eval_mode`` for eval mode) and restores the previous mode.
    No parameter, ``.grad`` or buffer of ``model`` is changed (buffers are restored).
    ``batches`` is iterated once per loss, so pass a list.
    """
    params = named_parameters(model, params)
    names, tensors = list(params), list(params.values())
    batches = list(batches)
    saved = {n: b.detach().clone() for n, b in model.named_buffers()}
    was_training = model.training
    model.train(not eval_mode)
    gamma: ImportanceDict = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in params.items()}
    try:
        with torch.enable_grad():
            for loss_fn in losses:
                acc = [torch.zeros_like(p, dtype=torch.float32) for p in tensors]
                for x, y in batches:
                    grads = torch.autograd.grad(loss_fn(model, x, y), tensors, allow_unused=True)
                    for a, g in zip(acc, grads, strict=True):
                        if g is not None:
                            a += g.float()
                for n, a in zip(names, acc, strict=True):
                    torch.maximum(gamma[n], spg_normalize(a, eps), out=gamma[n])
    finally:
        model.train(was_training)
        with torch.no_grad():
            for n, b in model.named_buffers():
                if n in saved:
                    b.copy_(saved[n])
    return gamma


def spg_losses(task_id: int, heads: str = "task", chi: bool = True, shared_head: bool = False):
    """The losses of Eq. 2 after task ``task_id``: CE on the task's output (``heads``: its own
    head, or the concatenation of heads ``0..t`` with global labels), then, with ``chi``, the
    sum of head ``tau``'s logits for every ``tau < t``. With a shared head every old "head" is
    the same one, so its CHI term is taken once (the maximum over equal terms is that term)."""
    own = task_forward(task_id, heads)
    out: list[BatchLoss] = [lambda model, x, y: F.cross_entropy(own(model, x), y)]
    if chi and task_id > 0:
        old = [0] if shared_head else range(task_id)
        for tau in old:
            out.append(lambda model, x, y, _tau=tau: model(x, task_id=_tau).sum())
    return out


class SPGImportance(Importance):
    """SPG's normalised gradient importance ``gamma^t`` (Eqs. 1-3), in ``[0, 1]``.

    Args:
        chi: cross-head importance (default True); False is the paper's "-CHI" ablation
            (``gamma^t = gamma^{t,t}``).
        eval_mode: compute in eval mode (no dropout) instead of train mode (official code).
        eps: the ``eps`` of Eq. 2.
        batch_size: batches of the pass (the official training batch size, 64).
        max_samples: use only the first this many training samples (default: all).
        heads: output of the CE term (``"task"`` or ``"seen"``); None: the consumer's.
        accumulate: return the running ``gamma^{<=t} = max(gamma^t, gamma^{<=t-1})`` (Eq. 4)
            instead of ``gamma^t``; kept in :meth:`state_dict`. EWC-GI uses it:
            ``ewc(importance="spg", importance_args={"accumulate": True}, online=True,
            alpha=0.0)`` penalises ``lambda/2 sum_i gamma^{<=t-1}_i (theta_i - theta*_i)^2``.
    """

    name = "spg"

    def __init__(
        self,
        chi: bool = True,
        eval_mode: bool = False,
        eps: float = 1e-12,
        batch_size: int = 64,
        max_samples: int | None = None,
        heads: str | None = None,
        accumulate: bool = False,
    ) -> None:
        if heads is not None:
            _check("heads", heads, HEADS)
        if eps < 0:
            raise ValueError(f"eps must be >= 0, got {eps}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.chi = chi
        self.eval_mode = eval_mode
        self.eps = eps
        self.batch_size = batch_size
        self.max_samples = max_samples
        self.heads = heads
        self.accumulate = accumulate
        self.accumulated: ImportanceDict = {}

    def setup(self, params, regularizer_grad=None) -> None:
        super().setup(params, regularizer_grad)
        self.accumulated = {}

    def compute(self, model: nn.Module, task: Task, heads: str = "task") -> ImportanceDict:
        heads = self.heads or heads
        gamma = gradient_importance(
            model,
            task_batches(model, task, heads, self.batch_size, self.max_samples),
            spg_losses(task.id, heads, self.chi, bool(getattr(model, "shared_head", False))),
            params=self.params,
            eps=self.eps,
            eval_mode=self.eval_mode,
        )
        if not self.accumulate:
            return gamma
        for n, g in gamma.items():
            old = self.accumulated.get(n)
            self.accumulated[n] = g if old is None else torch.maximum(old, g)
        return {n: g.clone() for n, g in self.accumulated.items()}

    def state_dict(self) -> dict[str, Any]:
        return {"accumulated": self.accumulated}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.accumulated = {n: t.clone() for n, t in state.get("accumulated", {}).items()}
