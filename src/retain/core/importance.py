"""Per-parameter importance: how much each weight matters to a task.

Two layers:

* **Functions** for any model and any data: :func:`fisher_diagonal` and :func:`mas_importance`
  take a model, an iterable of ``(x, y)`` batches and a ``forward(model, x) -> logits``
  function, and return ``{parameter name: tensor shaped like the parameter}``.
* **Estimators** (:class:`Importance` subclasses) are "things that yield per-parameter
  importance after a task". A consumer (the quadratic penalty of EWC/MAS/SI, a soft gradient
  mask, a hard freeze) calls ``setup`` once, ``before_task`` / ``after_step`` during training
  (online estimators such as SI's path integral accumulate there) and ``compute(model, task)``
  after the task. :class:`FisherImportance`, :class:`MASImportance` and :class:`PathIntegral`
  are here; SPG's gradient importance is in :mod:`retain.core.spg_importance`; all are
  registered by name in :mod:`retain.core.estimators` (``make_importance("mas",
  granularity="batch")``), where a Taylor score or any other estimator plugs in the same way.
* **Which parameters** a consumer protects (EWC's penalty, SPG's gradient mask):
  :func:`protected_parameters`.

Per-sample versus per-batch gradients
-------------------------------------
Both estimators offer ``granularity``:

``"batch"``: one backward pass per batch of the mean loss; the squared (Fisher) or absolute
(MAS) batch gradient is weighted by the batch size and averaged over samples,
``I = (1/N) sum_b |b| * h(g_b)``. This is what FACIL (and so ScrollNet) does for EWC and MAS,
and what the official MAS code does (its running mean of the absolute gradient of the batch's
summed squared output norms). For ``|b| = 1`` it is exactly the per-sample estimate; for
larger batches it is cheaper but not the same quantity (per-sample noise is averaged inside the
batch before squaring), so it depends on the batch size (kept fixed by ``batch_size``).

``"sample"``: per-sample gradients with :func:`torch.func.vmap`, ``I = (1/N) sum_k h(g_k)``:
the textbook empirical Fisher and MAS's equation. Memory grows with ``batch_size x n_params``.

Estimation runs with the model in ``eval()`` mode (no dropout, BatchNorm statistics untouched)
and restores the previous mode; FACIL computes the Fisher in train mode, which changes BN
running statistics as a side effect. Gradients are taken with :func:`torch.autograd.grad`, so
``.grad`` of the model's parameters is never touched.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from retain.data.benchmark import Task
from retain.data.iterate import iterate_batches

if TYPE_CHECKING:
    from retain.models.continual import ContinualModel

#: ``forward(model, x) -> logits``: which output of the model an estimator looks at.
Forward = Callable[[nn.Module, Tensor], Tensor]
ImportanceDict = dict[str, Tensor]

FISHER_LABELS = ("true", "max_pred", "sample")
GRANULARITIES = ("batch", "sample")
HEADS = ("task", "seen")


def _plain_forward(model: nn.Module, x: Tensor) -> Tensor:
    return model(x)


def named_parameters(
    model: nn.Module, params: Mapping[str, Tensor] | Iterable[str] | None = None
) -> dict[str, Tensor]:
    """``params`` as a name -> parameter dict: all trainable parameters of ``model`` when
    None, a dict as given, or the parameters with the given names."""
    if params is None:
        return {n: p for n, p in model.named_parameters() if p.requires_grad}
    if isinstance(params, Mapping):
        return dict(params)
    named = dict(model.named_parameters())
    return {n: named[n] for n in params}


#: values of the ``protect`` option of EWC, MAS, SI and SPG (see :func:`protected_parameters`)
PROTECT = ("auto", "backbone", "all")


def check_protect(which: str) -> str:
    """``which`` if it is one of :data:`PROTECT`, else a ValueError naming the option."""
    _check("protect", which, PROTECT)
    return which


def protected_parameters(
    model: ContinualModel, which: str = "auto", loss_heads: str = "task"
) -> dict[str, Tensor]:
    """The trainable parameters a consolidating method protects (EWC's penalty, SPG's
    gradient mask) of a :class:`~retain.models.ContinualModel`, named as in
    ``model.named_parameters()``.

    ``which``: ``"backbone"``; ``"all"`` (backbone and heads); ``"auto"``: the backbone, plus
    the heads when later tasks train them too (a shared head, or ``loss_heads="seen"``).
    Per-task heads of a task-aware model are trained only with their own task, so they need
    no protection.
    """
    check_protect(which)
    if which == "auto":
        which = "all" if model.shared_head or loss_heads == "seen" else "backbone"
    module = model if which == "all" else model.backbone
    prefix = "" if which == "all" else "backbone."
    return {prefix + n: p for n, p in module.named_parameters() if p.requires_grad}


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            yield
    finally:
        model.train(was_training)


class _Bound(nn.Module):
    """``forward(model, x)`` as a module, so :func:`torch.func.functional_call` can swap the
    parameters of ``model`` inside any forward function."""

    def __init__(self, model: nn.Module, forward: Forward) -> None:
        super().__init__()
        self.model = model
        self.fn = forward

    def forward(self, x: Tensor) -> Tensor:
        return self.fn(self.model, x)


def per_sample_grads(
    model: nn.Module,
    forward: Forward,
    params: Mapping[str, Tensor],
    sample_loss: Callable[..., Tensor],
    x: Tensor,
    *extra: Tensor,
) -> ImportanceDict:
    """Gradient of ``sample_loss(logits_k, *extra_k)`` for every sample ``k`` of ``x``:
    ``{name: tensor [N, *param.shape]}``. ``logits_k`` has a batch dimension of 1."""
    known = dict(model.named_parameters())
    unknown = [n for n in params if n not in known]
    if unknown:
        raise ValueError(
            f"per-sample gradients need parameter names as in model.named_parameters(); "
            f"unknown: {unknown[:3]}"
        )
    bound = _Bound(model, forward)
    detached = {f"model.{n}": p.detach() for n, p in params.items()}

    def loss_one(p: dict[str, Tensor], xi: Tensor, *rest: Tensor) -> Tensor:
        out = torch.func.functional_call(bound, p, (xi.unsqueeze(0),))
        return sample_loss(out, *(r.unsqueeze(0) for r in rest))

    in_dims = (None, 0, *([0] * len(extra)))
    # torch.func.grad ignores an outer no_grad; the no_grad stops ordinary autograd from also
    # recording a graph through the parameters left in the model (e.g. heads), which would
    # keep every chunk's per-sample gradients alive
    with torch.no_grad():
        grads = torch.func.vmap(torch.func.grad(loss_one), in_dims=in_dims)(detached, x, *extra)
    return {n: grads[f"model.{n}"] for n in params}


def _check(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")


def _fisher_targets(
    logits: Tensor, y: Tensor, labels: str, generator: torch.Generator | None
) -> Tensor:
    if labels == "true":
        return y
    if labels == "max_pred":
        return logits.argmax(1)
    probs = F.softmax(logits.detach().float(), dim=1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)


def fisher_diagonal(
    model: nn.Module,
    batches: Iterable[tuple[Tensor, Tensor]],
    forward: Forward | None = None,
    *,
    params: Mapping[str, Tensor] | Iterable[str] | None = None,
    labels: str = "max_pred",
    granularity: str = "batch",
    generator: torch.Generator | None = None,
) -> ImportanceDict:
    """Diagonal Fisher information of the log-likelihood ``log p(y | x)`` given by
    ``softmax(forward(model, x))``, as used by EWC (Kirkpatrick et al., 2017).

    ``F_i = (1/N) sum_k (d/dtheta_i log p(yhat_k | x_k))^2`` with ``granularity="sample"``;
    ``F_i = (1/N) sum_b |b| (d/dtheta_i mean_{k in b} log p(yhat_k | x_k))^2`` with
    ``"batch"`` (FACIL/ScrollNet; see the module docstring).

    Args:
        batches: ``(x, y)`` pairs; ``y`` indexes the columns of ``forward``'s logits.
        forward: ``forward(model, x) -> logits`` (default ``model(x)``).
        params: which parameters (default: all with ``requires_grad``).
        labels: the ``yhat`` in the log-likelihood. ``"max_pred"``: the model's argmax
            (FACIL's and ScrollNet's default); ``"true"``: the data labels (the "empirical
            Fisher"); ``"sample"``: drawn from the model's predictive distribution (the true
            Fisher, one sample per input).
        granularity: ``"batch"`` or ``"sample"``.
        generator: source of the ``"sample"`` labels.
    """
    _check("labels", labels, FISHER_LABELS)
    _check("granularity", granularity, GRANULARITIES)
    forward = forward or _plain_forward
    params = named_parameters(model, params)
    out = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in params.items()}
    tensors = list(params.values())
    n_total = 0
    with _eval_mode(model):
        for x, y in batches:
            if granularity == "batch":
                logits = forward(model, x)
                target = _fisher_targets(logits.detach(), y, labels, generator)
                loss = F.cross_entropy(logits, target)
                grads = torch.autograd.grad(loss, tensors, allow_unused=True)
                for n, g in zip(params, grads, strict=True):
                    if g is not None:
                        out[n] += g.float().square() * len(x)
            else:
                if labels == "true":
                    target = y
                else:
                    with torch.no_grad():
                        target = _fisher_targets(forward(model, x), y, labels, generator)
                grads = per_sample_grads(model, forward, params, F.cross_entropy, x, target)
                for n, g in grads.items():
                    out[n] += g.float().square().sum(0)
            n_total += len(x)
    return {n: v / max(n_total, 1) for n, v in out.items()}


def _squared_norm(logits: Tensor) -> Tensor:
    return logits.square().sum(-1).mean()


def _norm(logits: Tensor) -> Tensor:
    return logits.norm(dim=-1).mean()


def mas_importance(
    model: nn.Module,
    batches: Iterable[tuple[Tensor, ...]],
    forward: Forward | None = None,
    *,
    params: Mapping[str, Tensor] | Iterable[str] | None = None,
    granularity: str = "batch",
    squared: bool = True,
) -> ImportanceDict:
    """MAS importance (Aljundi et al., ECCV 2018, Sec. 3): the mean absolute gradient of the
    squared L2 norm of the output, ``Omega_i = (1/N) sum_k |d/dtheta_i ||F(x_k)||_2^2|``.

    That is ``granularity="sample"``. The default ``"batch"`` computes
    ``(1/N) sum_b |d/dtheta_i sum_{k in b} ||F(x_k)||^2|``, as the official code (and FACIL)
    do: one backward pass per batch instead of per-sample gradients, identical for batches of
    one. ``squared=False`` uses the plain norm ``||F(x_k)||_2`` as FACIL does. No labels are
    needed (only the first tensor of every batch is read): any unlabelled data will do.
    """
    _check("granularity", granularity, GRANULARITIES)
    forward = forward or _plain_forward
    params = named_parameters(model, params)
    out = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in params.items()}
    tensors = list(params.values())
    norm = _squared_norm if squared else _norm
    n_total = 0
    with _eval_mode(model):
        for batch in batches:
            x = batch[0]
            if granularity == "batch":
                grads = torch.autograd.grad(norm(forward(model, x)), tensors, allow_unused=True)
                for n, g in zip(params, grads, strict=True):
                    if g is not None:
                        out[n] += g.float().abs() * len(x)
            else:
                for n, g in per_sample_grads(model, forward, params, norm, x).items():
                    out[n] += g.float().abs().sum(0)
            n_total += len(x)
    return {n: v / max(n_total, 1) for n, v in out.items()}


# ---------------------------------------------------------------------------------- data


def task_forward(task_id: int, heads: str = "task") -> Forward:
    """The output an estimator looks at for a :class:`~retain.models.ContinualModel`:
    task ``task_id``'s head (``"task"``, local labels) or the concatenated heads of tasks
    ``0..task_id`` (``"seen"``, global labels; FACIL/ScrollNet)."""
    _check("heads", heads, HEADS)
    if heads == "task":
        return lambda model, x: model(x, task_id=task_id)
    return lambda model, x: model(x, upto=task_id + 1)


def task_batches(
    model: nn.Module,
    task: Task,
    heads: str = "task",
    batch_size: int = 64,
    max_samples: int | None = None,
) -> list[tuple[Tensor, Tensor]]:
    """A task's training data as ``(x, y)`` batches in stored order (deterministic), with
    labels matching :func:`task_forward` (global ones for ``"seen"``); at most
    ``max_samples`` samples (the first ones). On the model's device (lazily loaded images
    stay on the host until batched)."""
    x, y = task.x_train, task.y_train
    if max_samples is not None:
        x, y = x[:max_samples], y[:max_samples]
    device = next(model.parameters()).device
    y = y.to(device)
    if heads == "seen" and hasattr(model, "global_labels"):
        y = model.global_labels(y, torch.full_like(y, task.id))
    return [(xb.to(device), yb) for xb, yb in iterate_batches((x, y), batch_size, shuffle=False)]


# ---------------------------------------------------------------------------------- estimators


class Importance:
    """Something that yields per-parameter importance after a task.

    Lifecycle (driven by a consumer such as :class:`~retain.methods.ewc.EWC`)::

        est.setup(params)                 # once: {name: parameter} to score
        est.before_task(task)
        ... training; est.after_step() after every optimiser step ...
        importance = est.compute(model, task, heads)   # {name: tensor like the parameter}

    Estimators that only look at the trained model and the task's data implement
    :meth:`compute`; online ones (:class:`PathIntegral`) also use the training hooks.
    ``state_dict`` must hold whatever a resumed run needs (mid-task accumulators).
    """

    name: ClassVar[str] = "importance"

    def setup(
        self,
        params: Mapping[str, Tensor],
        regularizer_grad: Callable[[str, Tensor], Tensor | None] | None = None,
    ) -> None:
        """``params``: what to score. ``regularizer_grad(name, value)``: gradient of the
        consumer's own penalty at ``value``, for estimators that need the gradient of the
        task loss alone (SI)."""
        self.params = dict(params)
        self.regularizer_grad = regularizer_grad

    def before_task(self, task: Task) -> None:
        """Called before training ``task``."""

    def after_step(self) -> None:
        """Called after every optimiser step (``.grad`` still holds the step's gradient)."""

    def compute(self, model: nn.Module, task: Task, heads: str = "task") -> ImportanceDict:
        """Importance of every parameter in ``params`` for ``task`` (the model is trained)."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class FisherImportance(Importance):
    """Diagonal Fisher after each task (EWC), over the task's training data.

    Args:
        labels: ``"max_pred"`` (default, FACIL/ScrollNet), ``"true"`` or ``"sample"``;
            see :func:`fisher_diagonal`.
        granularity: ``"batch"`` (default, FACIL/ScrollNet) or ``"sample"``.
        batch_size: batches of the estimate (FACIL uses the training batch size; 64).
        max_samples: use only the first this many training samples (default: all).
        heads: which output the likelihood is over; ``None`` lets the consumer decide
            (its ``loss_heads``). ScrollNet/FACIL use ``"seen"`` (all heads so far).
        seed: seeds the label draws of ``labels="sample"`` (offset by the task id).
    """

    name = "fisher"

    def __init__(
        self,
        labels: str = "max_pred",
        granularity: str = "batch",
        batch_size: int = 64,
        max_samples: int | None = None,
        heads: str | None = None,
        seed: int = 0,
    ) -> None:
        _check("labels", labels, FISHER_LABELS)
        _check("granularity", granularity, GRANULARITIES)
        if heads is not None:
            _check("heads", heads, HEADS)
        self.labels = labels
        self.granularity = granularity
        self.batch_size = batch_size
        self.max_samples = max_samples
        self.heads = heads
        self.seed = seed

    def compute(self, model: nn.Module, task: Task, heads: str = "task") -> ImportanceDict:
        heads = self.heads or heads
        return fisher_diagonal(
            model,
            task_batches(model, task, heads, self.batch_size, self.max_samples),
            task_forward(task.id, heads),
            params=self.params,
            labels=self.labels,
            granularity=self.granularity,
            generator=torch.Generator().manual_seed(self.seed + task.id),
        )


class MASImportance(Importance):
    """MAS importance after each task, over the task's training data (labels unused).

    Args:
        granularity: ``"batch"`` (default; the official code's and FACIL's computation) or
            ``"sample"`` (the paper's per-sample equation; exact but about 50x slower on an
            MLP here, as :func:`torch.func.vmap` materialises every per-sample gradient).
        squared: squared L2 norm (default, the paper) or the plain norm (FACIL).
        batch_size, max_samples, heads: as :class:`FisherImportance`.
    """

    name = "mas"

    def __init__(
        self,
        granularity: str = "batch",
        squared: bool = True,
        batch_size: int = 64,
        max_samples: int | None = None,
        heads: str | None = None,
    ) -> None:
        _check("granularity", granularity, GRANULARITIES)
        if heads is not None:
            _check("heads", heads, HEADS)
        self.granularity = granularity
        self.squared = squared
        self.batch_size = batch_size
        self.max_samples = max_samples
        self.heads = heads

    def compute(self, model: nn.Module, task: Task, heads: str = "task") -> ImportanceDict:
        heads = self.heads or heads
        return mas_importance(
            model,
            task_batches(model, task, heads, self.batch_size, self.max_samples),
            task_forward(task.id, heads),
            params=self.params,
            granularity=self.granularity,
            squared=self.squared,
        )


class PathIntegral(Importance):
    """SI's importance (Zenke, Poole & Ganguli, ICML 2017, Eqs. 3-5), accumulated online.

    During task ``mu``, after every optimiser step:
    ``omega_i += -g_i * (theta_i(after) - theta_i(before))``, where ``g`` is the gradient of
    the task loss alone (the step's ``.grad`` minus the consumer's penalty gradient, as the
    official code's "unregularised gradients"; ``total_gradient=True`` keeps the penalty's
    part). At :meth:`compute`: ``omega_i / ((Delta_i)^2 + xi)`` with ``Delta`` the parameter's
    change over the task; ``omega`` restarts at zero. For plain gradient descent on the task
    loss ``omega_i`` is the path integral of the loss decrease due to parameter ``i``.

    The consumer accumulates the per-task values (SI: a sum, then ``max(., 0)`` as the official
    code applies a ReLU to the accumulated importance; see :class:`~retain.methods.si.SI`).
    """

    name = "si"

    def __init__(self, xi: float = 1e-3, total_gradient: bool = False) -> None:
        if xi <= 0:
            raise ValueError(f"xi must be positive, got {xi}")
        self.xi = xi
        self.total_gradient = total_gradient
        self.omega: ImportanceDict = {}
        self.start: ImportanceDict = {}
        self.prev: ImportanceDict = {}

    def setup(self, params, regularizer_grad=None) -> None:
        super().setup(params, regularizer_grad)
        self.omega, self.start, self.prev = {}, {}, {}

    def before_task(self, task: Task) -> None:
        self.omega = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in self.params.items()}
        self.start = {n: p.detach().clone() for n, p in self.params.items()}
        self.prev = {n: p.detach().clone() for n, p in self.params.items()}

    @torch.no_grad()
    def after_step(self) -> None:
        if not self.prev:
            raise RuntimeError(f"{type(self).__name__}.before_task must be called before training")
        for n, p in self.params.items():
            prev = self.prev[n]
            if p.grad is not None:
                g = p.grad
                if not self.total_gradient and self.regularizer_grad is not None:
                    reg = self.regularizer_grad(n, prev)
                    if reg is not None:
                        g = g - reg
                self._accumulate(n, p, g)
            prev.copy_(p)
        self._stepped()

    def _accumulate(self, name: str, p: Tensor, g: Tensor) -> None:
        """One step of parameter ``name``: ``g`` the task-loss gradient at ``prev``, ``p`` the
        value after the step."""
        self.omega[name].sub_((g * (p - self.prev[name])).float())

    def _stepped(self) -> None:
        """Called once after every step, when every parameter has been accumulated."""

    @torch.no_grad()
    def compute(self, model: nn.Module, task: Task, heads: str = "task") -> ImportanceDict:
        out = {
            n: self.omega[n] / ((p.detach() - self.start[n]).float().square() + self.xi)
            for n, p in self.params.items()
        }
        for w in self.omega.values():
            w.zero_()
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"omega": self.omega, "start": self.start, "prev": self.prev}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.omega = {n: t.clone() for n, t in state["omega"].items()}
        self.start = {n: t.clone() for n, t in state["start"].items()}
        self.prev = {n: t.clone() for n, t in state["prev"].items()}


def min_max_normalize(values: ImportanceDict, tiny: float = 1e-32) -> ImportanceDict:
    """``(x - min) / (max - min + tiny)``, min and max over all the tensors together.

    RWalk's normalisation of ``F`` and ``s`` in the authors' code (global over the layers,
    ``tiny`` their ``EPSILON``): every value lands in [0, 1]; a constant input gives zeros.
    """
    if not values:
        return {}
    low = min(v.min() for v in values.values())
    high = max(v.max() for v in values.values())
    return {n: (v - low) / (high - low + tiny) for n, v in values.items()}


class RiemannianWalk(PathIntegral):
    """RWalk's importance (Chaudhry, Dokania, Ajanthan & Torr, ECCV 2018): ``F + s``.

    Both parts are accumulated online, from the gradient ``g`` of the task loss alone at every
    optimiser step (the step's ``.grad`` minus the consumer's penalty gradient, as
    :class:`PathIntegral`, whose step loop this shares):

    * ``F``, EWC++'s Fisher (Eq. 6): the squared mini-batch gradient averaged over training
      iterations, ``F <- alpha * g^2 + (1 - alpha) * F`` (``F = g^2`` at the very first step);
      it runs on across tasks, never restarts.
    * ``s``, the path score (Eq. 7): the first-order loss change of every interval of
      ``interval`` steps, ``Delta L = -sum g * Delta theta`` (SI's ``omega``), divided by the
      KL distance it travelled, ``1/2 F (theta - theta_start)^2 + eps`` (``F`` after the
      interval's last step), clamped at 0 (the authors' code: only positive influence counts)
      and summed over the task; an unfinished last interval is closed at :meth:`compute`.
      Over tasks ``s <- (s + s_task) / 2`` (the paper's averaging against growing rigidity),
      with the first task's score taken as is, as the authors' code does.

    :meth:`compute` returns ``F + s`` (Eq. 8's weight), the whole accumulated importance: the
    consumer replaces its weight by it (``QuadraticPenalty`` in ``"ema"`` mode with
    ``alpha=0``). With ``normalize`` (the authors' code) each of ``F`` and ``s`` is first
    min-max normalised to [0, 1] over all parameters together,
    ``(x - min x) / (max x - min x + 1e-32)``, so the weight lies in [0, 2]; the running raw
    ``F`` and ``s`` are kept. With ``score=False`` it is EWC++'s Fisher alone.

    Args:
        alpha: weight of the *new* squared gradient in the Fisher's moving average (the
            paper's alpha; FACIL's default 0.5).
        eps: the damping of the score's denominator (FACIL's ``damping``, 0.1).
        interval: steps per score interval (the paper's ``Delta t``; 10 in the authors' code).
        score: add the path score (False: the Fisher alone, EWC++).
        normalize: min-max normalise ``F`` and ``s`` each to [0, 1] over all parameters
            before adding them (the authors' code; False: the raw sum, as FACIL).
        total_gradient: as :class:`PathIntegral` (keep the penalty's part of the gradient).
    """

    name = "rwalk"

    def __init__(
        self,
        alpha: float = 0.5,
        eps: float = 0.1,
        interval: int = 10,
        score: bool = True,
        normalize: bool = True,
        total_gradient: bool = False,
    ) -> None:
        if not eps > 0:
            raise ValueError(f"eps must be positive, got {eps}")
        super().__init__(xi=eps, total_gradient=total_gradient)
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        if int(interval) != interval or interval < 1:
            raise ValueError(f"interval must be a positive integer, got {interval}")
        self.alpha = float(alpha)
        self.eps = float(eps)
        self.interval = int(interval)
        self.score = bool(score)
        self.normalize = bool(normalize)
        self.fisher: ImportanceDict = {}
        self.task_score: ImportanceDict = {}
        self.mean_score: ImportanceDict = {}
        self.steps = 0  # steps of the current interval
        self.n_tasks = 0

    def setup(self, params, regularizer_grad=None) -> None:
        super().setup(params, regularizer_grad)
        self.fisher, self.task_score, self.mean_score = {}, {}, {}
        self.steps = self.n_tasks = 0

    def before_task(self, task: Task) -> None:
        super().before_task(task)  # omega = 0; start (of the interval) = prev = theta
        self.task_score = {n: torch.zeros_like(w) for n, w in self.omega.items()}
        self.steps = 0

    def _accumulate(self, name: str, p: Tensor, g: Tensor) -> None:
        super()._accumulate(name, p, g)  # Eq. 7's numerator: Delta L += -g * Delta theta
        sq = g.float().square()
        old = self.fisher.get(name)
        # Eq. 6 (EWC++): F <- alpha F_new + (1 - alpha) F_old
        self.fisher[name] = sq if old is None else self.alpha * sq + (1 - self.alpha) * old

    def _stepped(self) -> None:
        self.steps += 1
        if self.steps == self.interval:
            self._close_interval()

    @torch.no_grad()
    def _close_interval(self) -> None:
        """Eq. 7 for the interval that ends now; ``omega`` and ``start`` restart."""
        for n, p in self.params.items():
            f = self.fisher.get(n)
            if f is None:  # never had a gradient: no score
                f = torch.zeros_like(self.omega[n])
            dist = 0.5 * f * (p.detach() - self.start[n]).float().square() + self.eps
            self.task_score[n] += (self.omega[n] / dist).clamp_min(0)
            self.omega[n].zero_()
            self.start[n].copy_(p)
        self.steps = 0

    @torch.no_grad()
    def compute(self, model: nn.Module, task: Task, heads: str = "task") -> ImportanceDict:
        if self.steps:
            self._close_interval()
        for n, s in self.task_score.items():
            old = self.mean_score.get(n)
            # s <- (s_old + s_task) / 2; the first task's score as is (the authors' code)
            self.mean_score[n] = s.clone() if old is None else (old + s) / 2
            s.zero_()
        self.n_tasks += 1
        zeros = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in self.params.items()}
        fisher = {n: self.fisher.get(n, zeros[n]) for n in self.params}
        score = {n: self.mean_score.get(n, zeros[n]) for n in self.params}
        if self.normalize:  # the authors' code: F and s each to [0, 1] before the sum
            fisher, score = min_max_normalize(fisher), min_max_normalize(score)
        if not self.score:
            return {n: f.clone() for n, f in fisher.items()}
        return {n: fisher[n] + score[n] for n in self.params}

    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "fisher": self.fisher,
            "task_score": self.task_score,
            "mean_score": self.mean_score,
            "steps": self.steps,
            "n_tasks": self.n_tasks,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        for key in ("fisher", "task_score", "mean_score"):
            setattr(self, key, {n: t.clone() for n, t in state[key].items()})
        self.steps = state["steps"]
        self.n_tasks = state["n_tasks"]
