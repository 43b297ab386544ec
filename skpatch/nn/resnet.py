"""CIFAR-style residual networks that accept any input from 1x1 pixels up.

The stem is a single 3x3 convolution with stride 1 and no max-pool (as in the
CIFAR ResNets of He et al., and the public code of Madala et al.), and the head
is an adaptive average pool followed by a linear layer, so the same network
classifies a 4x4 patch, an 8x8 patch or a whole 32x32 image.
"""

import torch
from torch import nn

__all__ = ["BasicBlock", "CIFARResNet", "resnet", "resnet10", "resnet18", "resnet34"]

# blocks per stage; depth = 2 * sum(blocks) + 2 (stem and linear head)
_BLOCKS = {10: (1, 1, 1, 1), 18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with batch norm and an identity (or 1x1) shortcut.

    Parameters
    ----------
    in_channels : int
        Channels of the input.
    out_channels : int
        Channels of the output.
    stride : int, default=1
        Stride of the first convolution and of the projection shortcut.

    Notes
    -----
    Each activation is its own ``nn.ReLU`` (``relu1``, ``relu2``), called once
    per forward, so a forward hook sees every activation of the block.
    """

    def __init__(self, in_channels, out_channels, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(
            in_channels, out_channels, 3, stride=stride, padding=1, bias=False
        )
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        # not inplace: a hook that keeps the input or output of an activation must
        # see the values of that call, not ones overwritten later
        self.relu1 = nn.ReLU()
        self.relu2 = nn.ReLU()
        self.shortcut = nn.Sequential()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x):
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class CIFARResNet(nn.Module):
    """Residual network for small images: 3x3 stem, four stages, global pooling.

    Parameters
    ----------
    blocks : sequence of int
        Number of :class:`BasicBlock` per stage; stage ``s`` has
        ``width * 2**s`` channels and stride 2 except the first stage.
    n_classes : int, default=10
        Number of output logits.
    in_channels : int, default=3
        Channels of the input images.
    width : int, default=64
        Channels of the stem and the first stage (64 is the standard ResNet).

    Notes
    -----
    A 3x3 convolution with stride 2 and padding 1 maps a 1x1 input to a 1x1
    output, so every input size works; small inputs simply stop shrinking.

    Every activation is its own ``nn.ReLU`` module called once per forward
    (``stem.2`` and each block's ``relu1``, ``relu2``: ``1 + 2 * sum(blocks)``
    in all), so forward hooks on the ``nn.ReLU`` modules see each activation.

    References
    ----------
    K. He, X. Zhang, S. Ren and J. Sun, "Deep residual learning for image
    recognition", CVPR 2016.

    Examples
    --------
    >>> import torch
    >>> from skpatch.nn import CIFARResNet
    >>> net = CIFARResNet((1, 1, 1, 1), n_classes=3, width=4).eval()
    >>> net(torch.zeros(2, 3, 8, 8)).shape
    torch.Size([2, 3])
    """

    def __init__(self, blocks, n_classes=10, in_channels=3, width=64):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(),
        )
        stages = []
        channels = width
        for index, n_blocks in enumerate(blocks):
            out_channels = width * 2**index
            stride = 1 if index == 0 else 2
            layers = []
            for block in range(n_blocks):
                layers.append(
                    BasicBlock(channels, out_channels, stride if block == 0 else 1)
                )
                channels = out_channels
            stages.append(nn.Sequential(*layers))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, n_classes)
        self.n_features = channels

    def features(self, x):
        """Feature maps before pooling, ``(B, n_features, h', w')``."""
        return self.stages(self.stem(x))

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


def resnet(depth=18, n_classes=10, in_channels=3, width=64):
    """Build a CIFAR-style ResNet of the given depth.

    Parameters
    ----------
    depth : {10, 18, 34}, default=18
        10 is a small network for CPU work (one block per stage); 18 and 34
        are the standard layouts.
    n_classes : int, default=10
        Number of output logits.
    in_channels : int, default=3
        Channels of the input images.
    width : int, default=64
        Channels of the first stage.

    Returns
    -------
    module : CIFARResNet

    Examples
    --------
    >>> from skpatch.nn import resnet
    >>> sum(p.numel() for p in resnet(18).parameters())
    11173962
    """
    if depth not in _BLOCKS:
        raise ValueError(f"depth must be one of {sorted(_BLOCKS)}, got {depth!r}.")
    return CIFARResNet(
        _BLOCKS[depth], n_classes=n_classes, in_channels=in_channels, width=width
    )


def resnet10(n_classes=10, in_channels=3, width=64):
    """CIFAR-style ResNet-10 (one block per stage); see :func:`resnet`."""
    return resnet(10, n_classes, in_channels, width)


def resnet18(n_classes=10, in_channels=3, width=64):
    """CIFAR-style ResNet-18; see :func:`resnet`."""
    return resnet(18, n_classes, in_channels, width)


def resnet34(n_classes=10, in_channels=3, width=64):
    """CIFAR-style ResNet-34; see :func:`resnet`."""
    return resnet(34, n_classes, in_channels, width)
