"""The patch-net wrapper: normalization, random crops and flips, sliding windows.

These are the torch pieces under :class:`~skpatch.PatchCNNClassifier` and
:class:`~skpatch.classifiers.BagNetClassifier`. Every random draw takes an
explicit ``torch.Generator``, so a fit never reads or advances torch's global
generator and two seeded fits in two threads give what they give one after
the other.
"""

import math
import threading

import numpy as np
import torch
from torch import nn

__all__ = [
    "PatchNetModule",
    "build_initialized",
    "build_seeded",
    "init_parameters",
    "random_crop",
    "sliding_window_logits",
]


class PatchNetModule(nn.Module):
    """Normalization, random crops and flips around a core network.

    In training mode each image of the batch gets its own uniformly random
    ``crop_size`` window (and a horizontal flip with probability 1/2 when
    ``flip``), drawn on the batch's device from ``generator``; in eval mode
    the input is only normalized. Inputs are raw float images
    ``(B, C, H, W)``; normalization uses the buffers ``mean`` and ``std``.

    Parameters
    ----------
    core : torch.nn.Module
        Maps normalized ``(B, C, h, w)`` to logits ``(B, K)``.
    mean, std : array-like of shape (C,)
        Per-channel statistics of the training images.
    crop_size : tuple (h, w) or None, default=None
        Random crop drawn in training mode; ``None`` keeps whole images.
    flip : bool, default=False
        Random horizontal flips in training mode.
    amp : bool, default=False
        bfloat16 autocast around ``core``; logits are returned as float32.
    channels_last : bool, default=False
        Feed ``core`` channels-last tensors (faster convolutions on GPUs).
    generator : torch.Generator or None, default=None
        Source of the crops and flips, on the device of the batches; ``None``
        draws from torch's global generator. Not part of the state dict.

    Examples
    --------
    >>> import torch
    >>> from skpatch.nn import PatchNetModule
    >>> core = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
    >>> net = PatchNetModule(core, [0.5], [0.25], crop_size=(2, 2),
    ...                      generator=torch.Generator().manual_seed(0))
    >>> net.train()(torch.rand(3, 1, 5, 5)).shape
    torch.Size([3, 2])
    """

    def __init__(self, core, mean, std, crop_size=None, flip=False, amp=False,
                 channels_last=False, generator=None):
        super().__init__()
        self.core = core
        mean = torch.as_tensor(np.asarray(mean, dtype=np.float32))
        std = torch.as_tensor(np.asarray(std, dtype=np.float32))
        self.register_buffer("mean", mean.view(1, -1, 1, 1))
        self.register_buffer("std", std.view(1, -1, 1, 1))
        self.crop_size = None if crop_size is None else tuple(crop_size)
        self.flip = bool(flip)
        self.amp = bool(amp)
        self.channels_last = bool(channels_last)
        self.generator = generator

    def normalize(self, x):
        return (x - self.mean) / self.std

    def augment(self, x):
        if self.crop_size is not None:
            x = random_crop(x, self.crop_size, generator=self.generator)
        if self.flip:
            flipped = torch.rand(x.shape[0], device=x.device, generator=self.generator) < 0.5
            x = torch.where(flipped[:, None, None, None], x.flip(3), x)
        return x

    def forward(self, x):
        if self.training:
            x = self.augment(x)
        x = self.normalize(x)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=self.amp):
            logits = self.core(x)
        return logits.float()


def random_crop(x, size, generator=None):
    """One uniformly random ``size`` window per image of ``x`` (B, C, H, W), on x's device.

    Vectorized with one gather: no Python loop over images.

    Parameters
    ----------
    x : torch.Tensor of shape (B, C, H, W)
    size : tuple (h, w)
        Crop size, at most ``(H, W)``.
    generator : torch.Generator or None, default=None
        Generator on ``x``'s device the corners are drawn from; ``None`` uses
        torch's global generator.

    Returns
    -------
    crops : torch.Tensor of shape (B, C, h, w), contiguous
    """
    n, _, height, width = x.shape
    crop_h, crop_w = size
    if (crop_h, crop_w) == (height, width):
        return x
    top = torch.randint(0, height - crop_h + 1, (n,), device=x.device, generator=generator)
    left = torch.randint(0, width - crop_w + 1, (n,), device=x.device, generator=generator)
    rows = top[:, None] + torch.arange(crop_h, device=x.device)
    cols = left[:, None] + torch.arange(crop_w, device=x.device)
    batch = torch.arange(n, device=x.device)[:, None, None]
    # (n, crop_h, crop_w, C) from the channels-last view, back to (n, C, h, w)
    crops = x.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]
    # an explicit NCHW copy: for C == 1 .contiguous() would keep channels-last strides
    return crops.permute(0, 3, 1, 2).clone(memory_format=torch.contiguous_format)


