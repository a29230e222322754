"""The LeNet-5 variants of the GPM line of work (Saha et al., ICLR 2021), used by WSN (Kang et
al., ICML 2022): Table 2, CIFAR-100 Superclass (``LeNet``) and Table 1, Omniglot Rotation
(``LargeLeNet``, the official code's ``SubnetLeNet_Large``, its ``--model large`` default).

Layers for a ``C x s x s`` input (``pool`` = max-pool, kernel 3, stride 2, padding 1: halves the
side, rounding up):

=====  ==========================================  ======================================
conv1  Conv(C -> c1, kernel 5, padding 2)          [BN], ReLU, drop1, pool
conv2  Conv(c1 -> c2, kernel 5, padding 2)         [BN], ReLU, drop1, pool
fc1    Linear(c2 * s/4 * s/4 -> h1)                [BN], ReLU, drop2
fc2    Linear(h1 -> h2)                            [BN], ReLU, drop2
=====  ==========================================  ======================================

``LeNet``: c = 20/50, h = 800/500 (3x32x32: fc1 has 50*8*8 = 3200 inputs; 2,986,500 weights).
``LargeLeNet``: c = 64/128, h = 2500/1500 (official input 1x32x32: fc1 has 128*8*8 = 8192 inputs;
24,436,400 weights). The official nets have no biases, no BatchNorm and dropout 0; the BN slot is
where WSN's own ``SubweightLenet`` puts its statistics-free BN (after the convs).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from retain.models.layers import batch_norm as make_batch_norm
from retain.models.layers import image_shape


def _pooled(size: int) -> int:
    """Side after a 3x3, stride-2, padding-1 max-pool."""
    return (size - 1) // 2 + 1


class LeNet(nn.Module):
    """GPM/WSN LeNet-5: 2 convs (5x5, ``channels``) and 2 linear layers (``hidden``).

    Args:
        input_shape: ``(C, H, W)``; any size of at least 1 px works (padded convs).
        channels: output channels of conv1 and conv2 (GPM/WSN: 20, 50).
        hidden: widths of fc1 and fc2 (GPM/WSN: 800, 500).
        drop1: dropout after conv1 and conv2 (0 in the official code).
        drop2: dropout after fc1 and fc2 (0 in the official code).
        batch_norm: ``None`` (official: no BN), ``"affine"`` or ``"stats_free"`` (WSN-style),
            after every conv/linear and before its ReLU.
        bias: whether conv and linear layers have a bias (official: no).

    Attributes:
        out_features: ``hidden[1]``.
        conv1, conv2, fc1, fc2: the weight layers, named as in the official code.
        bn1 ... bn4: the BatchNorms after them (``nn.Identity`` when ``batch_norm`` is None).
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        channels: Sequence[int] = (20, 50),
        hidden: Sequence[int] = (800, 500),
        drop1: float = 0.0,
        drop2: float = 0.0,
        batch_norm: str | None = None,
        bias: bool = False,
    ) -> None:
        super().__init__()
        in_ch, height, width = image_shape(input_shape, type(self).__name__)
        if len(channels) != 2 or len(hidden) != 2:
            raise ValueError(f"channels and hidden need 2 sizes each, got {channels}, {hidden}")
        c1, c2 = (int(c) for c in channels)
        h1, h2 = (int(h) for h in hidden)
        self.input_shape = (in_ch, height, width)
        self.feature_side = (_pooled(_pooled(height)), _pooled(_pooled(width)))
        self.flat_features = c2 * self.feature_side[0] * self.feature_side[1]
        self.conv1 = nn.Conv2d(in_ch, c1, 5, padding=2, bias=bias)
        self.conv2 = nn.Conv2d(c1, c2, 5, padding=2, bias=bias)
        self.fc1 = nn.Linear(self.flat_features, h1, bias=bias)
        self.fc2 = nn.Linear(h1, h2, bias=bias)

        def norm(n: int, dims: int) -> nn.Module:
            return nn.Identity() if batch_norm is None else make_batch_norm(batch_norm, n, dims)

        self.bn1, self.bn2 = norm(c1, 2), norm(c2, 2)
        self.bn3, self.bn4 = norm(h1, 1), norm(h2, 1)
        self.pool = nn.MaxPool2d(3, stride=2, padding=1)
        self.drop1 = nn.Dropout(drop1)
        self.drop2 = nn.Dropout(drop2)
        self.out_features: int = h2

    def forward(self, x: Tensor) -> Tensor:
        h = self.pool(self.drop1(self.bn1(self.conv1(x)).relu()))
        h = self.pool(self.drop1(self.bn2(self.conv2(h)).relu()))
        h = h.flatten(1)
        h = self.drop2(self.bn3(self.fc1(h)).relu())
        return self.drop2(self.bn4(self.fc2(h)).relu())


class LargeLeNet(LeNet):
    """WSN's "large" LeNet for Omniglot Rotation (Table 1; official ``SubnetLeNet_Large``):
    convs of 64 and 128 channels, fc 2500-1500, otherwise :class:`LeNet`.

    Args: as :class:`LeNet`, with ``channels`` (64, 128) and ``hidden`` (2500, 1500).
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        channels: Sequence[int] = (64, 128),
        hidden: Sequence[int] = (2500, 1500),
        drop1: float = 0.0,
        drop2: float = 0.0,
        batch_norm: str | None = None,
        bias: bool = False,
    ) -> None:
        super().__init__(input_shape, channels, hidden, drop1, drop2, batch_norm, bias)
