"""Memory Aware Synapses: EWC's consumer with MAS importance and MAS's accumulation."""

from __future__ import annotations

from typing import Any

from retain.methods.base import register
from retain.methods.ewc import EWC


@register
class MAS(EWC):
    """MAS (Aljundi et al., ECCV 2018): importance = sensitivity of the output, not the loss.

    After each task, ``Omega_i = (1/N) sum_k |d ||F(x_k)||_2^2 / d theta_i|`` over the task's
    data (Sec. 3 of the paper; no labels needed; see
    :func:`~retain.core.importance.mas_importance`), and training later tasks minimises
    ``L_n(theta) + lambda * sum_i Omega_i (theta_i - theta*_i)^2`` (no 1/2, unlike EWC).
    Importances of successive tasks are summed and the anchor is the latest parameters, as
    in the official code; ``online=True`` uses FACIL's ``alpha`` average instead.

    It is :class:`~retain.methods.ewc.EWC` with another estimator, another scale and another
    accumulation: ``ewc(importance="mas")`` is EWC's penalty with MAS importance.

    Args:
        lamb: lambda (the paper's object-recognition value, 1, is the default).
        importance_args: options of :class:`~retain.core.importance.MASImportance`
            (``granularity``: ``"batch"``, the official code's, by default, or the paper's
            per-sample ``"sample"``; ``squared``; ``heads``; ...).
        online, alpha, protect, loss_heads: as :class:`~retain.methods.ewc.EWC`.

    Deviations and choices: docs/methods/ewc.md#mas
    """

    name = "mas"
    scale = 1.0
    offline_mode = "sum"

    def __init__(
        self,
        lamb: float = 1.0,
        importance_args: dict[str, Any] | None = None,
        online: bool = False,
        alpha: float | None = 0.5,
        protect: str = "auto",
        loss_heads: str = "task",
    ) -> None:
        super().__init__(
            lamb=lamb,
            importance="mas",
            importance_args=importance_args,
            online=online,
            alpha=alpha,
            protect=protect,
            loss_heads=loss_heads,
        )
