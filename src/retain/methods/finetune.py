"""Fine-tuning: train each task in turn with no protection at all. The lower bound."""

from __future__ import annotations

from retain.methods.base import Method, register


@register
class Finetune(Method):
    """Plain SGD on the current task (cross-entropy on its head, see ``loss_heads``).

    Every other method should beat it; its task-agnostic BWT shows how much a network forgets.

    Deviations and choices: docs/methods/baselines.md#finetune
    """

    name = "finetune"
