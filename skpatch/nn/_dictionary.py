"""The frozen patch-dictionary embedding as torch modules, and the published heads on it.

:class:`PatchDictionaryCodes` computes, on the device, the per-location codes
of a fitted :class:`~skpatch.PatchDictionaryEmbedding`: the centring and the
whitening folded into one convolution with the patch as its kernel, the
scores ``2 q.a - |a|^2`` of every atom as a 1x1 convolution, the ``k``
nearest atoms by :func:`torch.topk` (for ``'soft_threshold'``, the
projections on the unit atoms less the threshold, clamped at 0). :class:`PatchDictionaryLayer` adds the
trained part of one layer of the published heads (average pooling,
BatchNorm, a 1x1 bottleneck) and :class:`PatchDictionaryNet` stacks layers
under a linear classifier, with the random crops (zero padding) of the
papers' training. These are the torch pieces under
:class:`~skpatch.PatchDictionaryClassifier`.
"""

import torch
import torch.nn.functional as F
from torch import nn

from ._patch_net import random_crop

__all__ = ["PatchDictionaryCodes", "PatchDictionaryLayer", "PatchDictionaryNet"]

# Coates et al.'s contrast regularizer 10 / 255**2, as in skpatch.embedding._whitening
_CONTRAST_REG = 10.0 / 255.0**2


