"""Riemannian Walk: EWC's consumer with EWC++'s online Fisher plus the KL-normalised path score."""

from __future__ import annotations

from retain.core.importance import RiemannianWalk
from retain.methods.base import register
from retain.methods.ewc import EWC


@register
class RWalk(EWC):
    """RWalk (Chaudhry et al., ECCV 2018): the penalty ``lambda sum (F + s)(theta - theta*)^2``.

    Chaudhry et al., "Riemannian Walk for Incremental Learning: Understanding Forgetting and
    Intransigence", ECCV 2018. ``F`` is EWC++'s Fisher, a moving average of the squared
    task-loss gradient over training iterations (Eq. 6, ``F <- alpha F_new + (1 - alpha) F``);
    ``s`` the path score (Eq. 7): every ``interval`` steps the loss change along the path,
    ``-sum g Delta theta``, divided by ``1/2 F Delta theta^2 + eps``, clamped at 0, summed over
    the task and averaged with the previous tasks' score. Training task ``k`` minimises
    ``L_k + lambda * sum_i (F_i + s_i)(theta_i - theta*_i)^2`` (Eq. 8), ``theta*`` the
    parameters at the end of task ``k - 1``. See
    :class:`~retain.core.importance.RiemannianWalk`.

    It is :class:`~retain.methods.ewc.EWC` with that estimator, scale 1 and the penalty in
    ``"ema"`` mode with ``alpha=0`` (the estimator's ``F + s`` replaces the weight, latest
    anchor); ``score=False`` is EWC++ (online EWC on the iteration-averaged Fisher). No
    exemplar memory: the paper's class-incremental runs add one (docs/methods/rwalk.md).
    Defaults (``lamb``, ``alpha``, ``eps``) are FACIL's ``r_walk``; ``normalize`` (on) is the
    authors' code, which makes ``lamb`` comparable across benchmarks.

    Args:
        lamb: lambda (FACIL's default 1).
        alpha: weight of the new squared gradient in the Fisher's moving average (FACIL's 0.5).
        eps: damping of the score's denominator (FACIL's ``damping``, 0.1).
        interval: steps per score interval (the paper's ``Delta t``; the authors' code: 10).
        score: add the path score (False: EWC++ alone).
        normalize: min-max normalise ``F`` and ``s`` each to [0, 1] over all penalised
            parameters before the sum (the authors' code, the default; False: raw ``F + s``,
            FACIL's, whose scale depends on the benchmark and batch size).
        protect, loss_heads: as :class:`~retain.methods.ewc.EWC`; the Fisher and the score
            cover exactly the penalised parameters.

    Deviations and choices: docs/methods/rwalk.md
    """

    name = "rwalk"
    scale = 1.0

    def __init__(
        self,
        lamb: float = 1.0,
        alpha: float = 0.5,
        eps: float = 0.1,
        interval: int = 10,
        score: bool = True,
        normalize: bool = True,
        protect: str = "auto",
        loss_heads: str = "task",
    ) -> None:
        estimator = RiemannianWalk(
            alpha=alpha, eps=eps, interval=interval, score=score, normalize=normalize
        )
        # alpha=0: the penalty takes the estimator's accumulated F + s as its weight (Eq. 8)
        super().__init__(
            lamb=lamb,
            importance=estimator,
            online=True,
            alpha=0.0,
            protect=protect,
            loss_heads=loss_heads,
        )
        self.fisher_alpha = estimator.alpha
        self.eps = estimator.eps
        self.interval = estimator.interval
        self.score = estimator.score
        self.normalize = estimator.normalize
