"""DER++: Dark Experience Replay plus cross-entropy on replayed labels."""

from __future__ import annotations

from retain.methods.base import register
from retain.methods.der import DER


@register
class DERpp(DER):
    """DER++: DER plus a cross-entropy on the labels of a second replayed batch.

    Buzzega, Boschini, Porrello, Abati & Calderara, "Dark Experience for General Continual
    Learning: a Strong, Simple Baseline", NeurIPS 2020, Eq. 7::

        L = CE(f(x), y) + alpha * || f(x') - z' ||^2 + beta * CE(f(x''), y''),

    ``(x', z')`` and ``(x'', y'')`` two independent batches from the reservoir buffer; ``z'``
    the logits stored when ``x'`` was seen. See :class:`~retain.methods.der.DER` for details.

    Args:
        memory_size: buffer slots.
        alpha: weight of the logit MSE.
        beta: weight of the replayed cross-entropy.
        minibatch_size: memory samples per term and step (default: the stream batch's size).
        loss_heads: ``"seen"`` (default, one growing head) or ``"task"``.

    Deviations and choices: docs/methods/der.md
    """

    name = "derpp"

    def __init__(
        self,
        memory_size: int = 200,
        alpha: float = 0.1,
        beta: float = 0.5,
        minibatch_size: int | None = None,
        loss_heads: str = "seen",
    ) -> None:
        super().__init__(memory_size, alpha, beta, minibatch_size, loss_heads)
