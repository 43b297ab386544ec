"""Eq. (13) of Madala et al.: the bound, vectorized over data set settings.

The formula behind :func:`skpatch.generalization_bound` and the
constants :class:`skpatch.PatchBoundPredictor` calibrates; torch-free.
"""

import numbers

import numpy as np
from sklearn.utils._param_validation import Interval, StrOptions, validate_params

__all__ = ["generalization_bound"]

_CONSTANTS = ("alpha", "c4", "c6")
# bound evaluations held at once by the min-over-smaller grid (bounded memory)
_GRID_CHUNK_ELEMENTS = 1 << 20
# range searched for alpha when it is calibrated
_ALPHA_RANGE = (1e-2, 1e2)


def _as_pair(value, name):
    """Split an int / array or an ``(h, w)`` tuple into two float arrays."""
    if isinstance(value, tuple):
        if len(value) != 2:
            raise ValueError(
                f"{name} given as a tuple must be (h, w) with 2 entries, got "
                f"{len(value)} entries."
            )
        first, second = value
    else:
        first = second = value
    return _as_real(first, name), _as_real(second, name)


def _as_real(value, name):
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name} must be numeric, got {value!r}.") from exc
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} must be finite, got {value!r}.")
    return array


def _require(condition, message):
    if not np.all(condition):
        raise ValueError(message)


def _check_integer_valued(array, name):
    _require(array == np.round(array), f"{name} must hold integers, got {array!r}.")


def _check_settings(n_train, n_classes, image_hw, patch_hw, n_channels, stride_hw):
    """Raise a ValueError naming the first setting outside the model's domain."""
    _require(n_train > 0, f"n_train must be > 0 (training images), got {n_train!r}.")
    _require(n_classes >= 1, f"n_classes must be >= 1, got {n_classes!r}.")
    _require(n_channels >= 1, f"n_channels must be >= 1, got {n_channels!r}.")
    _check_integer_valued(n_channels, "n_channels")
    for side, image, patch, stride in zip(("height", "width"), image_hw, patch_hw, stride_hw):
        _require(image >= 1, f"image_size ({side}) must be >= 1, got {image!r}.")
        _require(patch >= 1, f"patch_size ({side}) must be >= 1, got {patch!r}.")
        _check_integer_valued(image, f"image_size ({side})")
        _check_integer_valued(patch, f"patch_size ({side})")
        _require(stride >= 1, f"stride ({side}) must be >= 1, got {stride!r}.")
        _require(
            patch <= image,
            f"patch_size ({side}) must not exceed image_size ({side}): got patch "
            f"{patch!r} for image {image!r}.",
        )


def _bound_terms(n_train, n_classes, height, width, n_channels, patch_h, patch_w,
                 stride_h, stride_w, alpha, formula):
    """The two terms of eq. (13) divided by sqrt(T_eff): (mesh part, noise part).

    The bound is ``c6 * mesh_part + c4 * noise_part``.
    """
    n_eff = ((height - patch_h) / stride_h + 1) * ((width - patch_w) / stride_w + 1)
    dim = patch_h * patch_w * n_channels
    area_ratio = (patch_h * patch_w) / (height * width)
    # the authors' code uses the side ratio t/h where the paper has t^2/h^2
    ratio = np.sqrt(area_ratio) if formula == "code" else area_ratio
    mesh = np.exp(-(alpha / dim) * np.log(n_train * n_eff))
    m1 = np.exp(-np.log(ratio) / dim)
    m3 = -np.log(ratio)
    scale = 1.0 / np.sqrt(n_eff)
    return mesh * m1 * scale, np.sqrt(n_classes) * m3 * scale


