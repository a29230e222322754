"""SPG: soft-masking of parameter-level gradient flow (Konishi et al., ICML 2023)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from retain.core.importance import Importance, ImportanceDict, make_importance
from retain.core.masks import FrozenElements
from retain.core.spg_importance import SPGImportance, spg_normalize
from retain.data.benchmark import Task
from retain.methods.base import Batch, Method, register

MASKED = ("auto", "backbone", "all")
NORMALIZE = ("auto", "spg", "positive", "none")


class GradientSoftMask:
    """The soft gradient mask consumer: ``g'_i = (1 - gamma^{<=t-1}_i) g_i`` (Sec. 3.2) with the
    accumulated importance ``gamma^{<=t} = max(gamma^t, gamma^{<=t-1})`` (Eq. 4).

    Any estimator in ``[0, 1]`` plugs in (SPG's gradient importance, a normalised Fisher for
    SPG-FI). With ``threshold`` it is the appendix's hard mask (HPG): importance above the
    threshold blocks the gradient completely (factor 0), the rest passes unchanged (factor 1).

    Only ``gamma`` (one float tensor per parameter) is stored; the real-valued accumulation is
    kept in the hard variant too (thresholding commutes with the elementwise max).
    """

    def __init__(self, params: Mapping[str, Tensor], threshold: float | None = None) -> None:
        if threshold is not None and not 0.0 <= threshold < 1.0:
            raise ValueError(f"threshold must be in [0, 1), got {threshold}")
        self.params = dict(params)
        self.threshold = threshold
        self.gamma: ImportanceDict = {}

    @property
    def active(self) -> bool:
        return bool(self.gamma)

    @torch.no_grad()
    def consolidate(self, importance: Mapping[str, Tensor]) -> None:
        """Eq. 4: ``gamma <- max(gamma, importance)``. Parameters missing from ``importance``
        get 0 (nothing new to protect)."""
        for n, p in self.params.items():
            f = importance.get(n)
            f = torch.zeros_like(p, dtype=torch.float32) if f is None else f.detach().float()
            if f.shape != p.shape:
                raise ValueError(f"importance of {n} has shape {tuple(f.shape)}, not {p.shape}")
            if f.numel() and (f.min() < 0 or f.max() > 1):
                raise ValueError(f"importance of {n} is outside [0, 1]; normalise it first")
            old = self.gamma.get(n)
            self.gamma[n] = f.clone() if old is None else torch.maximum(old, f)

    def blocked(self, name: str) -> Tensor:
        """Hard variant: where the gradient of ``name`` is blocked (``gamma > threshold``)."""
        assert self.threshold is not None
        return self.gamma[name] > self.threshold

    def effective(self, name: str) -> Tensor:
        """The mask value ``gamma`` in the factor ``1 - gamma``: the importance itself, or its
        0/1 threshold in the hard variant."""
        if self.threshold is None:
            return self.gamma[name]
        return self.blocked(name).float()

    @torch.no_grad()
    def apply(self) -> None:
        """``p.grad <- (1 - gamma) * p.grad`` in place, for every parameter with a gradient."""
        for n, g in self.gamma.items():
            p = self.params[n]
            if p.grad is None:
                continue
            if self.threshold is None:
                p.grad.addcmul_(p.grad, g.to(p.grad.dtype), value=-1.0)  # g - gamma g
            else:
                p.grad.masked_fill_(self.blocked(n), 0.0)

    def mean(self) -> float:
        """Mean of the effective mask over all elements of all parameters."""
        total = sum(g.numel() for g in self.gamma.values())
        s = sum(float(self.effective(n).double().sum()) for n in self.gamma)
        return s / total if total else 0.0

    def blocked_fraction(self, atol: float = 1e-6) -> dict[str, float]:
        """Fraction of parameters fully blocked (effective ``gamma >= 1 - atol``) per layer (the
        module holding the parameters: weight and bias together) and ``"total"``, as the
        paper's Tables 5 and 7."""
        counts: dict[str, list[int]] = {}
        for n in self.gamma:
            layer = n.rsplit(".", 1)[0] if "." in n else n
            c = counts.setdefault(layer, [0, 0])
            c[0] += int((self.effective(n) >= 1.0 - atol).sum())
            c[1] += self.gamma[n].numel()
        out = {k: c[0] / c[1] if c[1] else 0.0 for k, c in counts.items()}
        blocked, total = sum(c[0] for c in counts.values()), sum(c[1] for c in counts.values())
        out["total"] = blocked / total if total else 0.0
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"gamma": self.gamma, "threshold": self.threshold}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.gamma = {n: t.clone() for n, t in state["gamma"].items()}


