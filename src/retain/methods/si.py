"""Synaptic Intelligence: EWC's consumer with the online path-integral importance."""

from __future__ import annotations

from retain.core.importance import PathIntegral
from retain.methods.base import register
from retain.methods.ewc import EWC


@register
class SI(EWC):
    """SI (Zenke et al., ICML 2017): importance = a weight's share of the loss decrease.

    Zenke, Poole & Ganguli, "Continual Learning Through Synaptic Intelligence", ICML 2017.
    During task ``mu`` every step adds ``-g_k * Delta theta_k`` to ``omega_k`` (Eq. 3, with
    ``g`` the gradient of the unregularised task loss, as the official code); at the end of
    the task ``Omega_k += omega_k / ((Delta_k)^2 + xi)`` (Eq. 5, ``Delta_k`` the change of
    ``theta_k`` over the task; Omega clamped at 0, the official code's ReLU) and later tasks
    minimise ``L_mu + c * sum_k Omega_k (theta~_k - theta_k)^2`` (Eq. 4, ``theta~`` the
    parameters at the end of the previous task). See
    :class:`~retain.core.importance.PathIntegral`.

    Args:
        c: the regularisation strength.
        xi: the damping; the paper used 1e-3 (split MNIST, CIFAR) and 0.1 (permuted MNIST).
        protect, loss_heads: as :class:`~retain.methods.ewc.EWC`; the path integral covers
            exactly the penalised parameters.

    Deviations and choices: docs/methods/ewc.md#si
    """

    name = "si"
    scale = 1.0
    offline_mode = "sum"
    clamp_min = 0.0

    def __init__(
        self,
        c: float = 1.0,
        xi: float = 1e-3,
        protect: str = "auto",
        loss_heads: str = "task",
    ) -> None:
        super().__init__(
            lamb=c, importance=PathIntegral(xi=xi), protect=protect, loss_heads=loss_heads
        )
        self.c = c
        self.xi = xi
