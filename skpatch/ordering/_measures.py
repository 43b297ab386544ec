"""Patch measures of the POR patch-ordering algorithm (Ghebrechristos & Alaghband).

Every measure is computed per colour channel and averaged over channels, as
the paper does. Intensities are read on a [0, 1] scale: ``uint8`` values are
divided by 255, any other dtype is taken as it is. Histograms use ``n_bins``
equal-width bins over [0, 1] (values outside fall into the end bins);
entropies are in bits.

Each similarity measure is a *pair kernel*: it takes per-patch features of
two equally shaped batches and returns one value per pair. The public
functions and the all-pairs matrix of :mod:`skpatch.ordering` call the same
kernel, so a matrix entry equals the public function's value exactly.

Histogram entropies are computed exactly in fixed point: with ``c_k`` the
number of pixels that share pixel ``k``'s (joint) bin, the entropy of an
``N``-pixel histogram is ``log2 N - (1/N) sum_k log2 c_k``; ``log2 c`` is read
from an integer table with resolution ``2**-24`` bits and summed in int64, so
mathematically equal scores tie exactly. ``c_k`` for a pair of patches is the
popcount of two bit masks ("pixels in my bin" of patch 1 AND of patch 2),
which makes a joint histogram cost ``O(N)`` instead of ``O(n_bins**2)``.
"""

import warnings

import numpy as np

__all__ = [
    "joint_entropy",
    "kl_divergence",
    "l1_distance",
    "l2_distance",
    "mutual_information",
    "patch_entropy",
    "patch_variance",
    "psnr",
    "ssim",
]

_LOG_SCALE = 2**24
# SSIM stabilizers for a data range of 1 (Wang et al. 2004)
_SSIM_C1 = 0.01**2
_SSIM_C2 = 0.03**2
# pseudo-count added to every histogram bin so that KL stays finite
_KL_PSEUDO_COUNT = 0.5


def _is_uint8(values):
    return values.dtype == np.uint8


def _unit_values(values):
    """Pixel values on the [0, 1] scale as float64."""
    if _is_uint8(values):
        return values.astype(np.float64) / 255.0
    return values.astype(np.float64, copy=False)


def _bin_indices(values, n_bins):
    """Histogram bin of every pixel, in ``[0, n_bins)``."""
    if _is_uint8(values) and n_bins <= 256:
        # exact integer form of floor(x / 255 * n_bins); 255 * 256 fits uint16
        bins = values.astype(np.uint16) * np.uint16(n_bins) // np.uint16(255)
        return np.minimum(bins, n_bins - 1).astype(np.intp)
    if _is_uint8(values):
        bins = values.astype(np.int64) * n_bins // 255
    else:
        if values.size and (values.min() < 0 or values.max() > 1):
            # histograms need a known range: say so instead of clipping silently
            warnings.warn(
                "Histogram measures read non-uint8 images as intensities in "
                f"[0, 1], but values span [{float(values.min()):g}, "
                f"{float(values.max()):g}]; values outside [0, 1] fall into the "
                "first or last bin. Scale the images to [0, 1] (or pass uint8).",
                UserWarning,
                stacklevel=3,
            )
        bins = np.floor(values.astype(np.float64) * n_bins)
    return np.clip(bins, 0, n_bins - 1).astype(np.intp)


def _histograms(bins, n_bins):
    """Bin counts ``(..., n_bins)`` of bin indices ``(..., N)``."""
    lead = bins.shape[:-1]
    groups = int(np.prod(lead))
    flat = bins.reshape(groups, -1) + (np.arange(groups) * n_bins)[:, np.newaxis]
    counts = np.bincount(flat.ravel(), minlength=groups * n_bins)
    return counts.reshape(lead + (n_bins,))


def _log_table(n_pixels):
    """``round(log2(c) * 2**24)`` for ``c = 0 .. n_pixels`` (entry 0 unused)."""
    table = np.zeros(n_pixels + 1, dtype=np.int64)
    table[1:] = np.round(np.log2(np.arange(1, n_pixels + 1)) * _LOG_SCALE)
    # int32 halves the memory traffic of the hot gather (log2 c < 2**7 always)
    return table.astype(np.int32)


