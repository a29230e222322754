"""The small AlexNet-like network of HAT (Serra et al., ICML 2018), also used by SPG (Konishi et
al., ICML 2023) and, with BatchNorm and without biases, by WSN (Kang et al., ICML 2022).

Layers for an input of side ``s`` (the kernels scale with the image as in HAT):

=====  ==============================================  ================================
c1     Conv(C -> 64, kernel s//8) + bias               ReLU, drop1, max-pool 2
c2     Conv(64 -> 128, kernel s//10) + bias            ReLU, drop1, max-pool 2
c3     Conv(128 -> 256, kernel 2) + bias               ReLU, drop2, max-pool 2
fc1    Linear(256 * h * w -> nhid)                     ReLU, drop2
fc2    Linear(nhid -> nhid)                            ReLU, drop2
=====  ==============================================  ================================

Kernels are 4/3/2 for 32 px (CIFAR, TinyImageNet resized) and 3/2/2 for 28 px (F-EMNIST); both
leave a 2x2x256 map, so fc1 has 1024 inputs. With ``batch_norm`` set, a BatchNorm sits between
every conv/linear and its ReLU (WSN's order: layer, BN, ReLU, dropout, pool).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from retain.models.layers import batch_norm as make_batch_norm
from retain.models.layers import image_shape


def _valid_conv_then_pool(size: int, kernel: int) -> int:
    """Spatial size after an unpadded stride-1 conv of ``kernel`` and a 2x2 max-pool."""
    return (size - kernel + 1) // 2


class AlexNet(nn.Module):
    """HAT/SPG AlexNet-like backbone: 3 conv layers (64/128/256) and 2 linear layers of ``nhid``.

    Args:
        input_shape: ``(C, H, W)``; kernel sizes come from ``min(H, W)`` (``s//8``, ``s//10``,
            2); an input too small for them (below 12 px, e.g. 8x8) is a ValueError.
        nhid: width of fc1 and fc2 (2048 in HAT and SPG).
        drop1: dropout after c1 and c2 (0.2 in HAT; SPG tunes it per benchmark).
        drop2: dropout after c3, fc1 and fc2 (0.5 in HAT; SPG tunes it per benchmark).
        batch_norm: ``None`` (HAT/SPG: no BN), ``"affine"`` (ordinary BN) or ``"stats_free"``
            (WSN: no affine parameters, no running statistics, batch statistics at test time).
        bias: whether conv and linear layers have a bias (HAT/SPG: yes; WSN: no).

    Attributes:
        out_features: ``nhid``.
        c1, c2, c3, fc1, fc2: the weight layers, named as in HAT and SPG.
        bn1 ... bn5: the BatchNorms after them (``nn.Identity`` when ``batch_norm`` is None).
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        nhid: int = 2048,
        drop1: float = 0.2,
        drop2: float = 0.5,
        batch_norm: str | None = None,
        bias: bool = True,
    ) -> None:
        super().__init__()
        channels, height, width = image_shape(input_shape, "AlexNet")
        side = min(height, width)
        kernels = (side // 8, side // 10, 2)
        h, w = height, width
        for k in kernels:
            if k < 1 or h - k + 1 < 2 or w - k + 1 < 2:
                raise ValueError(
                    f"a {height}x{width} input is too small for AlexNet (kernels {kernels})"
                )
            h, w = _valid_conv_then_pool(h, k), _valid_conv_then_pool(w, k)
        self.input_shape = (channels, height, width)
        self.kernel_sizes = kernels
        self.flat_features = 256 * h * w

        self.c1 = nn.Conv2d(channels, 64, kernels[0], bias=bias)
        self.c2 = nn.Conv2d(64, 128, kernels[1], bias=bias)
        self.c3 = nn.Conv2d(128, 256, kernels[2], bias=bias)
        self.fc1 = nn.Linear(self.flat_features, nhid, bias=bias)
        self.fc2 = nn.Linear(nhid, nhid, bias=bias)

        def norm(n: int, dims: int) -> nn.Module:
            return nn.Identity() if batch_norm is None else make_batch_norm(batch_norm, n, dims)

        self.bn1, self.bn2, self.bn3 = norm(64, 2), norm(128, 2), norm(256, 2)
        self.bn4, self.bn5 = norm(nhid, 1), norm(nhid, 1)
        self.drop1 = nn.Dropout(drop1)
        self.drop2 = nn.Dropout(drop2)
        self.pool = nn.MaxPool2d(2)
        self.out_features: int = nhid

    def forward(self, x: Tensor) -> Tensor:
        h = self.pool(self.drop1(self.bn1(self.c1(x)).relu()))
        h = self.pool(self.drop1(self.bn2(self.c2(h)).relu()))
        h = self.pool(self.drop2(self.bn3(self.c3(h)).relu()))
        h = h.flatten(1)
        h = self.drop2(self.bn4(self.fc1(h)).relu())
        return self.drop2(self.bn5(self.fc2(h)).relu())
