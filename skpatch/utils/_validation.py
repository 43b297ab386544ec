"""Validation of image inputs: the data contract shared by every estimator.

Images come as ``(n, H, W)``, ``(n, H, W, C)`` (channels last), or as 2-D rows
``(n, H*W*C)`` together with ``image_shape=(H, W[, C])``. Everything is
returned as a 4-D ``(n, H, W, C)`` array so that downstream code has a single
layout to handle; :func:`restore_layout` maps results back to the caller's
layout. Channels-first input, ``(n, C, H, W)`` arrays or rows with
``image_shape=(C, H, W)``, would be read as ``C x H`` images with ``W``
channels: it is warned about when its shape gives it away.
"""

import numbers
import sys
import warnings

import numpy as np
from sklearn.utils import check_array
from sklearn.utils.validation import validate_data

__all__ = [
    "check_images",
    "check_image_shape",
    "check_size_pair",
    "restore_layout",
    "validate_images",
]


def check_size_pair(value, name, *, minimum=1):
    """Return ``(h, w)`` from an int or a pair of ints, or raise naming ``name``.

    Parameters
    ----------
    value : int or tuple of two ints
        The size; an int ``s`` means ``(s, s)``.
    name : str
        Parameter name used in error messages.
    minimum : int, default=1
        Smallest allowed value of each entry.

    Returns
    -------
    pair : tuple of two int
    """
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        pair = (int(value), int(value))
    elif (
        isinstance(value, (tuple, list))
        and len(value) == 2
        and all(
            isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in value
        )
    ):
        pair = (int(value[0]), int(value[1]))
    else:
        raise TypeError(
            f"{name} must be an int or a pair of ints (h, w), got {value!r}."
        )
    if min(pair) < minimum:
        raise ValueError(f"{name} must be >= {minimum} in each dimension, got {value!r}.")
    return pair


