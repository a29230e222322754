"""Fully connected backbone for flattened inputs (permuted/rotated/split MNIST and the like).

The usual continual-learning MLPs are instances of it: 784-400-400 (the split-MNIST net of
Hsu et al., 2018, and van de Ven & Tolias, 2019, "Three scenarios for continual learning"),
784-100-100 without bias
(the PMNIST net of WSN, Kang et al., ICML 2022: ``MLP((1, 28, 28), hidden=(100, 100),
bias=False)``) and 784-2000-2000 (EideticNet's PMNIST net, Dronen & Balestriero, 2025, which
adds BatchNorm; not modelled here).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

from torch import Tensor, nn

from retain.models.layers import as_shape


class MLP(nn.Module):
    """Flatten, then ``Linear -> ReLU (-> Dropout)`` for every hidden layer.

    Args:
        input_shape: shape of one sample, e.g. ``(1, 28, 28)`` or ``784``; it is flattened.
        hidden: widths of the hidden layers (a list from YAML is fine). Empty means no layer:
            the backbone is the flattened input itself.
        dropout: dropout probability after every ReLU (0 disables it; no module is added).
        bias: whether the linear layers have a bias.

    Attributes:
        out_features: ``hidden[-1]`` (the flattened input size when ``hidden`` is empty).
        layers: the hidden ``nn.Linear`` layers, in order (for methods that work per layer).
    """

    def __init__(
        self,
        input_shape: int | Sequence[int],
        hidden: Sequence[int] = (400, 400),
        dropout: float = 0.0,
        bias: bool = True,
    ) -> None:
        super().__init__()
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.input_shape = as_shape(input_shape)
        self.hidden = tuple(int(h) for h in hidden)
        if any(h <= 0 for h in self.hidden):
            raise ValueError(f"hidden widths must be positive, got {list(hidden)}")
        self.in_features = math.prod(self.input_shape)
        widths = (self.in_features, *self.hidden)
        self.layers = nn.ModuleList(
            nn.Linear(w_in, w_out, bias=bias) for w_in, w_out in itertools.pairwise(widths)
        )
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.out_features: int = widths[-1]

    def forward(self, x: Tensor) -> Tensor:
        h = x.flatten(1)
        for layer in self.layers:
            h = self.dropout(layer(h).relu())
        return h
