"""The documented loop of one's own (``retain.methods.base``'s docstring), for the tests that
drive a method's hooks without :func:`retain.fit`."""

from __future__ import annotations

import torch

from retain.data import Task
from retain.methods import Method


def train_task(
    method: Method,
    task: Task,
    generator: torch.Generator | None = None,
    *,
    epochs: int = 1,
    lr: float = 0.1,
    batch_size: int = 16,
    momentum: float = 0.0,
    steps: int | None = None,
    start: bool = True,
    finish: bool = True,
) -> None:
    """``before_task`` (unless ``start`` is False), ``epochs`` epochs of SGD through the hooks
    (at most ``steps`` batches in all), then ``after_task`` (unless ``finish`` is False).
    ``generator`` draws the batches (default: seeded with 0)."""
    assert method.model is not None
    if start:
        method.before_task(task)
    opt = torch.optim.SGD(method.trainable_parameters(task), lr=lr, momentum=momentum)
    generator = torch.Generator().manual_seed(0) if generator is None else generator
    done = 0
    for epoch in range(epochs):
        method.model.train()
        method.before_epoch(task, epoch)
        for batch in method.batches(task, batch_size, generator):
            if steps is not None and done == steps:
                break
            loss = method.loss(batch, task)
            opt.zero_grad()
            loss.backward()
            method.after_backward(batch, task)
            opt.step()
            method.after_step(batch, task)
            done += 1
    if finish:
        method.after_task(task)