def _word_dtype(n_pixels):
    for bits, dtype in ((8, np.uint8), (16, np.uint16), (32, np.uint32)):
        if n_pixels <= bits:
            return dtype, 1
    return np.uint64, -(-n_pixels // 64)


def _bin_masks(bins, n_bins):
    """Bit mask of the pixels sharing each pixel's bin: ``(..., N, n_words)``.

    Bit ``j`` of word ``w`` of ``masks[..., k, :]`` is set iff pixel
    ``64 * w + j`` falls in the same bin as pixel ``k``.
    """
    lead, n_pixels = bins.shape[:-1], bins.shape[-1]
    groups = int(np.prod(lead))
    dtype, n_words = _word_dtype(n_pixels)
    pixel = np.arange(n_pixels)
    word, half, bit = pixel // 64, (pixel % 64) // 32, pixel % 32
    flat_bins = bins.reshape(groups, n_pixels)
    slot = (np.arange(groups)[:, np.newaxis] * n_bins + flat_bins) * n_words + word
    # float64 sums of distinct powers of two below 2**32 are exact
    halves = np.bincount(
        (slot * 2 + half).ravel(),
        weights=np.broadcast_to(np.exp2(bit), slot.shape).ravel(),
        minlength=groups * n_bins * n_words * 2,
    ).reshape(groups, n_bins, n_words, 2)
    words = halves[..., 0].astype(np.uint64) | (halves[..., 1].astype(np.uint64) << 32)
    words = words.astype(dtype)
    masks = words[np.arange(groups)[:, np.newaxis], flat_bins]
    masks = masks.reshape(lead + (n_pixels, n_words))
    # stored pixel-major so that the per-pair sum over pixels adds whole arrays
    stored = np.ascontiguousarray(np.moveaxis(masks, (-2, -1), (0, 1)))
    return np.moveaxis(stored, (0, 1), (-2, -1))


def _joint_log_sums(masks_a, masks_b, table):
    """``sum_k log2 c_k`` (fixed point, int64) of the joint histograms: ``(...)``."""
    # pixel-major masks make these temporaries pixel-major too (ufunc order 'K')
    counts = np.bitwise_count(np.moveaxis(masks_a & masks_b, (-2, -1), (0, 1)))
    counts = counts[:, 0] if counts.shape[1] == 1 else counts.sum(1)
    return np.take(table, counts).sum(0, dtype=np.int64)


def _self_log_sums(bins, n_bins, table):
    """``sum_k log2 c_k`` of each patch's own histogram: ``sum_u h_u log2 h_u``."""
    hist = _histograms(bins, n_bins)
    return (hist * table[hist].astype(np.int64)).sum(-1)


# Features are tuples of arrays shaped (..., C, ...) with the batch axes first;
# a kernel maps two feature tuples of equal batch shape to values (...).


def _features(measure, values, n_bins):
    """Per-patch features of ``values`` ``(..., C, N)`` for ``measure``."""
    n_pixels = values.shape[-1]
    if measure in ("mutual_information", "joint_entropy", "entropy"):
        bins = _bin_indices(values, n_bins)
        table = _log_table(n_pixels)
        self_sums = _self_log_sums(bins, n_bins, table)
        if measure == "entropy":
            return (self_sums,)
        return (_bin_masks(bins, n_bins), self_sums)
    if measure == "kl_divergence":
        hist = _histograms(_bin_indices(values, n_bins), n_bins)
        prob = (hist + _KL_PSEUDO_COUNT) / (n_pixels + n_bins * _KL_PSEUDO_COUNT)
        return (prob, np.log2(prob))
    if measure in ("l1", "l2", "psnr"):
        if _is_uint8(values):
            # integer differences keep L1, L2 and PSNR exact for uint8 images
            return (values.astype(np.int32),)
        return (values.astype(np.float64, copy=False),)
    if measure in ("ssim", "variance"):
        unit = _unit_values(values)
        mean = unit.mean(-1)
        centred = unit - mean[..., np.newaxis]
        return (centred, mean, (centred**2).mean(-1))
    raise ValueError(f"unknown measure {measure!r}")


def _standalone(measure, features, n_pixels):
    """Standalone score of each patch: ``(...)``, averaged over channels."""
    if measure == "entropy":
        (self_sums,) = features
        n_channels = self_sums.shape[-1]
        return np.log2(n_pixels) - self_sums.sum(-1) / (
            n_channels * n_pixels * _LOG_SCALE
        )
    _, _, variance = features
    return variance.mean(-1)


def _kernel(measure, features_a, features_b, n_pixels, is_uint8):
    """Value of ``measure`` for each pair, averaged over channels: ``(...)``."""
    if measure in ("mutual_information", "joint_entropy"):
        masks_a, self_a = features_a
        masks_b, self_b = features_b
        table = _log_table(n_pixels)
        joint = _joint_log_sums(masks_a, masks_b, table)
        n_channels = joint.shape[-1]
        norm = n_channels * n_pixels * _LOG_SCALE
        if measure == "joint_entropy":
            return np.log2(n_pixels) - joint.sum(-1) / norm
        # MI = H1 + H2 - JE = log2 N - (S1 + S2 - S12) / N, summed exactly in int64
        return np.log2(n_pixels) - (self_a + self_b - joint).sum(-1) / norm
    if measure == "kl_divergence":
        prob_a, log_a = features_a
        _, log_b = features_b
        return (prob_a * (log_a - log_b)).sum(-1).mean(-1)
    if measure in ("l1", "l2", "psnr"):
        (values_a,), (values_b,) = features_a, features_b
        diff = values_a - values_b
        scale = 255.0 if is_uint8 else 1.0
        if measure == "l1":
            return (np.abs(diff).sum(-1) / scale).mean(-1)
        squares = (diff * diff).sum(-1)
        if measure == "l2":
            return (np.sqrt(squares) / scale).mean(-1)
        with np.errstate(divide="ignore"):
            return (10.0 * np.log10(n_pixels * scale**2 / squares)).mean(-1)
    if measure == "ssim":
        centred_a, mean_a, var_a = features_a
        centred_b, mean_b, var_b = features_b
        cov = (centred_a * centred_b).mean(-1)
        luminance = (2 * mean_a * mean_b + _SSIM_C1) / (
            mean_a**2 + mean_b**2 + _SSIM_C1
        )
        structure = (2 * cov + _SSIM_C2) / (var_a + var_b + _SSIM_C2)
        return (luminance * structure).mean(-1)
    raise ValueError(f"unknown measure {measure!r}")


# measures with m(a, b) == m(b, a)
_SYMMETRIC = {"mutual_information", "joint_entropy", "l1", "l2", "ssim", "psnr"}


def _pairwise(measure, values, n_bins):
    """Measure of every ordered patch pair: ``(n, P, P)``; ``[i, a, b] = m(a, b)``.

    Filled one pair offset ``d`` at a time: entries ``(a, a + d)`` of all images
    come from one vectorized kernel call on two shifted slices.
    """
    n, n_patches, _, n_pixels = values.shape
    features = _features(measure, values, n_bins)
    is_uint8 = _is_uint8(values)
    flat = np.empty((n, n_patches * n_patches), dtype=np.float64)
    step = n_patches + 1
    for offset in range(n_patches):
        count = n_patches - offset
        head = tuple(f[:, :count] for f in features)
        tail = tuple(f[:, offset:] for f in features)
        upper = _kernel(measure, head, tail, n_pixels, is_uint8)
        start = offset
        flat[:, start : start + (count - 1) * step + 1 : step] = upper
        if offset:
            lower = upper if measure in _SYMMETRIC else _kernel(
                measure, tail, head, n_pixels, is_uint8
            )
            start = offset * n_patches
            flat[:, start : start + (count - 1) * step + 1 : step] = lower
    return flat.reshape(n, n_patches, n_patches)


# ---------------------------------------------------------------- public API


def _patch_values(patches, name):
    """``(m, ph, pw[, C])`` patches -> pixel values ``(m, C, ph * pw)``."""
    patches = np.asarray(patches)
    if patches.dtype.kind not in "biuf":
        raise TypeError(
            f"{name} must hold real numbers (uint8 or float patches), got dtype "
            f"{patches.dtype}."
        )
    if patches.ndim not in (3, 4):
        raise ValueError(
            f"{name} must be a batch of patches of shape (m, ph, pw) or "
            f"(m, ph, pw, C), got shape {patches.shape}."
        )
    if patches.size == 0:
        raise ValueError(f"{name} is empty (shape {patches.shape}).")
    if patches.dtype.kind == "f" and not np.isfinite(patches).all():
        raise ValueError(f"{name} contains NaN or infinity.")
    if patches.ndim == 3:
        patches = patches[..., np.newaxis]
    m, height, width, channels = patches.shape
    return np.moveaxis(patches, -1, 1).reshape(m, channels, height * width)


def _check_n_bins(n_bins):
    if isinstance(n_bins, bool) or not isinstance(n_bins, (int, np.integer)):
        raise TypeError(f"n_bins must be an int >= 2, got {n_bins!r}.")
    if n_bins < 2:
        raise ValueError(f"n_bins must be an int >= 2, got {n_bins!r}.")
    return int(n_bins)


def _pair_measure(measure, patches1, patches2, n_bins=16):
    values1 = _patch_values(patches1, "patches1")
    values2 = _patch_values(patches2, "patches2")
    if values1.shape != values2.shape:
        raise ValueError(
            "patches1 and patches2 must have the same shape, got "
            f"{np.shape(patches1)} and {np.shape(patches2)}."
        )
    if values1.dtype != values2.dtype:
        raise TypeError(
            "patches1 and patches2 must have the same dtype (their intensity "
            f"scales differ otherwise), got {values1.dtype} and {values2.dtype}."
        )
    n_bins = _check_n_bins(n_bins)
    features1 = _features(measure, values1, n_bins)
    features2 = _features(measure, values2, n_bins)
    return _kernel(measure, features1, features2, values1.shape[-1], _is_uint8(values1))


_PAIR_DOC = """
    Parameters
    ----------
    patches1, patches2 : array-like of shape (m, ph, pw) or (m, ph, pw, C)
        Two batches of patches of the same shape and dtype; pair ``i`` is
        ``(patches1[i], patches2[i])``. ``uint8`` intensities are divided by
        255; other dtypes are read as values in [0, 1].
{extra}
    Returns
    -------
    values : ndarray of shape (m,)
        The measure of each pair, averaged over channels.
"""
_BINS_DOC = """    n_bins : int, default=16
        Number of equal-width intensity bins over [0, 1].
"""


def patch_entropy(patches, *, n_bins=16):
    """Shannon entropy (bits) of each patch's intensity histogram.

    Parameters
    ----------
    patches : array-like of shape (m, ph, pw) or (m, ph, pw, C)
        ``uint8`` intensities are divided by 255; other dtypes are read as
        values in [0, 1] (outside values fall into the end bins).
    n_bins : int, default=16
        Number of equal-width intensity bins over [0, 1].

    Returns
    -------
    entropy : ndarray of shape (m,)
        ``-sum_u p_u log2 p_u`` per channel, averaged over channels.

    See Also
    --------
    mutual_information : Entropy shared by two patches.

    Examples
    --------
    >>> import numpy as np
    >>> from skpatch.ordering import patch_entropy
    >>> patch_entropy(np.array([[[0, 255], [0, 255]]], dtype=np.uint8))
    array([1.])
    """
    values = _patch_values(patches, "patches")
    features = _features("entropy", values, _check_n_bins(n_bins))
    return _standalone("entropy", features, values.shape[-1])


def patch_variance(patches):
    """Population variance of each patch's intensities (on the [0, 1] scale).

    Parameters
    ----------
    patches : array-like of shape (m, ph, pw) or (m, ph, pw, C)
        ``uint8`` intensities are divided by 255.

    Returns
    -------
    variance : ndarray of shape (m,)
        Averaged over channels.

    Examples
    --------
    >>> import numpy as np
    >>> from skpatch.ordering import patch_variance
    >>> patch_variance(np.array([[[0.0, 1.0], [0.0, 1.0]]]))
    array([0.25])
    """
    values = _patch_values(patches, "patches")
    return _standalone("variance", _features("variance", values, 2), values.shape[-1])


def joint_entropy(patches1, patches2, *, n_bins=16):
    return _pair_measure("joint_entropy", patches1, patches2, n_bins)


def mutual_information(patches1, patches2, *, n_bins=16):
    return _pair_measure("mutual_information", patches1, patches2, n_bins)


def kl_divergence(patches1, patches2, *, n_bins=16):
    return _pair_measure("kl_divergence", patches1, patches2, n_bins)


def l1_distance(patches1, patches2):
    return _pair_measure("l1", patches1, patches2)


def l2_distance(patches1, patches2):
    return _pair_measure("l2", patches1, patches2)


def ssim(patches1, patches2):
    return _pair_measure("ssim", patches1, patches2)


def psnr(patches1, patches2):
    return _pair_measure("psnr", patches1, patches2)


joint_entropy.__doc__ = (
    """Joint entropy (bits) of the joint intensity histogram of each pair.

    ``JE = -sum_{u,v} p_uv log2 p_uv`` over the ``n_bins x n_bins`` joint
    histogram of co-located pixels (paper, eq. 3-4). Lower means more similar.
"""
    + _PAIR_DOC.format(extra=_BINS_DOC)
    + """
    See Also
    --------
    mutual_information, patch_entropy

    Examples
    --------
    >>> import numpy as np
    >>> from skpatch.ordering import joint_entropy
    >>> p = np.array([[[0, 255], [0, 255]]], dtype=np.uint8)
    >>> joint_entropy(p, p)
    array([1.])
"""
)
mutual_information.__doc__ = (
    """Mutual information (bits) of each pair: ``H(p1) + H(p2) - JE(p1, p2)``.

    The paper's eq. 5, over ``n_bins`` intensity bins. Higher means more
    similar; the MI of a patch with itself is its entropy.
"""
    + _PAIR_DOC.format(extra=_BINS_DOC)
    + """
    See Also
    --------
    joint_entropy, patch_entropy

    References
    ----------
    .. [1] H. Ghebrechristos and G. Alaghband, "Expediting Training Using
       Information Theory-Based Patch Ordering Algorithm", eq. 5.

    Examples
    --------
    >>> import numpy as np
    >>> from skpatch.ordering import mutual_information
    >>> p = np.array([[[0, 255], [0, 255]]], dtype=np.uint8)
    >>> mutual_information(p, p)
    array([1.])
"""
)
kl_divergence.__doc__ = (
    """Kullback-Leibler divergence ``KL(p1 || p2)`` (bits) of intensity histograms.

    ``sum_u P1_u log2(P1_u / P2_u)`` where each histogram gets a pseudo-count
    of 0.5 per bin (Krichevsky-Trofimov) so that the divergence stays finite.
    Not symmetric. Lower means more similar.
"""
    + _PAIR_DOC.format(extra=_BINS_DOC)
    + """
    Examples
    --------
    >>> import numpy as np
    >>> from skpatch.ordering import kl_divergence
    >>> p = np.array([[[0, 255], [0, 255]]], dtype=np.uint8)
    >>> kl_divergence(p, p)
    array([0.])
"""
)
l1_distance.__doc__ = (
    """L1 norm of the intensity difference ``sum |p1 - p2|`` (lower: more similar).
"""
    + _PAIR_DOC.format(extra="")
    + """
    Examples
    --------
    >>> import numpy as np
    >>> from skpatch.ordering import l1_distance
    >>> l1_distance(np.zeros((1, 2, 2)), np.full((1, 2, 2), 0.5))
    array([2.])
"""
)
l2_distance.__doc__ = (
    """L2 norm of the intensity difference ``sqrt(sum (p1 - p2)**2)`` (lower: more similar).
"""
    + _PAIR_DOC.format(extra="")
    + """
    Examples
    --------
    >>> import numpy as np
    >>> from skpatch.ordering import l2_distance
    >>> l2_distance(np.zeros((1, 2, 2)), np.full((1, 2, 2), 0.5))
    array([1.])
"""
)
ssim.__doc__ = (
    """Structural similarity of each pair, one window covering the whole patch.

    ``((2 mu1 mu2 + C1)(2 cov + C2)) / ((mu1^2 + mu2^2 + C1)(var1 + var2 + C2))``
    with population statistics, data range 1, ``C1 = 0.01**2`` and
    ``C2 = 0.03**2`` (Wang et al. 2004). Higher means more similar; 1 for
    identical patches.
"""
    + _PAIR_DOC.format(extra="")
    + """
    Examples
    --------
    >>> import numpy as np
    >>> from skpatch.ordering import ssim
    >>> p = np.array([[[0.0, 1.0], [0.5, 0.25]]])
    >>> ssim(p, p)
    array([1.])
"""
)
psnr.__doc__ = (
    """Peak signal-to-noise ratio (dB) of each pair: ``10 log10(1 / MSE)``.

    Data range 1 (``uint8`` is divided by 255). Identical patches give
    ``inf``. Higher means more similar.
"""
    + _PAIR_DOC.format(extra="")
    + """
    Examples
    --------
    >>> import numpy as np
    >>> from skpatch.ordering import psnr
    >>> psnr(np.zeros((1, 2, 2)), np.full((1, 2, 2), 0.5)).round(4)
    array([6.0206])
"""
)
