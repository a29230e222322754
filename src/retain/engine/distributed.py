"""Data-parallel training of one run on several processes, with ``torch.distributed``.

Launch any run with ``torchrun``; nothing else changes::

    torchrun --nproc_per_node=4 -m retain.cli run --config configs/spg/c10.yaml --out runs/c10

(or call :func:`retain.fit` from a script started by ``torchrun``). :func:`retain.fit` sees
``WORLD_SIZE > 1`` and joins the process group (NCCL on CUDA, Gloo on CPU); on CUDA process
``LOCAL_RANK`` uses GPU ``LOCAL_RANK``. Then:

- every process holds the whole model (process 0's weights, broadcast once), method state and
  benchmark, and draws the same batches (one seeded generator), so all processes agree on
  every batch;
- each process computes the method's loss on its contiguous shard of the batch
  (:func:`shard_bounds`); the gradients are weighted by the shard's share of the batch and
  summed over processes (:func:`reduce_gradients`) *before* ``method.after_backward``, so every
  gradient edit (SPG's soft mask, WSN's and PackNet's freezing, HAT's compensation) and every
  optimiser step sees the gradient of the whole batch, and the processes stay identical;
- BatchNorm statistics are broadcast from process 0 after every step, as
  ``DistributedDataParallel`` does by default (:func:`broadcast_batchnorm`), and the global
  random state after every epoch (:func:`sync_rng`);
- evaluation deals the evaluation batches round-robin and sums the correct counts;
- after-task work (importance passes, mask consolidation, exemplar selection) runs on every
  process over the whole task, with the same result everywhere;
- process 0 alone writes the run folder.

Why not ``DistributedDataParallel`` itself: its gradient reduction fires from the wrapper's
``forward``, while methods call the model's parts directly (backbone, heads, masked layers) and
edit gradients after ``backward``; one explicit all-reduce after ``backward`` keeps every method
unchanged. With one shard per process the result equals a one-process run up to the order of
floating-point sums, except that dropout draws its masks per shard and BatchNorm normalises
each shard by its own statistics (as in DDP without SyncBatchNorm).

Methods that fill a replay buffer from the training batches (ER, DER, DER++, A-GEM, Dynamos)
would fill a different buffer on every process, and Eidetic trains with a loop of its own:
:func:`fit` refuses them when ``WORLD_SIZE > 1`` (``Method.data_parallel``).
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import nn


def requested_world_size() -> int:
    """The number of processes the launcher (``torchrun``) started, from ``WORLD_SIZE``."""
    try:
        return max(int(os.environ.get("WORLD_SIZE", "1")), 1)
    except ValueError:
        raise ValueError(
            f"WORLD_SIZE must be an integer, got {os.environ['WORLD_SIZE']!r}"
        ) from None


def launched_rank() -> int:
    """This process's rank as the launcher set it (``RANK``), before the group is joined."""
    return int(os.environ.get("RANK", "0")) if requested_world_size() > 1 else 0


def active() -> bool:
    """Whether this process trains together with others."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def local_device(device: torch.device) -> torch.device:
    """On CUDA, process ``LOCAL_RANK``'s GPU when several processes train; else ``device``."""
    if device.type == "cuda" and device.index is None and requested_world_size() > 1:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def init_from_env(device: torch.device) -> bool:
    """Join the process group ``torchrun`` describes (``WORLD_SIZE``, ``RANK``,
    ``MASTER_ADDR``...) when there is more than one process and nobody joined it yet.
    Returns whether training is data-parallel."""
    if requested_world_size() > 1 and not dist.is_initialized():
        if not dist.is_available():
            raise ValueError("WORLD_SIZE > 1 but this PyTorch has no torch.distributed")
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return active()


def shard_bounds(n: int, index: int | None = None, size: int | None = None) -> tuple[int, int]:
    """Rows ``[lo, hi)`` of an ``n``-row batch that process ``index`` of ``size`` trains on:
    contiguous, sizes differing by at most one, in rank order."""
    index = rank() if index is None else index
    size = world_size() if size is None else size
    return n * index // size, n * (index + 1) // size


def reduce_gradients(params: list[nn.Parameter]) -> None:
    """Sum the (already shard-weighted) gradients of ``params`` over all processes, in one
    all-reduce per dtype. Every process must hold gradients for the same parameters."""
    grads = [p.grad for p in params if p.grad is not None]
    for dtype in {g.dtype for g in grads}:
        group = [g for g in grads if g.dtype == dtype]
        flat = torch.cat([g.reshape(-1) for g in group])
        dist.all_reduce(flat)
        offset = 0
        for g in group:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()


def broadcast_model(model: nn.Module) -> None:
    """Process 0's weights and buffers to every process (once, before training, as
    ``DistributedDataParallel`` does when it wraps a model): a model initialised differently
    on some process (an unseeded script) cannot make the processes drift apart."""
    for tensor in model.state_dict().values():
        dist.broadcast(tensor, src=0)


def broadcast_batchnorm(model: nn.Module) -> None:
    """Process 0's BatchNorm running statistics to every process."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            for buffer in module.buffers():
                dist.broadcast(buffer, src=0)


def sync_rng(device: torch.device) -> None:
    """Process 0's global random state (CPU, and ``device``'s on CUDA) to every process.
    Dropout on shards of unequal size draws unequal amounts; without this, what a method
    draws later (a random exemplar choice, a re-initialisation) would differ per process."""
    on = device if dist.get_backend() == "nccl" else torch.device("cpu")
    state = torch.get_rng_state().to(on)
    dist.broadcast(state, src=0)
    torch.set_rng_state(state.cpu())
    if device.type == "cuda":
        state = torch.cuda.get_rng_state(device).to(on)
        dist.broadcast(state, src=0)
        torch.cuda.set_rng_state(state.cpu(), device)


def sum_over_processes(t: torch.Tensor) -> torch.Tensor:
    """``t`` summed over all processes (in place); ``t`` itself when training alone."""
    if active():
        dist.all_reduce(t)
    return t
