"""TinyNet, WSN's network for TinyImageNet (Kang et al., ICML 2022, Table 2; the official
``networks/tinynet.py`` with the layer list of ``networks/tiny/modelfactory.py``, from La-MaML /
FS-DGPM).

Four 3x3 convs of ``channels`` (160), stride 2, padding 1, each followed by a ReLU; flatten;
two linear layers of ``hidden`` (640) with ReLU. A 3x64x64 input leaves a 160x4x4 map, so fc1 has
2560 inputs; without biases the net has 2,743,520 weights. The official code has no biases and no
active BatchNorm (its ``bn_flag`` is off) and dropout 0; ``batch_norm`` puts a BN between every
layer and its ReLU for the WSN-style (statistics-free) or ordinary variant.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from retain.models.layers import batch_norm as make_batch_norm
from retain.models.layers import image_shape


def _strided(size: int) -> int:
    """Side after a 3x3 conv with stride 2 and padding 1."""
    return (size - 1) // 2 + 1


class TinyNet(nn.Module):
    """WSN TinyNet: 4 stride-2 3x3 convs of ``channels`` + 2 linear layers of ``hidden``.

    Args:
        input_shape: ``(C, H, W)`` (3x64x64 for TinyImageNet); any size works.
        channels: channels of every conv (160 in WSN).
        hidden: width of fc1 and fc2 (640 in WSN).
        drop1: dropout after the last conv (0 in the official code).
        drop2: dropout after fc1 (0 in the official code).
        batch_norm: ``None`` (official), ``"affine"`` or ``"stats_free"`` (WSN-style).
        bias: whether conv and linear layers have a bias (official: no).

    Attributes:
        out_features: ``hidden``.
        conv1 ... conv4, linear1, linear2: the weight layers, named as in the official code.
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        channels: int = 160,
        hidden: int = 640,
        drop1: float = 0.0,
        drop2: float = 0.0,
        batch_norm: str | None = None,
        bias: bool = False,
    ) -> None:
        super().__init__()
        in_ch, height, width = image_shape(input_shape, type(self).__name__)
        self.input_shape = (in_ch, height, width)
        h, w = height, width
        for _ in range(4):
            h, w = _strided(h), _strided(w)
        self.flat_features = channels * h * w

        def norm(n: int, dims: int) -> nn.Module:
            return nn.Identity() if batch_norm is None else make_batch_norm(batch_norm, n, dims)

        self.conv1 = nn.Conv2d(in_ch, channels, 3, stride=2, padding=1, bias=bias)
        self.conv2 = nn.Conv2d(channels, channels, 3, stride=2, padding=1, bias=bias)
        self.conv3 = nn.Conv2d(channels, channels, 3, stride=2, padding=1, bias=bias)
        self.conv4 = nn.Conv2d(channels, channels, 3, stride=2, padding=1, bias=bias)
        self.bn1, self.bn2 = norm(channels, 2), norm(channels, 2)
        self.bn3, self.bn4 = norm(channels, 2), norm(channels, 2)
        self.linear1 = nn.Linear(self.flat_features, hidden, bias=bias)
        self.linear2 = nn.Linear(hidden, hidden, bias=bias)
        self.bn_l1, self.bn_l2 = norm(hidden, 1), norm(hidden, 1)
        self.drop1 = nn.Dropout(drop1)
        self.drop2 = nn.Dropout(drop2)
        self.out_features: int = hidden

    def forward(self, x: Tensor) -> Tensor:
        h = self.bn1(self.conv1(x)).relu()
        h = self.bn2(self.conv2(h)).relu()
        h = self.bn3(self.conv3(h)).relu()
        h = self.drop1(self.bn4(self.conv4(h)).relu())
        h = h.flatten(1)
        h = self.drop2(self.bn_l1(self.linear1(h)).relu())
        return self.bn_l2(self.linear2(h)).relu()