class PatchDictionaryCodes(nn.Module):
    """Per-location nearest-atom codes of a fitted patch dictionary (all buffers, no parameter).

    For float images ``(N, C, H, W)`` on the scale the dictionary was fitted on
    (uint8 images scaled to [0, 1]), returns ``(N, n_codes, gh, gw)``: the
    codes of every patch position, in the order ``(sign, atom[, component])``
    of :meth:`PatchDictionaryEmbedding.transform_maps
    <skpatch.PatchDictionaryEmbedding.transform_maps>` with ``pooling=None``.

    The whitened patch ``q = (x - mean) W`` is one ``Conv2d`` (weights from
    ``W``, bias ``-mean W``, kernel the patch, the embedding's stride); with
    ``patch_normalize`` the patches are unfolded and normalized first (a
    per-patch division no convolution does). The atoms' scores
    ``2 q.a - |a|^2`` (the squared distance ``|q - a|^2`` less ``|q|^2``,
    which no selection depends on) are a 1x1 convolution and the ``k``
    largest come from :func:`torch.topk` along the atoms, all on the input's
    device, in float32 (autocast is switched off inside). Codes equal the
    estimator's up to exact or near ties of the ``k``-th and ``k+1``-th
    distances, which float32 sums in another order can swap.

    Build it from a fitted estimator with :meth:`from_embedding`.

    Parameters
    ----------
    mean : array-like of shape (d,)
        Mean patch, ``d = ph * pw * C`` in ``(ph, pw, C)`` order.
    whitening : array-like of shape (d, d)
        ``W``.
    atoms : array-like of shape (Q, d)
        The dictionary in the whitened space.
    patch_size, stride : tuple (ph, pw), tuple (sh, sw)
    n_neighbors : int
        ``k`` (unused by ``'soft_threshold'``, which selects no atoms).
    encoding : {'hard', 'full', 'triangle', 'soft_threshold'}, default='hard'
        ``'soft_threshold'``: ``max(0, q . a / |a| - alpha)`` for every atom
        (Coates & Ng), the projections a 1x1 convolution with the atoms scaled
        to unit length; no ``topk``.
    sign_convention : {None, 'centred', 'raw'}, default=None
        None: one sign; ``'centred'``: also the codes of ``-q``; ``'raw'``:
        also those of the whitened negated input ``(-x - mean) W``.
    full_input : {'whitened', 'raw'}, default='whitened'
        What ``'full'`` scatters (see the estimator).
    full_projection : array-like of shape (d, r), default=None
        Projection of the whitened patch on its ``r`` leading components,
        for ``'full'`` with ``full_input='whitened'``.
    patch_normalize : bool, default=False
    alpha : float, default=0.25
        The threshold of ``'soft_threshold'``.

    Examples
    --------
    >>> import numpy as np, torch
    >>> from skpatch import PatchDictionaryEmbedding
    >>> from skpatch.nn import PatchDictionaryCodes
    >>> X = np.random.default_rng(0).random((6, 8, 8)).astype(np.float32)
    >>> emb = PatchDictionaryEmbedding(patch_size=3, n_atoms=8, n_neighbors=2,
    ...                                pooling=None, device='cpu', random_state=0).fit(X)
    >>> codes = PatchDictionaryCodes.from_embedding(emb)
    >>> maps = codes(torch.from_numpy(X[:, None]))
    >>> maps.shape
    torch.Size([6, 8, 6, 6])
    >>> bool((maps.permute(0, 2, 3, 1).numpy() == emb.transform_maps(X)).all())
    True
    """

    def __init__(self, mean, whitening, atoms, *, patch_size, stride, n_neighbors,
                 encoding="hard", sign_convention=None, full_input="whitened",
                 full_projection=None, patch_normalize=False, alpha=0.25):
        super().__init__()
        if encoding not in ("hard", "full", "triangle", "soft_threshold"):
            raise ValueError(
                "encoding must be 'hard', 'full', 'triangle' or 'soft_threshold', "
                f"got {encoding!r}."
            )
        if not float(alpha) >= 0:
            raise ValueError(f"alpha must be a float >= 0, got {alpha!r}.")
        if sign_convention not in (None, "centred", "raw"):
            raise ValueError(
                f"sign_convention must be None, 'centred' or 'raw', got {sign_convention!r}."
            )
        if full_input not in ("whitened", "raw"):
            raise ValueError(f"full_input must be 'whitened' or 'raw', got {full_input!r}.")
        as32 = lambda a: torch.as_tensor(a, dtype=torch.float32).detach().clone()  # noqa: E731
        mean, whitening, atoms = as32(mean), as32(whitening), as32(atoms)
        self.patch_size = tuple(int(v) for v in patch_size)
        self.stride = tuple(int(v) for v in stride)
        ph, pw = self.patch_size
        dim = whitening.shape[0]
        if dim % (ph * pw) or mean.shape != (dim,) or atoms.shape[1:] != (dim,):
            raise ValueError(
                f"mean {tuple(mean.shape)}, whitening {tuple(whitening.shape)} and atoms "
                f"{tuple(atoms.shape)} do not describe {ph} x {pw} patches of d = ph * pw * C."
            )
        self.in_channels = dim // (ph * pw)
        self.n_atoms = atoms.shape[0]
        self.n_neighbors = int(n_neighbors)
        if not 1 <= self.n_neighbors <= self.n_atoms:
            raise ValueError(
                f"n_neighbors={n_neighbors} must be between 1 and the {self.n_atoms} atoms."
            )
        self.encoding = encoding
        self.alpha = float(alpha)
        self.sign_convention = sign_convention
        self.full_input = full_input
        self.patch_normalize = bool(patch_normalize)
        channels = self.in_channels
        # conv weight[j, c, r, s] = W[(r * pw + s) * C + c, j]: rows of W are (ph, pw, C)
        weight = whitening.T.reshape(dim, ph, pw, channels).permute(0, 3, 1, 2).contiguous()
        self.register_buffer("mean", mean)
        self.register_buffer("whitening", whitening)
        self.register_buffer("whiten_weight", weight)
        self.register_buffer("whiten_bias", -(mean @ whitening))
        if encoding == "soft_threshold":  # the projections q . a / |a| (0 for a zero atom)
            norms = torch.linalg.vector_norm(atoms.double(), dim=1)
            unit = (atoms.double() / torch.where(norms > 0, norms, 1.0)[:, None]).float()
            self.register_buffer("atom_weight", unit[:, :, None, None].contiguous())
            self.register_buffer("atom_bias", torch.zeros(self.n_atoms))
        else:  # the scores 2 q.a - |a|^2
            self.register_buffer("atom_weight", (2.0 * atoms)[:, :, None, None].contiguous())
            self.register_buffer("atom_bias", -(atoms**2).sum(dim=1))
        projection = None
        if encoding == "full" and full_input == "whitened":
            if full_projection is None:
                raise ValueError("encoding='full' with full_input='whitened' needs full_projection.")
            projection = as32(full_projection).T[:, :, None, None].contiguous()
        self.register_buffer("full_projection", projection)

    @classmethod
    def from_embedding(cls, embedding):
        """The codes of a fitted :class:`~skpatch.PatchDictionaryEmbedding`, on the CPU.

        The module gives the per-location codes: the embedding's ``pooling``
        and ``power`` act on pooled codes and are not part of it (pool its
        output, e.g. with :func:`torch.nn.functional.avg_pool2d` in ceil mode
        for ``pooling=(size, stride)``). ``flip_invariant`` embeddings are
        refused: their codes add those of the mirrored image, which is a
        property of the pooled features, not of one location.

        Parameters
        ----------
        embedding : PatchDictionaryEmbedding
            Fitted.

        Returns
        -------
        codes : PatchDictionaryCodes
        """
        from sklearn.utils.validation import check_is_fitted

        check_is_fitted(embedding)
        if embedding.flip_invariant:
            raise ValueError(
                "flip_invariant=True embeddings have no per-location code map (each pooled "
                "code adds that of the mirrored image): fit the embedding with "
                "flip_invariant=False and train with flip augmentation instead."
            )
        sign_convention = embedding._sign_convention()
        if sign_convention not in (None, "centred", "raw"):
            raise ValueError(
                f"both_signs={embedding.both_signs!r} is a sign convention "
                "PatchDictionaryCodes does not implement (it knows False, True/'centred' "
                "and 'raw')."
            )
        return cls(
            embedding.mean_, embedding.whitening_, embedding.atoms_,
            patch_size=embedding._patch_size, stride=embedding._stride,
            n_neighbors=embedding.n_neighbors_, encoding=embedding.encoding,
            sign_convention=sign_convention, full_input=embedding.full_input,
            full_projection=getattr(embedding, "_full_projection", None),
            patch_normalize=embedding.patch_normalize,
            alpha=getattr(embedding, "alpha", 0.25),
        )

    @property
    def n_signs(self):
        return 1 if self.sign_convention is None else 2

    @property
    def per_atom(self):
        """Values per atom slot: 1, ``r`` ('full', whitened) or ``d`` ('full', raw)."""
        if self.encoding != "full":
            return 1
        if self.full_projection is None:
            return self.whitening.shape[0]
        return self.full_projection.shape[0]

    @property
    def n_codes(self):
        """Channels of the output: ``n_signs * n_atoms * per_atom``."""
        return self.n_signs * self.n_atoms * self.per_atom

    def grid_shape(self, height, width):
        """Patch positions ``(gh, gw)`` of an ``height x width`` input."""
        (ph, pw), (sh, sw) = self.patch_size, self.stride
        return (height - ph) // sh + 1, (width - pw) // sw + 1

    def _raw_patches(self, x):
        """``(N, gh, gw, d)`` patch rows in ``(ph, pw, C)`` order (an unfold: a copy)."""
        n, channels = x.shape[:2]
        gh, gw = self.grid_shape(*x.shape[2:])
        ph, pw = self.patch_size
        cols = F.unfold(x, self.patch_size, stride=self.stride)  # (N, C*ph*pw, L), (C, ph, pw)
        cols = cols.reshape(n, channels, ph, pw, gh, gw)
        return cols.permute(0, 4, 5, 2, 3, 1).reshape(n, gh, gw, -1)

    def whiten(self, x):
        """The whitened patches ``q = (x - mean) W`` as a ``(N, d, gh, gw)`` map."""
        if not self.patch_normalize:
            return F.conv2d(x, self.whiten_weight, self.whiten_bias, stride=self.stride)
        rows = self._raw_patches(x)
        centred = rows - rows.mean(dim=-1, keepdim=True)
        rows = centred / torch.sqrt(centred.var(dim=-1, unbiased=False, keepdim=True)
                                    + _CONTRAST_REG)
        return ((rows - self.mean) @ self.whitening).permute(0, 3, 1, 2)

    def _negated(self, whitened):
        if self.sign_convention == "raw":  # (-x - mean) W = -q - 2 mean W
            return -whitened + 2.0 * self.whiten_bias[None, :, None, None]
        return -whitened

    def _codes(self, whitened, sign, x):
        scores = F.conv2d(whitened, self.atom_weight, self.atom_bias)  # 2 q.a - |a|^2
        if self.encoding == "soft_threshold":  # scores are q . a / |a|
            return (scores - self.alpha).clamp_min(0.0)
        k = self.n_neighbors
        if k == self.n_atoms:
            mask = torch.ones_like(scores)
        else:
            top = torch.topk(scores, k, dim=1, sorted=False).indices
            mask = torch.zeros_like(scores).scatter_(1, top, 1.0)
        if self.encoding == "hard":
            return mask
        if self.encoding == "triangle":
            sq_norms = (whitened**2).sum(dim=1, keepdim=True)
            distances = (sq_norms - scores).clamp_min(0.0).sqrt() * mask
            mean = distances.sum(dim=1, keepdim=True) / k
            return (mean - distances).clamp_min(0.0) * mask
        if self.full_projection is not None:
            vectors = F.conv2d(whitened, self.full_projection)
        else:
            vectors = self._raw_patches(x).permute(0, 3, 1, 2)
            if self.patch_normalize:
                rows = vectors - vectors.mean(dim=1, keepdim=True)
                vectors = rows / torch.sqrt(rows.var(dim=1, unbiased=False, keepdim=True)
                                            + _CONTRAST_REG)
            if sign < 0:  # the negated input: -x ('raw') or 2 mean - x ('centred')
                mean = self.mean[None, :, None, None]
                vectors = -vectors if self.sign_convention == "raw" else 2.0 * mean - vectors
        n, _, gh, gw = mask.shape
        # (N, Q, r, gh, gw): the patch vector in the slots of its k nearest atoms
        return (mask[:, :, None] * vectors[:, None]).reshape(n, -1, gh, gw)

    def forward(self, x):
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"PatchDictionaryCodes expects images (N, {self.in_channels}, H, W), "
                f"got shape {tuple(x.shape)}."
            )
        with torch.autocast(x.device.type, enabled=False):
            x = x.float()
            whitened = self.whiten(x)
            codes = [self._codes(whitened, 1.0, x)]
            if self.sign_convention is not None:
                codes.append(self._codes(self._negated(whitened), -1.0, x))
        return codes[0] if len(codes) == 1 else torch.cat(codes, dim=1)