def _candidate_grid(settings, min_over_smaller, min_patch_size):
    """Patch sizes over which the minimum is taken, shape (m, n_candidates).

    Both sides shrink together, one pixel at a time, down to
    ``min_patch_size`` on the shorter side: what a stack of 3x3 convolutions
    sees as its receptive field grows. Invalid slots are masked.
    """
    patch_h, patch_w = settings["patch_h"], settings["patch_w"]
    if not min_over_smaller:
        return patch_h[:, None], patch_w[:, None], np.ones((patch_h.size, 1), bool)
    shortest = np.minimum(patch_h, patch_w)
    n_steps = np.maximum(shortest - min_patch_size, 0).astype(np.int64)
    steps = np.arange(int(n_steps.max(initial=0)) + 1)
    valid = steps[None, :] <= n_steps[:, None]
    cand_h = np.where(valid, patch_h[:, None] - steps, patch_h[:, None])
    cand_w = np.where(valid, patch_w[:, None] - steps, patch_w[:, None])
    return cand_h, cand_w, valid


def _grid_terms(settings, alpha, formula, min_over_smaller, min_patch_size):
    """Terms of eq. (13) on every candidate patch size; masked slots are NaN."""
    cand_h, cand_w, valid = _candidate_grid(settings, min_over_smaller, min_patch_size)
    col = {key: value[:, None] for key, value in settings.items()}
    mesh, noise = _bound_terms(
        col["n_train"], col["n_classes"], col["height"], col["width"],
        col["n_channels"], cand_h, cand_w, col["stride_h"], col["stride_w"],
        alpha, formula,
    )
    mesh = np.where(valid, mesh, np.nan)
    noise = np.where(valid, noise, np.nan)
    return mesh, noise