def sliding_window_logits(module, x, patch_size, stride, pads, max_patches):
    """Logits of every ``patch_size`` window of ``x``, ``(b, K, gh, gw)``.

    Parameters
    ----------
    module : callable
        Maps ``(m, C, ph, pw)`` raw patches to ``(m, K)`` logits.
    x : torch.Tensor of shape (b, C, H, W)
        Raw images on the device.
    patch_size, stride : tuple of two int
    pads : tuple ((top, bottom), (left, right))
        Zero padding added to the raw images.
    max_patches : int
        Patches per forward pass; rows of the patch grid are processed in
        blocks so that memory stays bounded whatever the image size.

    Returns
    -------
    logits : torch.Tensor of shape (b, K, gh, gw)
    """
    (top, bottom), (left, right) = pads
    if top or bottom or left or right:
        x = torch.nn.functional.pad(x, (left, right, top, bottom))
    ph, pw = patch_size
    sh, sw = stride
    # (b, C, gh, gw, ph, pw) view; copied block by block below
    windows = x.unfold(2, ph, sh).unfold(3, pw, sw)
    b, channels, gh, gw = windows.shape[:4]
    rows_per_block = max(1, max_patches // max(1, b * gw))
    blocks = []
    for start in range(0, gh, rows_per_block):
        block = windows[:, :, start : start + rows_per_block]
        n_rows = block.shape[2]
        patches = block.permute(0, 2, 3, 1, 4, 5).reshape(-1, channels, ph, pw)
        logits = module(patches)
        blocks.append(logits.reshape(b, n_rows, gw, -1))
    return torch.cat(blocks, dim=1).permute(0, 3, 1, 2)


def _init_weight_and_bias(module, generator):
    # torch's default of nn.Conv*d and nn.Linear (their reset_parameters), from generator
    nn.init.kaiming_uniform_(module.weight, a=math.sqrt(5), generator=generator)
    if module.bias is not None:
        fan_in, _ = nn.init._calculate_fan_in_and_fan_out(module.weight)
        bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0
        nn.init.uniform_(module.bias, -bound, bound, generator=generator)


def _init_norm(module, generator):
    if isinstance(module, nn.modules.batchnorm._NormBase):
        module.reset_running_stats()
    if getattr(module, "weight", None) is not None:
        nn.init.ones_(module.weight)
    if getattr(module, "bias", None) is not None:
        nn.init.zeros_(module.bias)


def _init_embedding(module, generator):
    nn.init.normal_(module.weight, generator=generator)
    if module.padding_idx is not None:
        module.weight[module.padding_idx].fill_(0)


_DEFAULT_INITS = (
    ((nn.modules.conv._ConvNd, nn.Linear), _init_weight_and_bias),
    ((nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm), _init_norm),
    ((nn.Embedding,), _init_embedding),
)


def init_parameters(module, generator):
    """Give every layer of ``module`` torch's default initial values, drawn from ``generator``.

    Convolutions and linear layers get their ``reset_parameters`` rule
    (Kaiming-uniform weights with ``a=sqrt(5)``, uniform biases), norm layers
    ones and zeros (and fresh running statistics), embeddings a standard
    normal. Layers are visited in ``module.modules()`` order, the order in
    which a constructor of the usual kind creates them, so the values equal
    those of a construction after ``torch.manual_seed`` of the same seed.
    Torch's global generator is neither read nor advanced.

    Parameters
    ----------
    module : torch.nn.Module
    generator : torch.Generator
        CPU generator (the parameters are initialized on the CPU).

    Returns
    -------
    module : torch.nn.Module

    Raises
    ------
    TypeError
        If a submodule holds parameters or buffers of its own whose default
        initialization is not one of the above.
    """
    with torch.no_grad():
        for sub in module.modules():
            own = list(sub.parameters(recurse=False)) + list(sub.buffers(recurse=False))
            for kinds, init in _DEFAULT_INITS:
                if isinstance(sub, kinds):
                    init(sub, generator)
                    break
            else:
                if own:
                    raise TypeError(
                        f"{type(sub).__name__} holds parameters or buffers of its own, "
                        "whose default initialization skpatch does not know (it knows "
                        "convolutions, linear, norm and embedding layers); pass an "
                        "initialized module instance instead of a class."
                    )
    return module


def build_initialized(factory, generator, device="cpu"):
    """``factory()`` built on torch's meta device, then initialized from ``generator``.

    Constructing on the meta device allocates nothing and draws no random
    number, so torch's global generator is left alone (and two threads
    building networks at once do not share it); :func:`init_parameters` then
    fills the parameters on ``device``.

    Parameters
    ----------
    factory : callable
        Returns a ``torch.nn.Module``; whatever initial values it writes are
        replaced.
    generator : torch.Generator
    device : str, default='cpu'

    Returns
    -------
    module : torch.nn.Module
    """
    with torch.device("meta"):
        module = factory()
    module.to_empty(device=device)
    return init_parameters(module, generator)


# one construction at a time may borrow torch's global generator
_GLOBAL_GENERATOR_LOCK = threading.Lock()


def build_seeded(factory, generator):
    """``factory()`` run as written, its random draws seeded from ``generator``.

    For a user's module class, whose constructor may set its own initial
    values: it runs under :func:`torch.random.fork_rng` with the global
    generator seeded from ``generator``, and the global state is restored
    afterwards. A lock keeps two skpatch fits from constructing at once, so
    seeded fits in parallel threads build the same networks as serial ones.

    Parameters
    ----------
    factory : callable
        Returns a ``torch.nn.Module`` (built on the CPU).
    generator : torch.Generator

    Returns
    -------
    module : torch.nn.Module
    """
    seed = int(torch.randint(2**62, (1,), generator=generator))
    with _GLOBAL_GENERATOR_LOCK, torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return factory()
