"""Residual backbones: the CIFAR ResNet-18, the Dynamos reduced one and the ResNet-50 of
Eidetic Learning, with the ImageNet stem as an option.

Two stems (``stem=``):

* ``"cifar"`` (default): a 3x3 conv with stride 1 and no max-pool, the usual adaptation to
  small images, so a 32x32 input reaches the last stage at 4x4;
* ``"imagenet"``: He et al.'s 7x7 conv with stride 2 and a 3x3 max-pool with stride 2, so a
  224x224 input reaches the first stage at 56x56 and the last at 7x7 (Eidetic Learning's
  ResNet-18 on Imagenette).

Features are the global average pool of the last stage.

* ``ResNet18``: four stages of two blocks, ``nf, 2nf, 4nf, 8nf`` channels, strides 1/2/2/2.
  ``nf=64`` is the standard CIFAR ResNet-18 (used by ScrollNet, Yang et al., ICCV-W 2023, through
  FACIL); ``nf=20`` is the "reduced ResNet-18" of GEM/GPM used by WSN (Kang et al., ICML 2022)
  on 5-Datasets.
* ``ReducedResNet18``: the Dynamos backbone (Varma et al., VISAPP 2023, Sec. 5 and Table 4):
  the first two stages only, ``nf=32``, i.e. 32 and 64 channels.
* ``ResNet50``: 3/4/6/3 ``Bottleneck`` blocks (He et al., CVPR 2016, Table 1) of inner widths
  ``nf, 2nf, 4nf, 8nf``: the ResNet-50 of Eidetic Learning (Dronen & Balestriero 2025, Table 4,
  Sequential CIFAR-100), optionally with its 1x1 conv on every skip connection.

``ResNet18`` and ``ReducedResNet18`` are built from ``BasicBlock`` (He et al., CVPR 2016).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from retain.models.layers import batch_norm as make_batch_norm
from retain.models.layers import image_shape

INITS = ("kaiming", "default")
STEMS = ("cifar", "imagenet")


def make_stem(
    channels: int, width: int, stem: str, batch_norm: str
) -> tuple[nn.Conv2d, nn.Module, nn.Module]:
    """``(conv1, bn1, pool)`` of a ResNet: the CIFAR stem (3x3 conv, stride 1, no pool) or the
    ImageNet one (7x7 conv, stride 2, padding 3; 3x3 max-pool, stride 2, padding 1)."""
    if stem not in STEMS:
        raise ValueError(f"unknown stem {stem!r}; choose one of {', '.join(STEMS)}")
    if stem == "cifar":
        conv = nn.Conv2d(channels, width, 3, stride=1, padding=1, bias=False)
        return conv, make_batch_norm(batch_norm, width, 2), nn.Identity()
    conv = nn.Conv2d(channels, width, 7, stride=2, padding=3, bias=False)
    return conv, make_batch_norm(batch_norm, width, 2), nn.MaxPool2d(3, stride=2, padding=1)


class BasicBlock(nn.Module):
    """Two 3x3 convs with BN and a residual connection (He et al., CVPR 2016).

    ``out = relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``. The shortcut is a 1x1 conv
    (stride ``stride``) + BN when the shape changes or ``skip_conv`` is set (Eidetic Learning's
    ``f(x) + g(x)``, Dronen & Balestriero 2025, Sec. 6.1), else the identity.

    The parts are plain attributes so a method can re-wire the forward without touching the
    parameters, e.g. Dynamos multiplies a per-channel gate after ``bn1`` and after ``bn2``
    (and on ``shortcut(x)``), before the ReLUs.

    Args:
        in_channels: channels of the input.
        channels: channels of both convs and of the output.
        stride: stride of ``conv1`` and of the shortcut conv.
        batch_norm: ``"affine"`` or ``"stats_free"`` (see ``retain.models.layers``).
        skip_conv: a 1x1 conv + BN shortcut even where the identity would do.
    """

    def __init__(
        self,
        in_channels: int,
        channels: int,
        stride: int = 1,
        batch_norm: str = "affine",
        skip_conv: bool = False,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = make_batch_norm(batch_norm, channels, 2)
        self.conv2 = nn.Conv2d(channels, channels, 3, stride=1, padding=1, bias=False)
        self.bn2 = make_batch_norm(batch_norm, channels, 2)
        self.shortcut: nn.Module
        if skip_conv or stride != 1 or in_channels != channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, channels, 1, stride=stride, bias=False),
                make_batch_norm(batch_norm, channels, 2),
            )
        else:
            self.shortcut = nn.Identity()

    @property
    def has_projection(self) -> bool:
        """Whether the shortcut is a 1x1 conv + BN (rather than the identity)."""
        return not isinstance(self.shortcut, nn.Identity)

    def forward(self, x: Tensor) -> Tensor:
        out = self.bn1(self.conv1(x)).relu()
        out = self.bn2(self.conv2(out))
        return (out + self.shortcut(x)).relu()


class ResNet(nn.Module):
    """Stem (conv, BN, ReLU, optional max-pool) + stages of ``BasicBlock`` + global average pool.

    Stage ``i`` has ``blocks_per_stage`` blocks of ``widths[i]`` channels; its first block has
    stride ``strides[i]``. Stages are the attributes ``layer1``, ``layer2``, ... (also listed by
    ``stages``); the stem is ``conv1`` + ``bn1`` + ``pool`` (``nn.Identity`` for the CIFAR stem).

    Args:
        input_shape: ``(C, H, W)``; any size works (the pool is adaptive).
        widths: channels of each stage.
        strides: stride of the first block of each stage.
        blocks_per_stage: blocks in every stage.
        stem_width: channels of the stem conv (default ``widths[0]``).
        batch_norm: ``"affine"`` (default) or ``"stats_free"`` (WSN-style BN).
        stem: ``"cifar"`` (3x3, stride 1, no pool) or ``"imagenet"`` (7x7, stride 2, max-pool).
        skip_conv: a 1x1 conv + BN on every skip connection (Eidetic's ResNets).
        init: ``"kaiming"``: Kaiming-normal (fan_out, ReLU) conv weights and BN gamma 1, beta 0;
            ``"default"``: PyTorch's default initialisation.

    Attributes:
        out_features: ``widths[-1]``.
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        widths: Sequence[int],
        strides: Sequence[int],
        blocks_per_stage: int = 2,
        stem_width: int | None = None,
        batch_norm: str = "affine",
        init: str = "kaiming",
        stem: str = "cifar",
        skip_conv: bool = False,
    ) -> None:
        super().__init__()
        if len(widths) != len(strides) or not widths:
            raise ValueError("widths and strides need the same, non-zero length")
        if init not in INITS:
            raise ValueError(f"unknown init {init!r}; choose one of {', '.join(INITS)}")
        channels, _, _ = image_shape(input_shape, type(self).__name__)
        self.input_shape = tuple(int(d) for d in input_shape)
        in_ch = widths[0] if stem_width is None else stem_width
        self.conv1, self.bn1, self.pool = make_stem(channels, in_ch, stem, batch_norm)
        self.n_stages = len(widths)
        for i, (width, stride) in enumerate(zip(widths, strides), start=1):
            blocks = []
            for b in range(blocks_per_stage):
                s = stride if b == 0 else 1
                blocks.append(BasicBlock(in_ch, width, s, batch_norm, skip_conv))
                in_ch = width
            self.add_module(f"layer{i}", nn.Sequential(*blocks))
        self.out_features: int = in_ch
        if init == "kaiming":
            self.reset_parameters()

    @property
    def stages(self) -> list[nn.Sequential]:
        """The stages ``layer1``, ``layer2``, ... in order."""
        return [getattr(self, f"layer{i}") for i in range(1, self.n_stages + 1)]

    def reset_parameters(self) -> None:
        """Kaiming-normal (fan_out, ReLU) convs; BN gamma 1 and beta 0 (when affine)."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)) and m.affine:
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        h = self.pool(self.bn1(self.conv1(x)).relu())
        for stage in self.stages:
            h = stage(h)
        return h.mean(dim=(2, 3))


class ResNet18(ResNet):
    """ResNet-18 (He et al., CVPR 2016), by default the CIFAR variant used by ScrollNet/FACIL.

    Stem 3x3 conv ``nf`` (stride 1, no max-pool; ``stem="imagenet"``: 7x7 stride 2 and max-pool),
    stages of ``nf, 2nf, 4nf, 8nf`` channels with two ``BasicBlock`` each and strides 1/2/2/2,
    1x1 conv + BN shortcuts where the shape changes (``skip_conv``: on every block), global
    average pool. ``out_features = 8 * nf``. 1x28x28 inputs work as well. With
    ``stem="imagenet"`` and 3 input channels the body is torchvision's ``resnet18`` less its fc
    (11,176,512 parameters); ``skip_conv=True`` on top of it is Eidetic Learning's ResNet-18
    (Dronen & Balestriero 2025, Sec. 6.1, Imagenette).

    Args:
        input_shape: ``(C, H, W)``.
        nf: width of the first stage (64 standard; 20 for the GPM/WSN reduced ResNet-18).
        batch_norm: ``"affine"`` (default) or ``"stats_free"`` (WSN/GPM style).
        stem: ``"cifar"`` (default) or ``"imagenet"``.
        skip_conv: a 1x1 conv + BN on every skip connection.
        init: ``"kaiming"`` (default, as ScrollNet) or ``"default"`` (PyTorch's).
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        nf: int = 64,
        batch_norm: str = "affine",
        init: str = "kaiming",
        stem: str = "cifar",
        skip_conv: bool = False,
    ) -> None:
        super().__init__(
            input_shape,
            widths=(nf, 2 * nf, 4 * nf, 8 * nf),
            strides=(1, 2, 2, 2),
            batch_norm=batch_norm,
            stem=stem,
            skip_conv=skip_conv,
            init=init,
        )
        self.nf = nf


