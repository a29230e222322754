"""The baseline of Dynamos (Varma et al. 2023, Eq. 8): its replay without the agents."""

from __future__ import annotations

from retain.methods.base import register
from retain.methods.dynamos import Dynamos


@register
class DynamosBase(Dynamos):
    """Dynamos' baseline (Eq. 8): its replay with logit consistency, without the agents.

    Varma, Arani & Zonooz, "Dynamically Modular and Sparse General Continual Learning",
    VISAPP 2023, Sec. 5.2, Eq. 8::

        L_base = CE(X_B, Y_B) + beta CE(X_M, Y_M) + alpha ||Z'_M - Z_M||^2,

    one memory batch for both memory terms. Everything else is Dynamos' (see
    :class:`~retain.methods.dynamos.Dynamos`): the buffer of correctly predicted samples with
    their logits, the warm-up, the separate stream and memory passes; the defaults are
    Dynamos' (Table 5, seq-MNIST, buffer 500).

    Args:
        memory_size: buffer slots.
        alpha: weight of the logit consistency.
        beta: weight of the memory cross-entropy.
        warmup, warmup_unit: see :class:`~retain.methods.dynamos.Dynamos`.
        minibatch_size: memory samples per step (default: the stream batch's size).
        separate_passes: see :class:`~retain.methods.dynamos.Dynamos`.
        loss_heads: ``"seen"`` (default, one growing head) or ``"task"``.

    Deviations and choices: docs/methods/dynamos.md#dynamos-base-eq-8
    """

    name = "dynamos-base"
    use_agents = False

    def __init__(
        self,
        memory_size: int = 500,
        alpha: float = 0.2,
        beta: float = 2.0,
        warmup: int = 10,
        warmup_unit: str = "iterations",
        minibatch_size: int | None = None,
        separate_passes: bool = True,
        loss_heads: str = "seen",
    ) -> None:
        super().__init__(
            memory_size=memory_size,
            alpha=alpha,
            beta=beta,
            warmup=warmup,
            warmup_unit=warmup_unit,
            minibatch_size=minibatch_size,
            separate_passes=separate_passes,
            loss_heads=loss_heads,
        )