@register
class SPG(Method):
    """SPG: soft-mask each parameter's gradient by its accumulated importance (task-aware).

    Konishi, Kuwahara, Ke, Nam, Shi, Liu: "Parameter-level soft-masking for continual
    learning", ICML 2023 (Section 3, Algorithm 1):

    * **Importance** after training task ``t`` (:class:`~retain.core.spg_importance.
      SPGImportance`): task ``t``'s training data passes through the trained model again
      without any update; per parameter tensor ``gamma^{t,tau} = |tanh(Norm(dL_{t,tau}/d
      theta))|`` (Eqs. 1-2) with the CE loss for ``tau = t`` and, for every earlier ``tau``
      (cross-head importance, CHI), the sum of head ``tau``'s logits on task ``t``'s data;
      ``gamma^t = max_tau gamma^{t,tau}`` (Eq. 3); accumulated as
      ``gamma^{<=t} = max(gamma^t, gamma^{<=t-1})`` (Eq. 4). Only ``gamma^{<=t}`` is kept (one
      tensor per parameter).
    * **Training** task ``t``: ``g' = (1 - gamma^{<=t-1}) g`` for every masked parameter
      (Sec. 3.2), in :meth:`after_backward`. No mask in the forward pass; the task id selects
      the head.
    * **Head**: as the official code (not in the paper), from the second task on the current
      task's head gradient is scaled by the scalar ``1 - mean(gamma^{<=t-1})`` (mean over every
      element of every masked parameter); ``scale_head=False`` leaves it alone.

    Where retain differs from the official code (see ``notes/method-details.md`` Sec. 10): the
    training batches are shuffled (the code never shuffles, a bug); Eq. 2's ``eps`` is added;
    there is no best-validation restore (the importance is taken from the model after the last
    epoch); the importance pass runs in train mode as the code (dropout on;
    ``importance_eval_mode=True`` for eval mode) but never changes BatchNorm statistics.
    The official net has no BatchNorm; with one, its affine parameters are soft-masked like
    any other, but its running statistics follow whatever task is being trained (a known
    source of forgetting that no gradient mask can prevent).

    Variants (configuration, not copies):

    * ``chi=False``: the paper's "-CHI" ablation (``gamma^t = gamma^{t,t}``).
    * ``importance_epoch=n``: importance from the model after epoch ``n`` of each task
      ("@en", Table 6) instead of after the last epoch (if a task has ``<= n`` epochs, after
      the last one).
    * ``importance="fisher"``: SPG-FI, EWC's Fisher as the soft mask; any estimator of
      :data:`~retain.core.importance.ESTIMATORS` works. Its values are mapped to ``[0, 1]``
      by the same per-tensor ``|tanh(Norm(.))|`` (``normalize="auto"``): the paper's
      substitution taken literally. For an estimate that is never negative (a Fisher) this is
      not monotone: a value below the tensor's mean gets ``|tanh((F - mean) / std)| > 0``,
      so the least important weights are partly held too (about 0.2-0.3 at ``F = 0`` for a
      heavy-tailed Fisher). ``normalize="positive"`` maps with ``max(tanh(Norm(.)), 0)``
      instead: below-mean values are free, the rest as SPG.
    * ``threshold=h``: HPG, the appendix's hard mask: gradients of parameters with
      ``gamma^{<=t-1} > h`` are zeroed, the others untouched; blocked values are also restored
      after every step, so they stay exact under weight decay and momentum (for that, a copy
      of the masked parameters is held during a task).
    * EWC-GI is EWC with this importance: ``ewc(importance="spg", importance_args=
      {"accumulate": True}, online=True, alpha=0.0)``.

    The soft mask scales the loss gradient only: an optimiser's weight decay (added inside
    ``step``) still shrinks a fully blocked weight. The paper and the shipped configs use none;
    the hard mask (``threshold``) restores blocked values after every step and is exact.

    :meth:`extra_metrics` reports, after every task, the fraction of parameters fully blocked
    (effective ``gamma >= 1 - blocked_atol``) per layer and in total (Tables 5 and 7), and the
    mean of the mask.

    Args:
        chi: cross-head importance (SPG's estimator only).
        importance: ``"spg"`` (default), another registered estimator name, or an instance.
        importance_args: keyword options of the estimator (for ``"spg"``: ``eps``,
            ``batch_size``, ``max_samples``, ...; they override ``chi`` and
            ``importance_eval_mode``).
        importance_epoch: take the importance after this epoch of each task (None: after the
            last epoch).
        importance_eval_mode: compute SPG's importance in eval mode (SPG's estimator only).
        threshold: hard-mask threshold (None: soft mask, SPG).
        scale_head: scale the current head's gradient by ``1 - mean(gamma)`` (official code).
        masked: which parameters get the mask: ``"backbone"``, ``"all"``, or ``"auto"``
            (default: the backbone, plus the head when it is shared by all tasks). Per-task
            heads are trained only with their own task.
        normalize: how estimates become a mask in ``[0, 1]``: ``"spg"`` (``|tanh(Norm(.))|``
            per tensor, Eqs. 1-2), ``"positive"`` (``max(tanh(Norm(.)), 0)``, monotone for
            estimates that are never negative), ``"none"`` (already in ``[0, 1]``),
            ``"auto"`` (``"none"`` for SPG's estimator, ``"spg"`` otherwise).
        blocked_atol: tolerance of "fully blocked".
    """

    name = "spg"

    def __init__(
        self,
        chi: bool = True,
        importance: str | Importance = "spg",
        importance_args: dict[str, Any] | None = None,
        importance_epoch: int | None = None,
        importance_eval_mode: bool = False,
        threshold: float | None = None,
        scale_head: bool = True,
        masked: str = "auto",
        normalize: str = "auto",
        blocked_atol: float = 1e-6,
    ) -> None:
        super().__init__(loss_heads="task")
        if masked not in MASKED:
            raise ValueError(f"masked must be one of {', '.join(MASKED)}, got {masked!r}")
        if normalize not in NORMALIZE:
            raise ValueError(f"normalize must be one of {', '.join(NORMALIZE)}, got {normalize!r}")
        if importance_epoch is not None and importance_epoch < 1:
            raise ValueError(f"importance_epoch must be >= 1, got {importance_epoch}")
        if threshold is not None and not 0.0 <= threshold < 1.0:
            raise ValueError(f"threshold must be in [0, 1), got {threshold}")
        args = dict(importance_args or {})
        if importance == "spg":
            args = {"chi": chi, "eval_mode": importance_eval_mode, **args}
        elif not chi or importance_eval_mode:
            raise ValueError("chi and importance_eval_mode are options of SPG's own estimator")
        self.estimator = make_importance(importance, **args)
        if normalize == "auto":
            normalize = "none" if isinstance(self.estimator, SPGImportance) else "spg"
        elif normalize != "none" and isinstance(self.estimator, SPGImportance):
            raise ValueError(
                "SPG's own importance is already normalised (Eqs. 1-2): normalize must be "
                f"'auto' or 'none' with it, got {normalize!r}"
            )
        self.normalize = normalize
        self.importance_epoch = importance_epoch
        self.threshold = threshold
        self.scale_head = scale_head
        self.masked = masked
        self.blocked_atol = blocked_atol
        self.mask: GradientSoftMask | None = None
        self.history: list[dict[str, Any]] = []
        # per task: epochs started, importance taken early (importance_epoch), caches
        self._epochs = 0
        self._early: ImportanceDict | None = None
        self._head_params: list[nn.Parameter] = []
        self._head_scale = 1.0
        self._freezer = FrozenElements()

    # ------------------------------------------------------------------ setup
    def setup(self, model, info) -> None:
        super().setup(model, info)
        masked = self.masked
        if masked == "auto":
            masked = "all" if model.shared_head else "backbone"
        module = model if masked == "all" else model.backbone
        prefix = "" if masked == "all" else "backbone."
        params = {prefix + n: p for n, p in module.named_parameters() if p.requires_grad}
        self.mask = GradientSoftMask(params, self.threshold)
        self.estimator.setup(params)
        self.history = []

    def _prepare(self, task_id: int) -> None:
        """Per-task caches from ``gamma^{<=t-1}``: the head's scale and the hard freeze."""
        assert self.model is not None and self.mask is not None
        in_mask = {id(p) for p in self.mask.params.values()}
        heads = self.model.head_parameters([task_id])
        self._head_params = [p for p in heads if id(p) not in in_mask]
        active = self.mask.active
        self._head_scale = 1.0 - self.mask.mean() if (self.scale_head and active) else 1.0
        self._freezer.clear()
        if self.threshold is not None and active:
            for n, p in self.mask.params.items():
                self._freezer.freeze(p, self.mask.blocked(n))

    def before_task(self, task: Task) -> None:
        super().before_task(task)
        self.estimator.before_task(task)
        self._epochs = 0
        self._early = None
        self._prepare(task.id)

    # ------------------------------------------------------------------ training
    def batches(self, task: Task, batch_size: int, generator: torch.Generator) -> Iterator[Batch]:
        """The base batches; counts epochs so that ``importance_epoch`` can take the importance
        once epoch ``n`` has finished (at the start of epoch ``n + 1``)."""
        self._epochs += 1
        n = self.importance_epoch
        if n is not None and self._epochs == n + 1 and self._early is None:
            self._early = self._importance(task)
        yield from super().batches(task, batch_size, generator)

    def after_backward(self) -> None:
        assert self.mask is not None
        self.mask.apply()
        if self._head_scale != 1.0:
            for p in self._head_params:
                if p.grad is not None:
                    p.grad.mul_(self._head_scale)

    def after_step(self) -> None:
        self._freezer.restore()
        self.estimator.after_step()

    # ------------------------------------------------------------------ consolidation
    def _importance(self, task: Task) -> ImportanceDict:
        """``gamma^t`` in ``[0, 1]`` for every masked parameter (Eqs. 1-3)."""
        assert self.model is not None
        imp = self.estimator.compute(self.model, task, self.loss_heads)
        if self.normalize in ("spg", "positive"):
            eps = getattr(self.estimator, "eps", 1e-12)
            signed = self.normalize == "positive"
            imp = {n: spg_normalize(v, eps, signed=signed).clamp_(min=0) for n, v in imp.items()}
        return imp

    def after_task(self, task: Task) -> None:
        assert self.mask is not None
        gamma_t = self._early if self._early is not None else self._importance(task)
        self._early = None
        self.mask.consolidate(gamma_t)  # Eq. 4
        self.history.append(
            {
                "task": task.id,
                "blocked": self.mask.blocked_fraction(self.blocked_atol),
                "mean_importance": self.mask.mean(),
            }
        )
        self._freezer.clear()

    def extra_metrics(self) -> dict[str, Any]:
        """Per task: fraction of fully blocked parameters per layer and in total, mean mask."""
        if not self.history:
            return {}
        return {
            "blocked": [h["blocked"] for h in self.history],
            "blocked_total": self.history[-1]["blocked"]["total"],
            "mean_importance": [h["mean_importance"] for h in self.history],
        }

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        assert self.mask is not None
        return {
            **super().state_dict(),
            "mask": self.mask.state_dict(),
            "estimator": self.estimator.state_dict(),
            "history": self.history,
            "epochs": self._epochs,
            "early": self._early,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        assert self.mask is not None, "call setup() before load_state_dict()"
        super().load_state_dict(state)
        self.mask.load_state_dict(state["mask"])
        self.estimator.load_state_dict(state["estimator"])
        self.history = [dict(h) for h in state["history"]]
        self._epochs = state["epochs"]
        self._early = state["early"]
        if self.current_task >= 0:  # a run resumed inside a task gets no before_task
            self._prepare(self.current_task)