class ReducedResNet18(ResNet):
    """The Dynamos backbone (Varma, Arani, Zonooz, VISAPP 2023, Table 4): ResNet-18's first two
    stages at half width.

    Stem 3x3 conv ``nf`` + BN + ReLU; stage 1: two ``BasicBlock`` at ``nf``, stride 1 (identity
    shortcuts); stage 2: two ``BasicBlock`` at ``2nf``, the first with stride 2 and a 1x1 conv +
    BN shortcut; global average pool. ``out_features = 2 * nf``. Dynamos gates only stage 2.

    Args:
        input_shape: ``(C, H, W)`` (Dynamos feeds MNIST as 3x28x28).
        nf: width of the stem and stage 1 (32 in Dynamos).
        batch_norm: ``"affine"`` (default) or ``"stats_free"``.
        init: ``"default"`` (PyTorch's; the default here because the paper states none) or
            ``"kaiming"``.
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        nf: int = 32,
        batch_norm: str = "affine",
        init: str = "default",
    ) -> None:
        super().__init__(
            input_shape,
            widths=(nf, 2 * nf),
            strides=(1, 2),
            batch_norm=batch_norm,
            init=init,
        )
        self.nf = nf


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (stride) -> 1x1 convs with BN and a residual (He et al., CVPR 2016, Table 1).

    ``out = relu(bn3(conv3(relu(bn2(conv2(relu(bn1(conv1(x)))))))) + shortcut(x))`` with
    ``4 * channels`` output channels. The shortcut is a 1x1 conv (stride ``stride``) + BN when the
    shape changes or ``skip_conv`` is set (Eidetic Learning's ResNets, Dronen & Balestriero 2025,
    Sec. 6.1: ``f(x) + g(x)`` with a conv ``g`` on every skip), else the identity.

    Args:
        in_channels: channels of the input.
        channels: channels of the two inner convs (the output has ``4 * channels``).
        stride: stride of ``conv2`` and of the shortcut conv.
        batch_norm: ``"affine"`` or ``"stats_free"``.
        skip_conv: a 1x1 conv + BN shortcut even where the identity would do.
    """

    expansion = 4

    def __init__(
        self,
        in_channels: int,
        channels: int,
        stride: int = 1,
        batch_norm: str = "affine",
        skip_conv: bool = False,
    ) -> None:
        super().__init__()
        out = channels * self.expansion
        self.conv1 = nn.Conv2d(in_channels, channels, 1, bias=False)
        self.bn1 = make_batch_norm(batch_norm, channels, 2)
        self.conv2 = nn.Conv2d(channels, channels, 3, stride=stride, padding=1, bias=False)
        self.bn2 = make_batch_norm(batch_norm, channels, 2)
        self.conv3 = nn.Conv2d(channels, out, 1, bias=False)
        self.bn3 = make_batch_norm(batch_norm, out, 2)
        self.shortcut: nn.Module
        if skip_conv or stride != 1 or in_channels != out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out, 1, stride=stride, bias=False),
                make_batch_norm(batch_norm, out, 2),
            )
        else:
            self.shortcut = nn.Identity()

    @property
    def has_projection(self) -> bool:
        """Whether the shortcut is a 1x1 conv + BN (rather than the identity)."""
        return not isinstance(self.shortcut, nn.Identity)

    def forward(self, x: Tensor) -> Tensor:
        out = self.bn1(self.conv1(x)).relu()
        out = self.bn2(self.conv2(out)).relu()
        out = self.bn3(self.conv3(out))
        return (out + self.shortcut(x)).relu()