def pooled_shape(grid_shape, pooling):
    """Output grid of ``avg_pool2d(kernel=size, stride=stride, ceil_mode=True)`` (None: unchanged)."""
    if pooling is None:
        return tuple(grid_shape)
    size, stride = pooling
    shape = []
    for length in grid_shape:
        n_out = -(-(length - size) // stride) + 1
        if (n_out - 1) * stride >= length:  # torch drops a window starting past the end
            n_out -= 1
        shape.append(n_out)
    return tuple(shape)


class PatchDictionaryLayer(nn.Module):
    """One layer of the published heads: frozen codes, pooling, BatchNorm, bottleneck.

    ``codes`` (a :class:`PatchDictionaryCodes`), then average pooling of
    ``pooling = (size, stride)`` windows in ceil mode, an adaptive average
    pooling to ``final_pooling x final_pooling``, a BatchNorm of the codes
    and a 1x1 convolution to ``bottleneck`` channels; each step is skipped
    when its setting is None/False. Every step after the codes is linear
    (BatchNorm in eval mode included).

    Parameters
    ----------
    codes : PatchDictionaryCodes
    pooling : tuple (size, stride) or None
    final_pooling : int or None
    batchnorm : bool
    bottleneck : int or None
    """

    def __init__(self, codes, *, pooling=None, final_pooling=None, batchnorm=True,
                 bottleneck=None):
        super().__init__()
        self.codes = codes
        n_codes = codes.n_codes
        self.pool = (nn.Identity() if pooling is None else
                     nn.AvgPool2d(tuple(pooling)[0], tuple(pooling)[1], ceil_mode=True))
        self.final_pool = (nn.Identity() if final_pooling is None
                           else nn.AdaptiveAvgPool2d(int(final_pooling)))
        self.norm = nn.BatchNorm2d(n_codes) if batchnorm else nn.Identity()
        self.bottleneck = (nn.Identity() if bottleneck is None
                           else nn.Conv2d(n_codes, int(bottleneck), 1))
        self.out_channels = n_codes if bottleneck is None else int(bottleneck)

    def pooled(self, x):
        """The pooled codes, before BatchNorm and bottleneck."""
        return self.final_pool(self.pool(self.codes(x)))

    def forward(self, x):
        return self.bottleneck(self.norm(self.pooled(x)))


class PatchDictionaryNet(nn.Module):
    """Stacked :class:`PatchDictionaryLayer` s under a linear classifier, the first ``n_frozen`` frozen.

    The frozen layers run without gradients and stay in eval mode (their
    BatchNorm statistics do not move) whatever the mode of the net; only
    the newest layers and ``classifier`` train. In training mode with
    ``crop_padding > 0`` each image is first padded by ``crop_padding``
    pixels of ``pad_value`` (per channel) and a random crop of its own size
    is drawn (``torchvision.transforms.RandomCrop(size, padding)``).

    Parameters
    ----------
    layers : list of PatchDictionaryLayer
    classifier : torch.nn.Linear
        On the last layer's output map flattened ``(channels, rows, cols)``.
    n_frozen : int, default=0
    crop_padding : int, default=0
    pad_value : array-like of shape (C,) or None, default=None
        The value of the padded pixels, per channel (None: 0).
    generator : torch.Generator or None, default=None
        Source of the crops, on the device of the batches.
    """

    def __init__(self, layers, classifier, *, n_frozen=0, crop_padding=0, pad_value=None,
                 generator=None):
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.classifier = classifier
        self.n_frozen = int(n_frozen)
        self.crop_padding = int(crop_padding)
        if pad_value is None:
            pad_value = torch.zeros(layers[0].codes.in_channels)
        pad_value = torch.as_tensor(pad_value, dtype=torch.float32).reshape(1, -1, 1, 1)
        self.register_buffer("pad_value", pad_value)
        self.generator = generator
        for layer in self.layers[: self.n_frozen]:
            layer.requires_grad_(False)
        self.train(self.training)

    def train(self, mode=True):
        super().train(mode)
        for layer in self.layers[: self.n_frozen]:
            layer.eval()
        return self

    def augment(self, x):
        pad = self.crop_padding
        if pad <= 0:
            return x
        value = self.pad_value.to(x.dtype)
        padded = F.pad(x - value, (pad, pad, pad, pad)) + value
        return random_crop(padded, x.shape[2:], generator=self.generator)

    def features(self, x, n_layers=None):
        """Output map of the first ``n_layers`` layers (all by default)."""
        n_layers = len(self.layers) if n_layers is None else n_layers
        with torch.no_grad():
            for layer in self.layers[: min(self.n_frozen, n_layers)]:
                x = layer(x)
        for layer in self.layers[self.n_frozen : n_layers]:
            x = layer(x)
        return x

    def forward(self, x):
        if self.training:
            x = self.augment(x)
        return self.classifier(torch.flatten(self.features(x), 1))
