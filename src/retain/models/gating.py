"""Dynamos agents and gated residual blocks (Varma, Arani, Zonooz, VISAPP 2023, Sec. 3.1).

An :class:`Agent` looks at the input of a convolutional layer and emits a channel-wise
attention vector ``v_l`` (Fig. 1, Table 3)::

    p = GAP(BN(Conv1x1(x)))                  # [N, C_out], "the original channel-length vector"
    s = sigmoid(W2 relu(W1 p))               # MLP C_out -> C_out/16 -> C_out
    v = p * s                                # channel-wise self-attention vector

Its keep probabilities are ``sigmoid(v / tau)`` (the probability layer of Eq. 1, a sigmoid
with temperature ``tau``, 0.15 in the paper) and the keep/drop actions ``a_l in {0,1}^C`` are
Bernoulli samples of them while training and ``p > 0.5`` at inference (Sec. 4), or samples at
inference too (``inference="sample"``, the trial-to-trial variability of Sec. 6.2).

A :class:`GatedBlock` wraps an existing :class:`~retain.models.resnet.BasicBlock` (its
parameters are used, not copied) and multiplies the actions after batch normalisation and
before the ReLU (Table 4), as the official code does::

    out1 = relu(bn1(conv1(x)) * a1)                    # a1 from agent1(x)
    out  = relu(bn2(conv2(out1)) * a2 + shortcut(x) * a2)   # a2 from agent2(out1)

The shortcut is gated by ``a2`` too (``gate_shortcut=True``, the official code; the paper does
not say). With all actions equal to one the block is exactly the ungated block.

:func:`gate_resnet` wraps the blocks of chosen stages of a ResNet in place; after every forward
pass each gated block holds a :class:`GateRecord` per agent (attention, actions) that a method
reads with :func:`collect_records`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from retain.models.resnet import BasicBlock

INFERENCE_MODES = ("threshold", "sample")


def bernoulli_log_prob(logits: Tensor, actions: Tensor) -> Tensor:
    """``log pi(a) = sum_i a_i log p_i + (1 - a_i) log(1 - p_i)`` with ``p = sigmoid(logits)``
    (Eq. 1 and the last line of Eq. 4), summed over the last dimension; computed stably as
    ``-BCEWithLogits(logits, a)``."""
    return -F.binary_cross_entropy_with_logits(logits, actions, reduction="none").sum(-1)


class Agent(nn.Module):
    """The self-attention network of one gated convolution (Fig. 1, Table 3).

    Args:
        in_channels: channels of the gated convolution's input (what the agent sees).
        out_channels: channels of the gated convolution's output (one action each).
        tau: temperature of the probability layer ``sigmoid(v / tau)``.
        reduction: hidden width of the MLP is ``max(1, out_channels // reduction)``.
    """

    def __init__(
        self, in_channels: int, out_channels: int, tau: float = 0.15, reduction: int = 16
    ) -> None:
        super().__init__()
        if tau <= 0:
            raise ValueError(f"tau must be positive, got {tau}")
        if reduction < 1:
            raise ValueError(f"reduction must be at least 1, got {reduction}")
        self.tau = float(tau)
        self.conv = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        hidden = max(1, out_channels // reduction)
        self.fc1 = nn.Linear(out_channels, hidden)
        self.fc2 = nn.Linear(hidden, out_channels)

    def forward(self, x: Tensor) -> Tensor:
        """The attention vector ``v`` ``[N, out_channels]``."""
        p = self.bn(self.conv(x)).mean(dim=(2, 3))
        s = torch.sigmoid(self.fc2(torch.relu(self.fc1(p))))
        return p * s

    def probability(self, v: Tensor) -> Tensor:
        """Keep probabilities ``sigmoid(v / tau)`` (Eq. 1's ``p_l``)."""
        return torch.sigmoid(v / self.tau)


@dataclass
class GateRecord:
    """What one agent did in the last forward pass: attention ``v`` ``[N, C]`` (with its
    graph), actions ``[N, C]`` (0/1 floats, no graph) and the agent's temperature."""

    attention: Tensor
    actions: Tensor
    tau: float

    @property
    def logits(self) -> Tensor:
        return self.attention / self.tau

    @property
    def probability(self) -> Tensor:
        return torch.sigmoid(self.logits)

    @property
    def log_prob(self) -> Tensor:
        """``log pi_l(a_l)`` per sample ``[N]`` (Eq. 4, summed over channels)."""
        return bernoulli_log_prob(self.logits, self.actions)

    @property
    def keep_ratio(self) -> Tensor:
        """``(1/c_l) sum_i a_{l,i}`` per sample ``[N]`` (Eq. 3)."""
        return self.actions.mean(1)


class GatedBlock(nn.Module):
    """A :class:`~retain.models.resnet.BasicBlock` whose two convolutions are gated by agents.

    Args:
        block: the block to gate (kept as ``self.block``; its parameters are shared).
        tau, reduction: see :class:`Agent`.
        threshold: inference keeps channel ``i`` when ``p_i > threshold`` (0.5 in the paper).
        inference: ``"threshold"`` (default) or ``"sample"`` (Bernoulli actions in eval mode).
        gate_shortcut: multiply the shortcut by the second gate's actions too (official code).
        detach_input: the agents see their inputs detached, so their losses train the agents
            only, not the backbone (the official code does not detach; default ``False``).

    Attributes:
        enabled: ``False`` bypasses the agents (plain block; Dynamos' warm-up).
        records: the two agents' :class:`GateRecord` of the last gated forward pass.
    """

    def __init__(
        self,
        block: BasicBlock,
        tau: float = 0.15,
        reduction: int = 16,
        threshold: float = 0.5,
        inference: str = "threshold",
        gate_shortcut: bool = True,
        detach_input: bool = False,
    ) -> None:
        super().__init__()
        if inference not in INFERENCE_MODES:
            raise ValueError(
                f"inference must be one of {', '.join(INFERENCE_MODES)}, got {inference!r}"
            )
        self.block = block
        channels = block.conv1.out_channels
        self.agent1 = Agent(block.conv1.in_channels, channels, tau, reduction)
        self.agent2 = Agent(channels, channels, tau, reduction)
        self.threshold = float(threshold)
        self.inference = inference
        self.gate_shortcut = bool(gate_shortcut)
        self.detach_input = bool(detach_input)
        self.enabled = True
        self.records: tuple[GateRecord, GateRecord] | None = None

    @property
    def agents(self) -> tuple[Agent, Agent]:
        return self.agent1, self.agent2

    def __getstate__(self) -> dict:
        # the last forward's records (tensors with a graph) are not part of the module:
        # copying or pickling the model must not carry (or choke on) them
        state = self.__dict__.copy()
        state["records"] = None
        return state

    def choose(self, v: Tensor, agent: Agent) -> Tensor:
        """Actions from attention ``v``: Bernoulli(sigmoid(v / tau)) when training (or with
        ``inference="sample"``), else ``sigmoid(v / tau) > threshold``. No gradient."""
        p = agent.probability(v.detach())
        if self.training or self.inference == "sample":
            return torch.bernoulli(p)
        return (p > self.threshold).to(p.dtype)

    def forward(self, x: Tensor) -> Tensor:
        b = self.block
        if not self.enabled:
            self.records = None
            return b(x)
        d = self.detach_input
        v1 = self.agent1(x.detach() if d else x)
        a1 = self.choose(v1, self.agent1)
        out1 = (b.bn1(b.conv1(x)) * a1[:, :, None, None]).relu()
        v2 = self.agent2(out1.detach() if d else out1)
        a2 = self.choose(v2, self.agent2)
        g2 = a2[:, :, None, None]
        out = b.bn2(b.conv2(out1)) * g2
        short = b.shortcut(x)
        if self.gate_shortcut:
            short = short * g2
        self.records = (
            GateRecord(v1, a1, self.agent1.tau),
            GateRecord(v2, a2, self.agent2.tau),
        )
        return (out + short).relu()


def gate_resnet(
    backbone: nn.Module, stages: Sequence[int] | None = None, **options
) -> dict[str, GatedBlock]:
    """Wrap the ``BasicBlock`` s of ``backbone``'s stages ``stages`` (1-based; default: the
    last stage, Dynamos' "second block" of the reduced ResNet-18) in :class:`GatedBlock` s,
    in place. Blocks already gated are kept. ``options`` go to :class:`GatedBlock`.

    Returns ``{"layer2.0": block, ...}`` in forward order; each block has two agents, so the
    agents in order are ``layer2.0.conv1, layer2.0.conv2, layer2.1.conv1, ...``.
    """
    if not hasattr(backbone, "stages"):
        raise ValueError("gating needs a ResNet backbone (with .stages of BasicBlocks)")
    all_stages = list(backbone.stages)
    if stages is None:
        stages = [len(all_stages)]
    out: dict[str, GatedBlock] = {}
    for s in stages:
        if not 1 <= s <= len(all_stages):
            raise ValueError(f"stage {s} does not exist; the backbone has {len(all_stages)}")
        stage = all_stages[s - 1]
        for i, block in enumerate(stage):
            if not isinstance(block, GatedBlock):
                if not isinstance(block, BasicBlock):
                    raise ValueError(f"layer{s}.{i} is not a BasicBlock")
                block = GatedBlock(block, **options)
                stage[i] = block
            out[f"layer{s}.{i}"] = block
    return out


def collect_records(blocks: Iterable[GatedBlock]) -> list[GateRecord]:
    """The :class:`GateRecord` s of the last forward pass, agents in forward order (empty when
    the agents were bypassed). Clears them from the blocks."""
    out: list[GateRecord] = []
    for block in blocks:
        if block.records is not None:
            out.extend(block.records)
            block.records = None
    return out
