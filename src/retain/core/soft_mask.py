"""The soft gradient mask: a consumer of importance estimates (SPG, Konishi et al., ICML 2023).

Where the quadratic penalty (:mod:`retain.core.penalty`) turns an importance into a loss term
(EWC, MAS, SI), this consumer turns it into a factor on the gradient: after ``backward()``,
``g'_i = (1 - gamma^{<=t-1}_i) g_i`` (SPG Sec. 3.2) with ``gamma^{<=t}`` the elementwise
maximum of the tasks' importances in ``[0, 1]`` (SPG Eq. 4). SPG's own estimator
(:class:`~retain.core.spg_importance.SPGImportance`) or any other of
:data:`~retain.core.estimators.ESTIMATORS`, normalised into ``[0, 1]``
(:func:`~retain.core.spg_importance.spg_normalize`), plugs in.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from retain.core.importance import ImportanceDict


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