class ResNet50(nn.Module):
    """ResNet-50 for small images, as Eidetic Learning uses it on Sequential CIFAR-100
    (Dronen & Balestriero 2025, Table 4 and Sec. 6.1): the first conv is 3x3 (stride 1) instead
    of 7x7 and the first max-pool is removed (``stem="imagenet"`` restores both).

    Stem 3x3 conv ``nf`` + BN + ReLU; stages of 3/4/6/3 :class:`Bottleneck` blocks with inner
    widths ``nf, 2nf, 4nf, 8nf`` (outputs 4x that), strides 1/2/2/2; global average pool.
    ``out_features = 32 * nf`` (2048). With ``nf=64`` the body has 23,500,352 parameters
    (torchvision's ResNet-50 less its fc and with the 3x3 stem).

    Args:
        input_shape: ``(C, H, W)``; any size works (the pool is adaptive).
        nf: width of the stem and of the first stage's inner convs (64 standard).
        batch_norm: ``"affine"`` (default) or ``"stats_free"``.
        stem: ``"cifar"`` (default, as the paper) or ``"imagenet"``.
        skip_conv: a 1x1 conv + BN on every skip connection (Eidetic's ResNets), not only where
            the shape changes.
        init: ``"kaiming"`` (Kaiming-normal fan_out convs, BN gamma 1 and beta 0) or
            ``"default"`` (PyTorch's).

    Attributes:
        out_features: ``32 * nf``.
        conv1, bn1, pool: the stem; layer1 ... layer4: the stages (also ``stages``).
    """

    blocks = (3, 4, 6, 3)

    def __init__(
        self,
        input_shape: Sequence[int],
        nf: int = 64,
        batch_norm: str = "affine",
        skip_conv: bool = False,
        init: str = "kaiming",
        stem: str = "cifar",
    ) -> None:
        super().__init__()
        if init not in INITS:
            raise ValueError(f"unknown init {init!r}; choose one of {', '.join(INITS)}")
        channels, _, _ = image_shape(input_shape, type(self).__name__)
        self.input_shape = tuple(int(d) for d in input_shape)
        self.nf = nf
        self.conv1, self.bn1, self.pool = make_stem(channels, nf, stem, batch_norm)
        in_ch = nf
        for i, (n_blocks, stride) in enumerate(zip(self.blocks, (1, 2, 2, 2)), start=1):
            width = nf * 2 ** (i - 1)
            layers = []
            for b in range(n_blocks):
                layers.append(
                    Bottleneck(in_ch, width, stride if b == 0 else 1, batch_norm, skip_conv)
                )
                in_ch = width * Bottleneck.expansion
            self.add_module(f"layer{i}", nn.Sequential(*layers))
        self.out_features: int = in_ch
        if init == "kaiming":
            ResNet.reset_parameters(self)  # type: ignore[arg-type]

    @property
    def stages(self) -> list[nn.Sequential]:
        """The stages ``layer1`` ... ``layer4`` in order."""
        return [self.layer1, self.layer2, self.layer3, self.layer4]

    def forward(self, x: Tensor) -> Tensor:
        h = self.pool(self.bn1(self.conv1(x)).relu())
        for stage in self.stages:
            h = stage(h)
        return h.mean(dim=(2, 3))