def check_image_shape(image_shape, n_features=None):
    """Validate ``image_shape`` and resolve it to ``(H, W, C)``.

    One entry may be ``-1``: it is inferred from ``n_features`` as in
    :func:`numpy.reshape` (``image_shape=(1, -1)`` reads each row as a
    one-pixel-high strip).

    Parameters
    ----------
    image_shape : tuple of 2 or 3 ints
        ``(H, W)`` for grayscale rows, ``(H, W, C)`` for channels-last rows.
    n_features : int, default=None
        Row length the shape must account for; ``None`` skips that check
        (and forbids ``-1``).

    Returns
    -------
    shape : tuple of three int
        ``(H, W, C)``, with ``C = 1`` for a 2-entry ``image_shape``.
    """
    if not isinstance(image_shape, (tuple, list)) or len(image_shape) not in (2, 3):
        raise TypeError(
            "image_shape must be a tuple (H, W) or (H, W, C) of positive ints, "
            f"got {image_shape!r}."
        )
    dims = list(image_shape)
    for d in dims:
        if not isinstance(d, numbers.Integral) or isinstance(d, bool):
            raise TypeError(f"image_shape must hold ints, got {image_shape!r}.")
    if len(dims) == 2:
        dims.append(1)
    n_unknown = sum(d == -1 for d in dims)
    if n_unknown > 1 or any(d == 0 or d < -1 for d in dims):
        raise ValueError(
            "image_shape entries must be positive (at most one may be -1), "
            f"got {image_shape!r}."
        )
    if n_unknown:
        known = int(np.prod([d for d in dims if d != -1]))
        if n_features is None:
            raise ValueError(
                f"image_shape={tuple(image_shape)!r} has a -1 entry, which needs "
                "2-D input rows to infer it from."
            )
        if n_features % known:
            raise ValueError(
                f"image_shape={tuple(image_shape)!r} does not divide the "
                f"{n_features} features of each row of X."
            )
        dims = [n_features // known if d == -1 else d for d in dims]
    dims = tuple(int(d) for d in dims)
    if n_features is not None and int(np.prod(dims)) != n_features:
        raise ValueError(
            f"image_shape={tuple(image_shape)!r} holds {int(np.prod(dims))} values "
            f"per image but X has {n_features} features per row; expected "
            "n_features == H * W * C."
        )
    return dims


_EXPECTED_LAYOUT = (
    "(n, H, W[, C]) images, or 2-D rows (n, H*W*C) with image_shape=(H, W[, C])"
)


def _input_ndim(X):
    """``X.ndim`` without converting ``X``; None for input numpy cannot shape (ragged lists)."""
    ndim = getattr(X, "ndim", None)
    if ndim is None:
        try:
            ndim = np.asarray(X).ndim
        except ValueError:  # ragged nested lists: check_array reports them
            return None
    return ndim


def _check_input_kind(X, input_name):
    """Reject what the image contract cannot hold, before any conversion.

    Masked arrays (``np.asarray`` would drop their mask), non-numeric and
    complex data, and 0-D or 1-D input.
    """
    if isinstance(X, np.ma.MaskedArray) and np.ma.getmaskarray(X).any():
        raise TypeError(
            f"{input_name} is a numpy masked array with masked entries "
            f"({int(np.ma.count_masked(X))} of {X.size}): masked arrays are not "
            "supported (skpatch would read the values under the mask); fill them "
            f"({input_name}.filled(...)) or drop the masked images. A masked array "
            "with nothing masked is accepted."
        )
    _reject_non_numeric(X, input_name)
    ndim = _input_ndim(X)
    if ndim is not None and ndim < 2:
        if ndim == 0:
            got, hint = "a scalar (0-D)", "pass a batch of images, not a single number"
        else:
            got = f"a 1-D array of shape {np.shape(X)}"
            hint = (
                f"{input_name}.reshape(1, -1) with image_shape if it holds the pixels of "
                "a single image"
            )
        raise ValueError(
            f"{input_name} must be {_EXPECTED_LAYOUT}; got {got}. Reshape your data: "
            f"{hint}."
        )


def _external_stacklevel():
    """``stacklevel`` of the first caller outside skpatch and scikit-learn."""
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_globals.get("__name__", "").split(".")[0] in (
        "skpatch",
        "sklearn",
    ):
        frame, level = frame.f_back, level + 1
    return level


def _warn_if_channels_first(shape, given, input_name):
    """Warn when ``(H, W, C)`` images look like channels-first ``(C, H, W)`` ones.

    A first axis of 1, 3 or 4 (grayscale, RGB, RGBA) with more than 4 values on
    the last axis is far likelier a ``(C, H, W)`` image than a strip of a few
    pixels with many channels. ``given`` is the ``image_shape`` tuple for 2-D
    rows, or the shape of the 4-D array.
    """
    height, width, channels = shape
    if height not in (1, 3, 4) or channels <= 4:
        return
    moved = f"(n, {width}, {channels}, {height})"
    if len(given) == 3:  # image_shape of 2-D rows
        what = f"image_shape={tuple(given)!r} reads each row of {input_name}"
        fix = (
            f"if each row holds a channels-first (C, H, W) image, pass "
            f"np.moveaxis({input_name}.reshape(-1, {height}, {width}, {channels}), 1, -1) "
            f"(images {moved}) instead"
        )
    else:
        what = f"{input_name} of shape {tuple(given)} is read"
        fix = (
            f"if it holds (n, C, H, W) images, pass np.moveaxis({input_name}, 1, -1), of "
            f"shape {moved}"
        )
    warnings.warn(
        f"{what} as {height}x{width} images with {channels} channels, which looks like "
        f"channels-first data with {height} channel(s): skpatch takes images channels "
        f"last, (n, H, W, C); {fix}.",
        UserWarning,
        stacklevel=_external_stacklevel(),
    )


def _reject_non_numeric(X, input_name):
    dtype = getattr(X, "dtype", None)
    if dtype is None:
        return
    # pandas extension dtypes have no numpy kind; let check_array handle them
    kind = getattr(dtype, "kind", None)
    if kind in ("U", "S"):
        raise TypeError(
            f"{input_name} must hold numbers (uint8 or float images), got an "
            f"array of strings with dtype {dtype}."
        )
    if kind == "c":
        raise ValueError(
            f"Complex data not supported: {input_name} has dtype {dtype}; "
            "images must be real (uint8 or float)."
        )


_FLOAT32_MAX = float(np.finfo(np.float32).max)

# A predict-time peak this many times the fit-time one (or, after a change of
# dtype family, this many times smaller) means the pixels are on another scale.
_SCALE_RATIO = 8.0


def _peak(images):
    """Largest absolute value, without allocating a copy of ``images``."""
    if images.size == 0:
        return 0.0
    return float(max(abs(images.max()), abs(images.min())))


def _check_float32_range(images, input_name):
    """Reject values that float32, the dtype skpatch computes in, cannot hold."""
    if images.dtype.kind != "f" or images.dtype.itemsize <= 4:
        return
    peak = _peak(images)
    if peak > _FLOAT32_MAX:
        raise ValueError(
            f"{input_name} holds values up to {peak:.3g} in magnitude, beyond the "
            f"float32 range (+-{_FLOAT32_MAX:.3g}) that skpatch computes in; "
            "rescale the images (e.g. to [0, 1]) before passing them."
        )


def _to_float(images):
    """uint8 -> float32 in [0, 1]; floats kept; other ints and bools -> float64 values."""
    if images.dtype == np.uint8:
        return images.astype(np.float32) / np.float32(255.0)
    if images.dtype.kind == "f":
        return images
    return images.astype(np.float64)


def check_images(
    X,
    *,
    image_shape=None,
    dtype=None,
    input_name="X",
    ensure_min_samples=1,
    copy=False,
):
    """Validate a batch of images and return it as ``(n, H, W, C)``.

    Parameters
    ----------
    X : array-like of shape (n, H, W), (n, H, W, C) or (n, H*W*C)
        The images, channels last. 2-D rows need ``image_shape``.
    image_shape : tuple (H, W) or (H, W, C), default=None
        Shape of one image when ``X`` is 2-D; one entry may be ``-1``.
        Ignored for 3-D and 4-D ``X`` only if it agrees with them.
    dtype : {None, 'float'}, default=None
        ``None`` keeps the input dtype (any real numeric type). ``'float'``
        scales ``uint8`` to float32 in [0, 1], keeps floats as they are, and
        converts other integer or boolean data to float64 values unscaled.
    input_name : str, default='X'
        Name used in error messages.
    ensure_min_samples : int, default=1
        Minimum number of images.
    copy : bool, default=False
        Force a copy (otherwise the input may be returned as a view).

    Returns
    -------
    images : ndarray of shape (n, H, W, C)
        Grayscale input gets ``C = 1``.

    Raises
    ------
    TypeError
        Non-numeric data; a numpy masked array with masked entries (one with
        nothing masked is taken as its data).
    ValueError
        Complex data, wrong number of dimensions (0-D and 1-D included),
        ``image_shape`` not matching the row length, NaN or infinite values,
        no images, zero-size images.

    Warns
    -----
    UserWarning
        When the images look channels-first: a 4-D ``X`` or 3-entry
        ``image_shape`` whose ``H`` is 1, 3 or 4 and whose ``C`` is above 4,
        such as ``(n, 3, 32, 32)``.

    Examples
    --------
    >>> import numpy as np
    >>> from skpatch.utils import check_images
    >>> check_images(np.zeros((2, 4, 5), dtype=np.uint8)).shape
    (2, 4, 5, 1)
    >>> check_images(np.ones((2, 12)), image_shape=(2, 2, 3)).shape
    (2, 2, 2, 3)
    """
    if dtype not in (None, "float"):
        raise ValueError(f"dtype must be None or 'float', got {dtype!r}.")
    _check_input_kind(X, input_name)
    images = check_array(
        X,
        accept_sparse=False,
        dtype="numeric",
        allow_nd=True,
        ensure_2d=True,
        ensure_min_samples=ensure_min_samples,
        ensure_min_features=0,
        ensure_all_finite=True,
        copy=copy,
        input_name=input_name,
    )
    return _to_image_layout(images, image_shape, dtype, input_name)


def _to_image_layout(images, image_shape, dtype, input_name, *, check_channels=True):
    if images.dtype.kind == "c":
        raise ValueError(f"Complex data not supported: {input_name} is complex.")
    if images.ndim == 2:
        if image_shape is None:
            raise ValueError(
                f"{input_name} is 2-D with shape {images.shape}: pass "
                "image_shape=(H, W) or (H, W, C) to say how each row is an image, "
                "or pass images as (n, H, W) or (n, H, W, C)."
            )
        shape = check_image_shape(image_shape, images.shape[1])
        if check_channels and len(image_shape) == 3:
            _warn_if_channels_first(shape, image_shape, input_name)
        images = images.reshape((images.shape[0],) + shape)
    elif images.ndim in (3, 4):
        if check_channels and images.ndim == 4:
            _warn_if_channels_first(images.shape[1:], images.shape, input_name)
        if images.ndim == 3:
            images = images[..., np.newaxis]
        if image_shape is not None:
            shape = check_image_shape(image_shape, int(np.prod(images.shape[1:])))
            if shape != images.shape[1:]:
                raise ValueError(
                    f"{input_name} holds images of shape {images.shape[1:]} (H, W, C) "
                    f"but image_shape={tuple(image_shape)!r}."
                )
    else:
        raise ValueError(
            f"{input_name} must be 2-D (n, H*W*C) rows with image_shape, 3-D "
            f"(n, H, W) or 4-D (n, H, W, C) images; got {images.ndim}-D with "
            f"shape {images.shape}."
        )
    if 0 in images.shape[1:]:
        raise ValueError(
            f"{input_name} holds zero-size images of shape {images.shape[1:]} "
            "(H, W, C); every dimension must be at least 1."
        )
    if dtype == "float":
        _check_float32_range(images, input_name)
        images = _to_float(images)
    return images


def _dtype_family(dtype):
    return "uint8" if dtype == np.uint8 else "float"


def _check_input_scale(estimator, family, images):
    """Record the fit-time pixel scale, or warn when ``images`` contradict it.

    uint8 images are scaled to [0, 1] and floats taken as they are, so the same
    pixels given once as uint8 and once as float 0..255 differ 255-fold.
    """
    peak = _peak(images)
    fitted = getattr(estimator, "_fit_input_scale", None)
    if fitted is None:
        return peak
    fit_family, fit_peak = fitted
    name = type(estimator).__name__
    changed = family != fit_family
    too_large = fit_peak > 0 and peak > _SCALE_RATIO * fit_peak
    too_small = changed and peak > 0 and peak * _SCALE_RATIO < fit_peak
    if too_large or too_small:
        how = {"uint8": "uint8 (scaled to [0, 1])", "float": "float (taken as is)"}
        warnings.warn(
            f"X is {how[family]} with values up to {peak:.4g}, but {name} was "
            f"fitted on {how[fit_family]} images with values up to {fit_peak:.4g}: "
            "the pixels look like they are on another scale, which changes the "
            "outputs. Pass images with the dtype and value range used in fit "
            "(uint8 0..255, or floats on the fit's scale).",
            UserWarning,
            stacklevel=4,
        )
    return peak


def validate_images(estimator, X, *, reset, dtype=None, image_shape="param"):
    """Validate images for an estimator and record or check their shape.

    2-D rows go through :func:`sklearn.utils.validation.validate_data`, so
    ``n_features_in_`` and ``feature_names_in_`` behave as in scikit-learn.
    On ``reset=True`` the image shape is stored in ``image_shape_`` as
    ``(H, W, C)`` and the input layout in ``_input_layout``; otherwise images
    of another shape are an error. Input is rejected, and channels-first
    shapes are warned about, as in :func:`check_images`.

    Parameters
    ----------
    estimator : estimator instance
    X : array-like
        Images as accepted by :func:`check_images`.
    reset : bool
        True in ``fit``, False afterwards.
    dtype : {None, 'float'}, default=None
        As in :func:`check_images`. With ``'float'`` the pixel scale is recorded
        on ``reset=True`` (dtype family and largest absolute value after
        scaling); afterwards a ``UserWarning`` is raised when the images are on
        another scale: values more than 8 times the fit's largest, or, after a
        change between uint8 and float, 8 times smaller (the uint8 / float
        0..255 trap).
    image_shape : tuple or None or 'param', default='param'
        ``'param'`` reads ``estimator.image_shape``.

    Returns
    -------
    images : ndarray of shape (n, H, W, C)
    """
    if isinstance(image_shape, str) and image_shape == "param":
        image_shape = getattr(estimator, "image_shape", None)
    name = type(estimator).__name__
    _check_input_kind(X, "X")
    ndim = _input_ndim(X)
    if ndim is None or ndim <= 2:
        # tabular path: sklearn handles feature counts and names
        rows = validate_data(
            estimator,
            X,
            reset=reset,
            dtype="numeric",
            ensure_all_finite=True,
            ensure_min_samples=1,
        )
        if rows.ndim != 2:  # pragma: no cover - _check_input_kind rejects 0-D and 1-D X
            raise ValueError(f"X must be {_EXPECTED_LAYOUT}; got shape {rows.shape}.")
        if not reset:
            image_shape = getattr(estimator, "image_shape_", image_shape)
        family = _dtype_family(rows.dtype)
        images = _to_image_layout(rows, image_shape, dtype, "X")
        layout = "rows"
    else:
        images = check_images(X, image_shape=None, dtype=None)
        if image_shape is not None:
            shape = check_image_shape(image_shape, int(np.prod(images.shape[1:])))
            if shape != images.shape[1:]:
                raise ValueError(
                    f"X holds images of shape {images.shape[1:]} (H, W, C) but "
                    f"{name} was given image_shape={tuple(image_shape)!r}."
                )
        if reset:
            estimator.n_features_in_ = int(np.prod(images.shape[1:]))
            if hasattr(estimator, "feature_names_in_"):
                del estimator.feature_names_in_
        family = _dtype_family(images.dtype)
        # check_images has warned about a channels-first look already
        images = _to_image_layout(images, None, dtype, "X", check_channels=False)
        layout = "grayscale" if ndim == 3 else "channels_last"
    if dtype == "float":
        if reset:
            estimator._fit_input_scale = None
        peak = _check_input_scale(estimator, family, images)
    if reset:
        estimator.image_shape_ = tuple(int(d) for d in images.shape[1:])
        estimator._input_layout = layout
        if dtype == "float":
            estimator._fit_input_scale = (family, peak)
    elif tuple(images.shape[1:]) != tuple(estimator.image_shape_):
        raise ValueError(
            f"X holds images of shape {tuple(images.shape[1:])} (H, W, C), but "
            f"{name} was fitted on images of shape {tuple(estimator.image_shape_)}."
        )
    return images


def _reset_fitted_attributes(estimator):
    """Delete the fitted attributes a previous ``fit`` left on ``estimator``.

    Called first thing in ``fit``: a second ``fit`` forgets the first
    (scikit-learn's rule), so an attribute set only under some settings, such
    as ``mirror_atoms_`` with ``flip_invariant=True``, cannot outlive a refit
    without them. Fitted attributes are the public names ending in ``_``.

    Parameters
    ----------
    estimator : estimator instance
    """
    for name in [n for n in vars(estimator) if n.endswith("_") and not n.startswith("_")]:
        delattr(estimator, name)


def set_flattened_output(estimator, transform, *, returns, rows):
    """``set_output`` of an image transformer whose output is a 2-D table only when flattened.

    scikit-learn offers ``set_output`` only where ``get_feature_names_out``
    exists, so a Pipeline holding the transformer with ``flatten=False``
    would fail with "Unable to configure output" and no reason. Here a
    DataFrame output is refused, with the reason, when ``flatten=False``;
    otherwise the configuration is stored where scikit-learn's output
    wrapper reads it (as ``TransformerMixin.set_output`` does).

    Parameters
    ----------
    estimator : estimator instance with a ``flatten`` parameter
    transform : {'default', 'pandas', 'polars'} or None
    returns, rows : str
        What the unflattened output and the flattened rows are, in words.
    """
    if transform is None:
        return estimator
    check_flattened_output(estimator, transform, returns=returns, rows=rows)
    config = getattr(estimator, "_sklearn_output_config", {})
    estimator._sklearn_output_config = {**config, "transform": transform}
    return estimator


def check_flattened_output(estimator, transform=None, *, returns, rows):
    """Raise a ValueError saying why an unflattened output cannot be a DataFrame.

    ``transform=None`` reads the estimator's own ``set_output`` setting (the
    global ``transform_output`` is left to scikit-learn, which passes arrays
    without feature names through unchanged).
    """
    if transform is None:
        transform = getattr(estimator, "_sklearn_output_config", {}).get("transform", "default")
    if estimator.flatten or transform == "default":
        return
    name = type(estimator).__name__
    raise ValueError(
        f"{name}(flatten=False) returns {returns}, not a 2-D table of features, so "
        f"its output cannot be a {transform} DataFrame (set_output(transform="
        f"{transform!r})). Pass flatten=True to get rows {rows} with named columns "
        "(get_feature_names_out), or keep set_output(transform='default')."
    )


def restore_layout(images, layout):
    """Return ``(n, H, W, C)`` images in the caller's layout.

    Parameters
    ----------
    images : ndarray of shape (n, H, W, C)
    layout : {'rows', 'grayscale', 'channels_last'}
        As recorded by :func:`validate_images`.
    """
    if layout == "rows":
        return images.reshape(images.shape[0], -1)
    if layout == "grayscale":
        return images[..., 0]
    return images


def _check_pair(value, name, *, minimum=1):
    """``check_size_pair`` with a ValueError for a tuple of the wrong length or content.

    The parameter validation has already checked the type (int, tuple or
    list), so what is left wrong is a value, as scikit-learn reports it.
    """
    try:
        return check_size_pair(value, name, minimum=minimum)
    except TypeError:
        raise ValueError(
            f"{name} must be a tuple of two integers (h, w) or an int, got {value!r}."
        ) from None
