"""BagNet-9/17/33: ResNet-50 variants whose every output sees one q x q patch.

A reimplementation (from the published architecture facts, not the reference
code) of the BagNets of Brendel & Bethge (2019). The module names match the
reference implementation, so a state dict of the official weights loads
strictly into :func:`bagnet9`, :func:`bagnet17` or :func:`bagnet33`.

All convolutions have padding 0 and the strides sit on the middle conv of each
stage's first block, so the feature at grid location ``(i, j)`` is computed
from the input window ``[8 i, 8 i + q) x [8 j, 8 j + q)`` only, and the class
evidence of that location equals the network's output on that patch alone.
"""

import torch
from torch import nn
from torch.nn import functional as F

__all__ = [
    "BagNet",
    "Bottleneck",
    "bagnet9",
    "bagnet17",
    "bagnet33",
    "BAGNET_KERNEL3",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "InputAffine",
    "load_reference_weights",
]

# patch size -> how many blocks of each stage use a 3x3 middle conv
BAGNET_KERNEL3 = {9: (1, 1, 0, 0), 17: (1, 1, 1, 0), 33: (1, 1, 1, 1)}

_STAGE_STRIDES = (2, 2, 2, 1)

# input statistics of the official weights: RGB in [0, 1], ImageNet mean/std
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Bottleneck(nn.Module):
    """ResNet bottleneck block without padding (1x1, kxk, 1x1, expansion 4).

    Parameters
    ----------
    in_channels : int
        Channels of the block input.
    planes : int
        Channels of the middle conv; the block outputs ``4 * planes``.
    stride : int, default=1
        Stride of the middle conv (and of the downsample path).
    kernel_size : {1, 3}, default=1
        Kernel of the middle conv.
    downsample : bool, default=False
        Add a 1x1 conv + BatchNorm projection on the residual path.

    Notes
    -----
    Each of the three activations is its own ``nn.ReLU`` (``relu1``,
    ``relu2``, ``relu3``), called once per forward, so a forward hook sees
    every activation of the block.
    """

    expansion = 4

    def __init__(self, in_channels, planes, stride=1, kernel_size=1, downsample=False):
        super().__init__()
        out_channels = planes * self.expansion
        self.conv1 = nn.Conv2d(in_channels, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(
            planes, planes, kernel_size=kernel_size, stride=stride, padding=0, bias=False
        )
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_channels, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        # not inplace: a hook that keeps the input or output of an activation must
        # see the values of that call, not ones overwritten later
        self.relu1 = nn.ReLU()
        self.relu2 = nn.ReLU()
        self.relu3 = nn.ReLU()
        self.downsample = None
        if downsample:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x):
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.relu2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        residual = x if self.downsample is None else self.downsample(x)
        # an unpadded 3x3 conv shrinks the map; keep the residual's top-left part
        h, w = out.shape[-2:]
        residual = residual[..., :h, :w]
        return self.relu3(out + residual)