def _bound_flat(settings, *, alpha, c4, c6, formula, min_over_smaller, min_patch_size):
    """Eq. (13) for flat settings, chunked so the candidate grid stays bounded."""
    n = settings["n_train"].size
    out = np.empty(n, dtype=np.float64)
    longest = int(np.max(np.minimum(settings["patch_h"], settings["patch_w"]), initial=1))
    rows_per_chunk = max(1, _GRID_CHUNK_ELEMENTS // max(longest, 1))
    for start in range(0, n, rows_per_chunk):
        part = {key: value[start:start + rows_per_chunk] for key, value in settings.items()}
        mesh, noise = _grid_terms(part, alpha, formula, min_over_smaller, min_patch_size)
        out[start:start + rows_per_chunk] = np.nanmin(c6 * mesh + c4 * noise, axis=1)
    return out


def _flat_settings(n_train, n_classes, image_size, patch_size, n_channels, stride):
    """Validate and broadcast settings; return (flat dict, broadcast shape)."""
    n_train = _as_real(n_train, "n_train")
    n_classes = _as_real(n_classes, "n_classes")
    n_channels = _as_real(n_channels, "n_channels")
    image_hw = _as_pair(image_size, "image_size")
    patch_hw = _as_pair(patch_size, "patch_size")
    stride_hw = _as_pair(stride, "stride")
    arrays = np.broadcast_arrays(
        n_train, n_classes, *image_hw, *patch_hw, n_channels, *stride_hw
    )
    names = ("n_train", "n_classes", "height", "width", "patch_h", "patch_w",
             "n_channels", "stride_h", "stride_w")
    settings = {name: np.ravel(a) for name, a in zip(names, arrays)}
    _check_settings(
        settings["n_train"], settings["n_classes"],
        (settings["height"], settings["width"]),
        (settings["patch_h"], settings["patch_w"]),
        settings["n_channels"], (settings["stride_h"], settings["stride_w"]),
    )
    return settings, arrays[0].shape


@validate_params(
    {
        "n_train": ["array-like", Interval(numbers.Real, None, None, closed="neither")],
        "n_classes": ["array-like", Interval(numbers.Real, None, None, closed="neither")],
        "image_size": ["array-like", tuple, Interval(numbers.Real, None, None, closed="neither")],
        "patch_size": ["array-like", tuple, Interval(numbers.Real, None, None, closed="neither")],
        "n_channels": ["array-like", Interval(numbers.Real, None, None, closed="neither")],
        "stride": ["array-like", tuple, Interval(numbers.Real, None, None, closed="neither")],
        "alpha": [Interval(numbers.Real, 0, None, closed="neither")],
        "c4": [Interval(numbers.Real, 0, None, closed="left")],
        "c6": [Interval(numbers.Real, 0, None, closed="left")],
        "min_over_smaller": ["boolean"],
        "min_patch_size": [Interval(numbers.Integral, 1, None, closed="left")],
        "formula": [StrOptions({"paper", "code"})],
    },
    prefer_skip_nested_validation=True,
)
def generalization_bound(
    n_train,
    n_classes,
    image_size,
    patch_size,
    *,
    n_channels=3,
    stride=1,
    alpha=3.0,
    c4=0.5,
    c6=1.0,
    min_over_smaller=True,
    min_patch_size=3,
    formula="paper",
):
    r"""A priori generalization error bound of a CNN trained on patches.

    Evaluates eq. (13) of Madala et al.:

    .. math::

        \frac{1}{\sqrt{T_{eff}}}\Big(c_6 \big(\tfrac{1}{N T_{eff}}\big)^{\alpha/D_T}
        \theta^{-1/D_T} + c_4 \sqrt{K}\,(-\log\theta)\Big),
        \quad \theta = \frac{H_T W_T}{H W},

    with :math:`T_{eff} = ((H - H_T)/S_H + 1)((W - W_T)/S_W + 1)` and
    :math:`D_T = H_T W_T C`. Every setting broadcasts against the others.

    Parameters
    ----------
    n_train : float or array-like
        Number of training images ``N`` (> 0).
    n_classes : float or array-like
        Number of classes ``K`` (>= 1).
    image_size : int, array-like or tuple (h, w)
        Image height and width. An int or an array means square images; a
        tuple ``(h, w)`` (each an int or array) gives the two sides.
    patch_size : int, array-like or tuple (h, w)
        Patch size ``HT x WT``, read like ``image_size``; at most the image.
    n_channels : int or array-like, default=3
        Channels ``C``.
    stride : float, array-like or tuple (h, w), default=1
        The ``S`` that thins overlapping patches in ``T_eff`` (>= 1).
    alpha : float, default=3.0
        Effective-dimension exponent of the mesh norm, eq. (6).
    c4 : float, default=0.5
        Weight of the label-noise (training error) term, eq. (8).
    c6 : float, default=1.0
        Weight of the mesh-norm term, eq. (13).
    min_over_smaller : bool, default=True
        Return the minimum of the bound over all patch sizes from
        ``min_patch_size`` up to ``patch_size`` (Figure 3 of the paper): a CNN
        sees every receptive field up to its largest. Both sides shrink
        together, so for square patches these are the squares ``t x t``.
    min_patch_size : int, default=3
        Smallest patch side in that minimum (a 3x3 convolution).
    formula : {'paper', 'code'}, default='paper'
        ``'code'`` reproduces the authors' public ``noise_model.py``, which
        uses the side ratio ``sqrt(theta)`` (``t/h``) in place of ``theta`` in
        both ``m1`` and ``m3``.

    Returns
    -------
    bound : float or ndarray
        The bound, with the broadcast shape of the settings.

    See Also
    --------
    PatchBoundPredictor : The bound as a regressor calibrated to observed errors.

    Notes
    -----
    ``m1(x) = 1/x``, ``m2(K) = sqrt(K)`` and ``m3(x) = -log(x)`` as in the
    paper. The bound is not normalized to [0, 1]; at very small patches it
    can exceed 1, as the authors note.

    References
    ----------
    .. [1] V. C. Madala, S. Chandrasekaran and J. Bunk, "CNNs Avoid Curse of
       Dimensionality by Learning on Patches", IEEE Open Journal of Signal
       Processing, 2023.

    Examples
    --------
    >>> from skpatch import generalization_bound
    >>> round(float(generalization_bound(50_000, 10, 32, 8)), 4)
    0.2063
    """
    settings, shape = _flat_settings(
        n_train, n_classes, image_size, patch_size, n_channels, stride
    )
    bound = _bound_flat(
        settings, alpha=float(alpha), c4=float(c4), c6=float(c6), formula=formula,
        min_over_smaller=bool(min_over_smaller), min_patch_size=int(min_patch_size),
    )
    bound = bound.reshape(shape)
    return bound[()] if bound.ndim == 0 else bound
