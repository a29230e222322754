"""SPG: soft-masking of parameter-level gradient flow (Konishi et al., ICML 2023)."""

from __future__ import annotations

from typing import Any

from torch import nn

from retain.core.estimators import make_importance
from retain.core.freeze import Freezer
from retain.core.importance import Importance, ImportanceDict, check_protect, protected_parameters
from retain.core.soft_mask import GradientSoftMask
from retain.core.spg_importance import SPGImportance, spg_normalize
from retain.data.benchmark import Task
from retain.methods.base import Batch, Method, register

NORMALIZE = ("auto", "spg", "positive", "none")


@register
class SPG(Method):
    """SPG: soft-mask each parameter's gradient by its accumulated importance (task-aware).

    Konishi, Kurokawa, Ono, Ke, Kim, Liu: "Parameter-Level Soft-Masking for Continual
    Learning", ICML 2023 (Section 3, Algorithm 1). After training task ``t``, per parameter
    tensor ``i`` (:class:`~retain.core.spg_importance.SPGImportance`)::

        gamma^{t,tau}_i = |tanh(Norm(dL_{t,tau} / d theta_i))|     (Eq. 1; |.| as the code)
        L_{t,tau} = CE(M_t(X_t), Y_t) if tau = t, else Sum(M_tau(X_t))  (Eq. 2; CHI)
        Norm(x) = (x - Mean(x)) / sqrt(Var(x) + eps)                     (Eq. 2)
        gamma^t_i = max_tau gamma^{t,tau}_i                              (Eq. 3)
        gamma^{<=t}_i = max(gamma^t_i, gamma^{<=t-1}_i)                  (Eq. 4)

    and while training task ``t``, in :meth:`after_backward`, ``g'_i = (1 - gamma^{<=t-1}_i)
    g_i`` (Eq. 5, Sec. 3.2; :class:`~retain.core.soft_mask.GradientSoftMask`); no mask in the
    forward pass. As the official code, the current head's gradient is also scaled by
    ``1 - mean(gamma^{<=t-1})`` from the second task on. :meth:`extra_metrics` reports the
    fraction of fully blocked parameters per layer and in total (Tables 5 and 7).

    Args:
        chi: cross-head importance (False: the paper's "-CHI" ablation; SPG's estimator only).
        importance: ``"spg"`` (default), another registered estimator name (``"fisher"``:
            SPG-FI), or an instance.
        importance_args: keyword options of the estimator (for ``"spg"``: ``eps``,
            ``batch_size``, ``max_samples``, ...; they override ``chi`` and
            ``importance_eval_mode``).
        importance_epoch: take the importance after this epoch of each task (the paper's
            "@en"; None: after the last epoch).
        importance_eval_mode: compute SPG's importance in eval mode (SPG's estimator only).
        threshold: hard-mask threshold (HPG, Appendix A.8; None: soft mask, SPG).
        scale_head: scale the current head's gradient by ``1 - mean(gamma)`` (official code).
        protect: which parameters get the mask: ``"backbone"``, ``"all"``, or ``"auto"``
            (default: the backbone, plus the head when it is shared by all tasks). Per-task
            heads are trained only with their own task
            (:func:`~retain.core.importance.protected_parameters`, as EWC's).
        normalize: how estimates become a mask in ``[0, 1]``: ``"spg"`` (``|tanh(Norm(.))|``
            per tensor, Eqs. 1-2), ``"positive"`` (``max(tanh(Norm(.)), 0)``, monotone for
            estimates that are never negative), ``"none"`` (already in ``[0, 1]``),
            ``"auto"`` (``"none"`` for SPG's estimator, ``"spg"`` otherwise).
        blocked_atol: tolerance of "fully blocked".

    Deviations and choices: docs/methods/spg.md
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
        protect: str = "auto",
        normalize: str = "auto",
        blocked_atol: float = 1e-6,
    ) -> None:
        super().__init__(loss_heads="task")
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
        self.protect = check_protect(protect)
        self.blocked_atol = blocked_atol
        self.mask: GradientSoftMask | None = None
        self.history: list[dict[str, Any]] = []
        # per task: importance taken early (importance_epoch), caches
        self._early: ImportanceDict | None = None
        self._head_params: list[nn.Parameter] = []
        self._head_scale = 1.0
        self._freezer = Freezer()

    # ------------------------------------------------------------------ setup
    def setup(self, model, info) -> None:
        super().setup(model, info)
        params = protected_parameters(model, self.protect, self.loss_heads)
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
        self._early = None
        self._prepare(task.id)

    def resume_task(self, task: Task) -> None:
        super().resume_task(task)
        self._prepare(task.id)

    # ------------------------------------------------------------------ training
    def before_epoch(self, task: Task, epoch: int) -> None:
        """``importance_epoch=n``: once epoch ``n`` has finished (before epoch ``n``, counted
        from 0), take the importance of the model as it is then."""
        n = self.importance_epoch
        if n is not None and epoch == n and self._early is None:
            self._early = self._importance(task)

    def after_backward(self, batch: Batch, task: Task) -> None:
        assert self.mask is not None
        self.mask.apply()
        if self._head_scale != 1.0:
            for p in self._head_params:
                if p.grad is not None:
                    p.grad.mul_(self._head_scale)

    def after_step(self, batch: Batch, task: Task) -> None:
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
            "early": self._early,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        assert self.mask is not None, "call setup() before load_state_dict()"
        super().load_state_dict(state)
        self.mask.load_state_dict(state["mask"])
        self.estimator.load_state_dict(state["estimator"])
        self.history = [dict(h) for h in state["history"]]
        self._early = state["early"]  # (older checkpoints also hold "epochs": not needed)