class BagNet(nn.Module):
    """A BagNet: bag-of-local-features ResNet-50 (Brendel & Bethge, 2019).

    Parameters
    ----------
    kernel3 : tuple of 4 int
        Per stage, how many blocks use a 3x3 middle conv (block ``i`` does
        when ``i < kernel3[stage]``); sets the receptive field.
    layers : tuple of 4 int, default=(3, 4, 6, 3)
        Number of bottleneck blocks per stage.
    n_classes : int, default=1000
        Size of the ``fc`` output.
    width : int, default=64
        Base channel count; stages have ``width * (1, 2, 4, 8)`` middle
        channels and the features ``32 * width`` channels.
    avg_pool : bool, default=True
        ``True``: ``forward`` returns pooled logits ``(n, n_classes)``.
        ``False``: it returns the class evidence of every location,
        ``(n, n_classes, gh, gw)``.
    in_channels : int, default=3
        Channels of the input images.
    stem_momentum : float, default=0.001
        Momentum of the stem ``bn1`` running statistics (0.001 in the
        reference; with so small a value a short training from scratch
        leaves them near their initial values, so use 0.1 there).

    Attributes
    ----------
    receptive_field : int
        Side ``q`` of the input patch behind each output location.
    stride : int
        Step, in input pixels, between neighbouring output locations (8).

    Notes
    -----
    Reference layout and names: stem ``conv1`` (1x1, no bias), ``conv2``
    (3x3), ``bn1`` (momentum 0.001), ReLU, no max-pool; stages
    ``layer1``..``layer4`` with strides 2, 2, 2, 1 on the middle conv of
    block 0, which also carries ``downsample``; head ``fc``. With
    ``avg_pool=False`` the reference returns ``(n, gh, gw, K)``; this module
    returns ``(n, K, gh, gw)``, the patch-logit layout of skpatch.

    Every activation is its own ``nn.ReLU`` module, called once per forward:
    the stem's ``relu`` and each block's ``relu1``, ``relu2``, ``relu3``
    (``1 + 3 * sum(layers)`` in all, 49 for ResNet-50 layers), so forward
    hooks on the ``nn.ReLU`` modules see each activation once. The
    reference reuses one inplace ``relu`` per block; the state-dict keys are
    the same, as ReLU has no parameters.
    """

    def __init__(
        self,
        kernel3,
        layers=(3, 4, 6, 3),
        *,
        n_classes=1000,
        width=64,
        avg_pool=True,
        in_channels=3,
        stem_momentum=0.001,
    ):
        super().__init__()
        kernel3, layers = tuple(kernel3), tuple(layers)
        if len(kernel3) != 4 or len(layers) != 4:
            raise ValueError(
                f"kernel3 and layers must have 4 entries, got {kernel3!r}, {layers!r}."
            )
        if min(layers) < 1:
            raise ValueError(f"layers must hold positive ints, got {layers!r}.")
        self.avg_pool = avg_pool
        self.backbone_frozen = False
        self.conv1 = nn.Conv2d(in_channels, width, kernel_size=1, padding=0, bias=False)
        self.conv2 = nn.Conv2d(width, width, kernel_size=3, padding=0, bias=False)
        self.bn1 = nn.BatchNorm2d(width, momentum=stem_momentum)
        # the stem's only activation; each block has its own three
        self.relu = nn.ReLU()
        channels = width
        receptive_field, jump = 3, 1
        for stage, (n_blocks, n_kernel3, stride) in enumerate(
            zip(layers, kernel3, _STAGE_STRIDES)
        ):
            planes = width * 2**stage
            blocks = []
            for i in range(n_blocks):
                kernel_size = 3 if i < n_kernel3 else 1
                block_stride = stride if i == 0 else 1
                blocks.append(
                    Bottleneck(channels, planes, block_stride, kernel_size, downsample=i == 0)
                )
                channels = planes * Bottleneck.expansion
                receptive_field += (kernel_size - 1) * jump
                jump *= block_stride
            self.add_module(f"layer{stage + 1}", nn.Sequential(*blocks))
        self.fc = nn.Linear(channels, n_classes)
        self.receptive_field = receptive_field
        self.stride = jump

    def freeze_backbone(self):
        """Train only ``fc``: no gradients elsewhere, BatchNorm statistics kept."""
        self.backbone_frozen = True
        for name, param in self.named_parameters():
            param.requires_grad_(name.startswith("fc."))
        return self.train(self.training)

    def train(self, mode=True):
        super().train(mode)
        if self.backbone_frozen:
            # a frozen backbone must not update its BatchNorm running statistics
            for name, child in self.named_children():
                if name != "fc":
                    child.eval()
        return self

    def grid_shape(self, height, width):
        """Number of output locations ``(gh, gw)`` for an image of that size."""
        q, s = self.receptive_field, self.stride
        if height < q or width < q:
            raise ValueError(
                f"images of size {height}x{width} are smaller than the BagNet's "
                f"{q}x{q} receptive field; images must be at least {q}x{q} pixels."
            )
        return ((height - q) // s + 1, (width - q) // s + 1)

    def features(self, x):
        """Feature map ``(n, 32 * width, gh, gw)``: one vector per patch."""
        if x.ndim != 4:
            raise ValueError(f"x must be a 4-D (n, C, H, W) tensor, got shape {tuple(x.shape)}.")
        self.grid_shape(x.shape[-2], x.shape[-1])
        x = self.relu(self.bn1(self.conv2(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def patch_logits(self, x, classes=None):
        """Class evidence of every location, ``(n, n_classes, gh, gw)``.

        ``classes`` (a sequence or tensor of class indices) computes the maps
        of those classes only, in that order, from their rows of ``fc``.
        """
        features = self.features(x)
        weight, bias = self.fc.weight, self.fc.bias
        if classes is not None:
            weight, bias = weight[classes], None if bias is None else bias[classes]
        # fc applied at each location is a 1x1 convolution with the same weights
        return F.conv2d(features, weight[:, :, None, None], bias)

    def forward(self, x):
        if not self.avg_pool:
            return self.patch_logits(x)
        # fc is linear, so this equals the mean of patch_logits over locations
        return self.fc(self.features(x).mean(dim=(2, 3)))


def _bagnet(patch_size, n_classes, width, layers, avg_pool, in_channels):
    return BagNet(
        BAGNET_KERNEL3[patch_size],
        layers,
        n_classes=n_classes,
        width=width,
        avg_pool=avg_pool,
        in_channels=in_channels,
    )


def bagnet9(n_classes=1000, width=64, layers=(3, 4, 6, 3), avg_pool=True, in_channels=3):
    """BagNet-9: every output location sees a 9x9 patch.

    Parameters
    ----------
    n_classes : int, default=1000
    width : int, default=64
        Base channels; smaller values give small BagNets for small images.
    layers : tuple of 4 int, default=(3, 4, 6, 3)
        Blocks per stage (ResNet-50 by default).
    avg_pool : bool, default=True
        Pooled logits if True, per-location class evidence if False.
    in_channels : int, default=3

    Returns
    -------
    model : BagNet
        With 1000 classes and the defaults: 15,688,744 parameters.

    See Also
    --------
    bagnet17, bagnet33

    References
    ----------
    .. [1] W. Brendel and M. Bethge, "Approximating CNNs with Bag-of-local-
       Features models works surprisingly well on ImageNet", ICLR 2019.

    Examples
    --------
    >>> import torch
    >>> from skpatch.nn.bagnet import bagnet9
    >>> net = bagnet9(n_classes=3, width=4, layers=(1, 1, 1, 1), avg_pool=False)
    >>> net.eval()(torch.zeros(1, 3, 25, 25)).shape
    torch.Size([1, 3, 3, 3])
    """
    return _bagnet(9, n_classes, width, layers, avg_pool, in_channels)


def bagnet17(n_classes=1000, width=64, layers=(3, 4, 6, 3), avg_pool=True, in_channels=3):
    """BagNet-17: every output location sees a 17x17 patch.

    Parameters are those of :func:`bagnet9`. With 1000 classes and the
    defaults the model has 16,213,032 parameters.

    See Also
    --------
    bagnet9, bagnet33

    Examples
    --------
    >>> from skpatch.nn.bagnet import bagnet17
    >>> bagnet17(width=4, layers=(1, 1, 1, 1)).receptive_field
    17
    """
    return _bagnet(17, n_classes, width, layers, avg_pool, in_channels)


def bagnet33(n_classes=1000, width=64, layers=(3, 4, 6, 3), avg_pool=True, in_channels=3):
    """BagNet-33: every output location sees a 33x33 patch.

    Parameters are those of :func:`bagnet9`. With 1000 classes and the
    defaults the model has 18,310,184 parameters.

    See Also
    --------
    bagnet9, bagnet17

    Examples
    --------
    >>> from skpatch.nn.bagnet import bagnet33
    >>> bagnet33(width=4, layers=(1, 1, 1, 1)).grid_shape(224, 224)
    (24, 24)
    """
    return _bagnet(33, n_classes, width, layers, avg_pool, in_channels)


class InputAffine(nn.Module):
    """Apply ``x * scale + shift`` per channel before a BagNet.

    Used to feed a network trained with other input statistics (the official
    weights expect ImageNet normalization) from data normalized otherwise.
    ``patch_logits`` and ``forward`` are those of the wrapped network.

    Parameters
    ----------
    net : BagNet
    scale, shift : array-like of shape (C,)
    """

    def __init__(self, net, scale, shift):
        super().__init__()
        self.net = net
        shape = (1, -1, 1, 1)
        self.register_buffer("scale", torch.as_tensor(scale, dtype=torch.float32).view(shape))
        self.register_buffer("shift", torch.as_tensor(shift, dtype=torch.float32).view(shape))

    def forward(self, x):
        return self.net(x * self.scale + self.shift)

    def patch_logits(self, x, classes=None):
        return self.net.patch_logits(x * self.scale + self.shift, classes)


def _strip_module_prefix(state_dict):
    """The state dict without the ``module.`` prefix ``DataParallel`` puts on every key."""
    state = dict(state_dict)
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def _architecture_from_state_dict(state_dict):
    """The BagNet a reference-named state dict belongs to, read from its shapes.

    Returns a dict with ``patch_size`` (9, 17 or 33, from how many blocks of
    each stage have a 3x3 middle conv: ``BAGNET_KERNEL3``), ``kernel3``,
    ``layers`` (blocks per stage), ``width`` (``conv1`` output channels),
    ``in_channels`` and ``n_classes`` (``fc`` rows). Raises a ``ValueError``
    saying what is missing or which layout matches no BagNet.
    """
    state = _strip_module_prefix(state_dict)
    for key in ("conv1.weight", "fc.weight"):
        if key not in state:
            raise ValueError(
                f"has no {key!r} entry, so it is not a BagNet state dict in the "
                "reference naming (conv1, conv2, bn1, layer1..layer4, fc)"
            )
    layers, kernel3 = [], []
    for stage in range(1, 5):
        prefix = f"layer{stage}."
        blocks = sorted(
            {int(k.split(".")[1]) for k in state
             if k.startswith(prefix) and k.endswith(".conv2.weight")}
        )
        if not blocks or blocks != list(range(len(blocks))):
            raise ValueError(
                f"has no consecutive blocks layer{stage}.0, layer{stage}.1, ... with a "
                "conv2, so it is not a BagNet state dict in the reference naming"
            )
        sizes = [tuple(state[f"{prefix}{i}.conv2.weight"].shape[-2:]) for i in blocks]
        n_kernel3 = sum(size == (3, 3) for size in sizes)
        if sizes != [(3, 3)] * n_kernel3 + [(1, 1)] * (len(sizes) - n_kernel3):
            raise ValueError(
                f"has layer{stage} middle convs of sizes {sizes}; a BagNet has 3x3 ones "
                "first and 1x1 ones after"
            )
        layers.append(len(blocks))
        kernel3.append(n_kernel3)
    by_kernel3 = {pattern: size for size, pattern in BAGNET_KERNEL3.items()}
    if tuple(kernel3) not in by_kernel3:
        raise ValueError(
            f"has {tuple(kernel3)} blocks with a 3x3 middle conv per stage, which is "
            "no BagNet: BagNet-9, -17 and -33 have "
            + ", ".join(f"{pattern}" for pattern in BAGNET_KERNEL3.values())
        )
    conv1 = state["conv1.weight"]
    return {
        "patch_size": by_kernel3[tuple(kernel3)],
        "kernel3": tuple(kernel3),
        "layers": tuple(layers),
        "width": int(conv1.shape[0]),
        "in_channels": int(conv1.shape[1]),
        "n_classes": int(state["fc.weight"].shape[0]),
    }


def load_reference_weights(model, state_dict, *, reset_fc=False):
    """Load a state dict in the reference naming strictly into ``model``.

    Parameters
    ----------
    model : BagNet
    state_dict : dict
        Keys as in the reference implementation; a ``module.`` prefix on every
        key (saved from ``DataParallel``) is removed.
    reset_fc : bool, default=False
        Keep ``model.fc`` as it is and load everything else strictly (used
        when the number of classes differs from the weights').

    Returns
    -------
    model : BagNet
    """
    state = _strip_module_prefix(state_dict)
    if reset_fc:
        state.update({f"fc.{k}": v for k, v in model.fc.state_dict().items()})
    model.load_state_dict(state, strict=True)
    return model
