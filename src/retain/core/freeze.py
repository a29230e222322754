"""Exact freezing: hold chosen entries of parameters at fixed values under any optimiser.

The one freezing mechanism of retain (PackNet, WSN, HAT, SPG's hard mask, Eidetic).
Zeroing a gradient is not enough: momentum, weight decay and AdamW's decoupled decay still
move an entry whose gradient is zero. A :class:`Freezer` therefore acts on both sides of
the optimiser step::

    loss.backward()
    freezer.mask_grads()   # held entries get no gradient: the optimiser state never sees one
    optimizer.step()
    freezer.restore()      # held entries get their values back, bit for bit

What is held comes in the form the method has it:

* an **element mask** (:meth:`Freezer.freeze`): the weights earlier tasks own (PackNet, WSN),
  those with an Eq. 4 factor of 0 (HAT), those above SPG's hard threshold;
* **whole slices** by index along a dimension (:meth:`Freezer.freeze_slices`,
  :meth:`Freezer.zero_slices`): rows (dim 0) or columns (dim 1) held at saved values or at
  zero, Eidetic's owned and pruned neurons (:class:`~retain.core.structured.ParamGuard`).

Holds are applied in the order they were added, so a later hold wins where two overlap (a
pruned column of an owned row is zero).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class Hold:
    """One held region of ``param``: an element mask (``dim`` None; ``where`` bool, shaped as
    the parameter) or indices ``where`` along ``dim``. ``values``: what the region is held
    at (the whole tensor for an element mask, the slices otherwise); None: zero."""

    param: Tensor
    where: Tensor
    values: Tensor | None
    dim: int | None = None


class Freezer:
    """Hold chosen entries of parameters at fixed values, exactly, under any optimiser:
    :meth:`mask_grads` after ``backward()``, :meth:`restore` after ``step()``."""

    def __init__(self) -> None:
        self.holds: list[Hold] = []

    def clear(self) -> None:
        self.holds = []

    def __len__(self) -> int:
        return len(self.holds)

    def freeze(self, param: Tensor, where: Tensor, values: Tensor | None = None) -> None:
        """Hold ``param[where]`` (a bool mask shaped as ``param``) at ``values[where]``
        (default: the current values). An empty mask holds nothing."""
        where = where.to(device=param.device, dtype=torch.bool)
        if where.shape != param.shape:
            raise ValueError(f"where has shape {tuple(where.shape)}, param {tuple(param.shape)}")
        if not bool(where.any()):
            return
        held = param.detach().clone() if values is None else values.detach().to(param).clone()
        self.holds.append(Hold(param, where, held))

    def freeze_slices(
        self, param: Tensor, index: Tensor, dim: int = 0, values: Tensor | None = None
    ) -> None:
        """Hold the slices ``index`` of ``param`` along ``dim`` (rows for 0, columns for 1)
        at ``values`` (shaped as ``param.index_select(dim, index)``; default: the current
        values). An empty index holds nothing."""
        if index.numel() == 0:
            return
        index = index.to(device=param.device, dtype=torch.long)
        if values is None:
            held = param.detach().index_select(dim, index)
        else:
            shape = (*param.shape[:dim], index.numel(), *param.shape[dim + 1 :])
            if tuple(values.shape) != shape:
                raise ValueError(f"values have shape {tuple(values.shape)}, not {shape}")
            held = values.detach().to(param).clone()
        self.holds.append(Hold(param, index, held, dim))

    def zero_slices(self, param: Tensor, index: Tensor, dim: int = 0) -> None:
        """Hold the slices ``index`` of ``param`` along ``dim`` at zero (pruned rows, and the
        columns that read pruned neurons)."""
        if index.numel() == 0:
            return
        self.holds.append(Hold(param, index.to(device=param.device, dtype=torch.long), None, dim))

    @torch.no_grad()
    def mask_grads(self) -> None:
        """Zero the gradients of every held entry."""
        for h in self.holds:
            g = h.param.grad
            if g is None:
                continue
            if h.dim is None:
                g.masked_fill_(h.where, 0.0)
            else:
                g.index_fill_(h.dim, h.where, 0)

    @torch.no_grad()
    def restore(self) -> None:
        """Write the held values back (after the optimiser step)."""
        for h in self.holds:
            p = h.param
            if h.dim is None:
                assert h.values is not None
                p.copy_(torch.where(h.where, h.values, p))
            elif h.values is None:
                p.index_fill_(h.dim, h.where, 0)
            else:
                p.index_copy_(h.dim, h.where, h.values)
