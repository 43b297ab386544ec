"""Patch ordering: the POR algorithm of Ghebrechristos & Alaghband.

Each image is cut into a grid of equal non-overlapping patches; the patches
are scored with a measure and put back in a new row-major order, and the
image is rebuilt from them. Standalone measures (``'entropy'``,
``'variance'``) sort patches by their own score. Similarity measures chain
greedily: the reference patch stays first, the remaining patch most similar
to it goes next and becomes the new reference, and so on.

The hot path is numpy, vectorized across all images of a chunk: the measure
matrix of all patch pairs is filled one diagonal (pair offset) at a time,
then the greedy chain takes ``n_patches`` vectorized steps. torch is not
imported.
"""

from numbers import Integral

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin, _fit_context
from sklearn.utils import gen_batches
from sklearn.utils._param_validation import Interval, StrOptions, validate_params
from sklearn.utils.metaestimators import available_if
from sklearn.utils.validation import _check_feature_names_in, check_is_fitted

from ..extraction import extract_patches
from ..utils._dask import is_dask_array, map_row_blocks
from ..utils._grid import patch_grid_shape
from ..utils._parallel import effective_n_threads, thread_map
from ..utils._validation import (
    _reset_fitted_attributes,
    check_flattened_output,
    check_images,
    check_size_pair,
    restore_layout,
    set_flattened_output,
    validate_images,
)
from ._measures import (
    _features,
    _pairwise,
    _standalone,
    joint_entropy,
    kl_divergence,
    l1_distance,
    l2_distance,
    mutual_information,
    patch_entropy,
    patch_variance,
    psnr,
    ssim,
)

__all__ = [
    "PatchOrderer",
    "joint_entropy",
    "kl_divergence",
    "l1_distance",
    "l2_distance",
    "mutual_information",
    "order_patches",
    "patch_entropy",
    "patch_variance",
    "psnr",
    "ssim",
    "unorder_patches",
]

STANDALONE_MEASURES = ("entropy", "variance")
# similarity measure -> True when a higher value means "more similar"
SIMILARITY_MEASURES = {
    "mutual_information": True,
    "joint_entropy": False,
    "kl_divergence": False,
    "l1": False,
    "l2": False,
    "ssim": True,
    "psnr": True,
}
_MEASURES = set(STANDALONE_MEASURES) | set(SIMILARITY_MEASURES)
_SIZE = [Interval(Integral, 1, None, closed="left"), tuple, list]
# what set_output's refusal says the output is, with flatten=False and True
_UNFLATTENED = "images in the layout of its input"
_ROWS = "(n, H*W*C)"
# elements of one (chunk, n_patches, C, N) feature array; keeps temporaries in cache
_CHUNK_ELEMENTS = 2**21

_OPTIONS = {
    "measure": [StrOptions(_MEASURES)],
    "order": [StrOptions({"similar", "dissimilar"})],
    "reference": [Interval(Integral, 0, None, closed="left")],
    "n_bins": [Interval(Integral, 2, None, closed="left")],
    "border": [StrOptions({"error", "keep"})],
    "batch_size": [Interval(Integral, 1, None, closed="left"), None],
    "n_jobs": [Integral, None],
}


def _grid(image_hw, patch_size, border):
    """Patch grid ``(gh, gw)`` of the images; raise on a bad fit."""
    (height, width), (patch_h, patch_w) = image_hw, patch_size
    grid = patch_grid_shape(image_hw, patch_size, stride=patch_size)
    if border == "error" and (height % patch_h or width % patch_w):
        raise ValueError(
            f"Images of size {(height, width)} (H, W) are not a whole number of "
            f"patches of size {patch_size}; pass border='keep' to order the "
            "patches of the top-left whole-patch region and keep the remaining "
            "rows and columns in place."
        )
    return grid


def _check_reference(reference, n_patches):
    if reference >= n_patches:
        raise ValueError(
            f"reference={reference} is not a patch index: the images hold "
            f"{n_patches} patches, so reference must be in [0, {n_patches - 1}]."
        )


def _greedy_chain(cost, reference):
    """Greedy chain on ``cost (n, P, P)``: next = remaining patch of lowest cost.

    Ties go to the lowest row-major index (``argmin`` returns the first).
    """
    n, n_patches, _ = cost.shape
    # finite stand-ins for +-inf (PSNR of identical patches) keep "used" apart
    largest = np.finfo(np.float64).max
    cost = np.nan_to_num(cost, posinf=largest, neginf=-largest)
    rows = np.arange(n)
    permutation = np.empty((n, n_patches), dtype=np.intp)
    permutation[:, 0] = reference
    used = np.zeros((n, n_patches), dtype=bool)
    used[:, reference] = True
    current = np.full(n, reference, dtype=np.intp)
    for step in range(1, n_patches):
        candidates = np.where(used, np.inf, cost[rows, current])
        current = np.argmin(candidates, axis=1)
        permutation[:, step] = current
        used[rows, current] = True
    return permutation


def _permutations(values, measure, order, reference, n_bins):
    """Permutation ``(n, P)`` of the patches of ``values (n, P, C, N)``."""
    if measure in STANDALONE_MEASURES:
        score = _standalone(measure, _features(measure, values, n_bins), values.shape[-1])
        key = -score if order == "similar" else score
        return np.argsort(key, axis=1, kind="stable")
    similarity = _pairwise(measure, values, n_bins)
    if not SIMILARITY_MEASURES[measure]:
        similarity = -similarity
    cost = -similarity if order == "similar" else similarity
    return _greedy_chain(cost, reference)


def _order(
    images, patch_size, measure, order, reference, n_bins, border, batch_size, n_jobs=None
):
    """Order the patches of 4-D ``images``; returns ``(ordered, permutation)``."""
    n, height, width, channels = images.shape
    grid_h, grid_w = _grid((height, width), patch_size, border)
    patch_h, patch_w = patch_size
    n_patches, n_pixels = grid_h * grid_w, patch_h * patch_w
    _check_reference(reference, n_patches)
    if batch_size is None:
        batch_size = max(1, _CHUNK_ELEMENTS // (n_patches * channels * n_pixels))
    ordered = images.copy()
    permutation = np.empty((n, n_patches), dtype=np.intp)
    covered = (slice(0, grid_h * patch_h), slice(0, grid_w * patch_w))

    def order_chunk(batch):
        chunk = images[batch, covered[0], covered[1]]
        patches = extract_patches(chunk, patch_size, stride=patch_size).reshape(
            -1, n_patches, patch_h, patch_w, channels
        )
        values = np.ascontiguousarray(
            np.moveaxis(patches, -1, 2).reshape(-1, n_patches, channels, n_pixels)
        )
        perm = _permutations(values, measure, order, reference, n_bins)
        permutation[batch] = perm
        ordered[batch, covered[0], covered[1]] = _assemble(
            _take_patches(patches, perm), grid_h, grid_w
        )

    batches = list(gen_batches(n, batch_size))
    # chunks are independent and numpy releases the GIL in the hot ufuncs
    thread_map(order_chunk, batches, effective_n_threads(n_jobs, n_tasks=len(batches)))
    return ordered, permutation


def _take_patches(patches, permutation):
    """``patches[i, permutation[i]]`` for ``(n, P, ...)`` patches, as whole-row copies."""
    n, n_patches = permutation.shape
    rows = permutation + (np.arange(n) * n_patches)[:, np.newaxis]
    flat = patches.reshape((n * n_patches, -1))
    return flat[rows.ravel()].reshape(patches.shape)


def _assemble(patches, grid_h, grid_w):
    """``(n, P, ph, pw, C)`` row-major patches -> ``(n, gh * ph, gw * pw, C)``."""
    n, _, patch_h, patch_w, channels = patches.shape
    grid = patches.reshape(n, grid_h, grid_w, patch_h, patch_w, channels)
    return grid.transpose(0, 1, 3, 2, 4, 5).reshape(
        n, grid_h * patch_h, grid_w * patch_w, channels
    )


def _check_image_batch(images):
    """``check_images`` for 3-D or 4-D arrays only (the functions take no image_shape)."""
    ndim = np.ndim(images)
    if ndim not in (3, 4):
        raise ValueError(
            "images must be an array of shape (n, H, W) or (n, H, W, C), got a "
            f"{ndim}-D array of shape {np.shape(images)}."
        )
    return check_images(images, input_name="images")


def _layout_of(X):
    """The :func:`restore_layout` name of the layout ``X`` comes in."""
    ndim = getattr(X, "ndim", None)
    if ndim is None:  # as validate_images reads it (np.ndim would dispatch)
        ndim = np.asarray(X).ndim
    return {3: "grayscale", 4: "channels_last"}.get(ndim, "rows")


def _with_layout(images, ndim):
    return images[..., 0] if ndim == 3 else images


_DOC_OPTIONS = """    measure : {'mutual_information', 'joint_entropy', 'kl_divergence', 'l1', \
'l2', 'ssim', 'psnr', 'entropy', 'variance'}, default='mutual_information'
        Similarity measures build the greedy chain; ``'entropy'`` and
        ``'variance'`` are standalone scores that sort the patches.
    order : {'similar', 'dissimilar'}, default='similar'
        Similarity measures: ``'similar'`` puts the *most* similar remaining
        patch next (higher MI, SSIM, PSNR; lower JE, KL, L1, L2), the paper's
        worked example; ``'dissimilar'`` the least similar one, as its summary
        states. Standalone measures: ``'similar'`` sorts by decreasing score,
        ``'dissimilar'`` by increasing score.
    reference : int, default=0
        Row-major index of the chain's first reference patch (0: top-left);
        it stays in place. Ignored by standalone measures.
    n_bins : int, default=16
        Intensity bins over [0, 1] for the histogram measures (entropy, JE,
        MI, KL). 16 because a 4x4 patch has only 16 pixels: with many more
        bins every patch's histogram is flat and all entropies are equal.
    border : {'error', 'keep'}, default='error'
        Images whose height or width is not a multiple of the patch size:
        ``'error'`` raises; ``'keep'`` orders the patches of the top-left
        region made of whole patches and leaves the remaining bottom rows and
        right columns in place.
    batch_size : int, default=None
        Images processed at once (bounds memory). None picks about 2**21
        patch values per chunk. The output does not depend on it.
    n_jobs : int, default=None
        Threads working on chunks at once; ``None`` means the process's limit
        (see :ref:`engine`: joblib's ``parallel_config``, ``OMP_NUM_THREADS``
        and threadpoolctl limits, the CPUs), -1 all CPUs. The output does not
        depend on it.
"""


@validate_params(
    {"images": ["array-like"], "patch_size": _SIZE, **_OPTIONS},
    prefer_skip_nested_validation=True,
)
def order_patches(
    images,
    patch_size=4,
    *,
    measure="mutual_information",
    order="similar",
    reference=0,
    n_bins=16,
    border="error",
    batch_size=None,
    n_jobs=None,
):
    images4d = _check_image_batch(images)
    ordered, permutation = _order(
        images4d,
        check_size_pair(patch_size, "patch_size"),
        measure,
        order,
        reference,
        n_bins,
        border,
        batch_size,
        n_jobs,
    )
    return _with_layout(ordered, np.ndim(images)), permutation


order_patches.__doc__ = (
    """Reorder the patches of each image with the POR algorithm.

    Parameters
    ----------
    images : array-like of shape (n, H, W) or (n, H, W, C)
        Images, channels last, ``uint8`` (intensities divided by 255 for the
        measures) or float (read as intensities in [0, 1]).
    patch_size : int or tuple (ph, pw), default=4
        Patch height and width; patches do not overlap.
"""
    + _DOC_OPTIONS
    + """
    Returns
    -------
    ordered : ndarray of the shape and dtype of ``images``
        Images rebuilt from their reordered patches.
    permutation : ndarray of shape (n, n_patches)
        ``permutation[i, t]`` is the row-major index, in image ``i``'s original
        grid, of the patch placed at row-major position ``t``.

    See Also
    --------
    unorder_patches : The exact inverse.
    PatchOrderer : The same as a scikit-learn transformer.

    Notes
    -----
    Similarity measures: the measure matrix of all patch pairs (per channel,
    averaged over channels) is computed for a chunk of images at once, then
    the chain takes ``n_patches - 1`` vectorized steps. Ties go to the lowest
    row-major index; histogram entropies are exact fixed-point sums, so equal
    scores tie exactly and the output is deterministic.

    References
    ----------
    .. [1] H. Ghebrechristos and G. Alaghband, "Expediting Training Using
       Information Theory-Based Patch Ordering Algorithm", Algorithm 1 (POR).

    Examples
    --------
    >>> import numpy as np
    >>> from skpatch.ordering import order_patches, unorder_patches
    >>> images = np.array([[[0, 0, 9, 9], [0, 0, 9, 9]]], dtype=np.uint8)
    >>> images = np.concatenate([images, images[:, :, ::-1]], axis=2)
    >>> images.shape
    (1, 2, 8)
    >>> ordered, permutation = order_patches(images, 2, measure="l2")
    >>> permutation
    array([[0, 3, 1, 2]])
    >>> ordered[0]
    array([[0, 0, 0, 0, 9, 9, 9, 9],
           [0, 0, 0, 0, 9, 9, 9, 9]], dtype=uint8)
    >>> np.array_equal(unorder_patches(ordered, permutation, 2), images)
    True
"""
)


@validate_params(
    {"images": ["array-like"], "permutation": ["array-like"], "patch_size": _SIZE},
    prefer_skip_nested_validation=True,
)
def unorder_patches(images, permutation, patch_size):
    """Put reordered patches back where they came from (inverse of :func:`order_patches`).

    Parameters
    ----------
    images : array-like of shape (n, H, W) or (n, H, W, C)
        Output of :func:`order_patches`.
    permutation : array-like of int of shape (n, n_patches)
        The permutation :func:`order_patches` returned.
    patch_size : int or tuple (ph, pw)
        The patch size used for ordering.

    Returns
    -------
    images : ndarray of the shape and dtype of ``images``
        The original images, exactly.

    See Also
    --------
    order_patches

    Examples
    --------
    >>> import numpy as np
    >>> from skpatch.ordering import order_patches, unorder_patches
    >>> images = np.random.default_rng(0).integers(0, 256, (3, 8, 8), dtype=np.uint8)
    >>> ordered, permutation = order_patches(images, 4)
    >>> np.array_equal(unorder_patches(ordered, permutation, 4), images)
    True
    """
    images4d = _check_image_batch(images)
    n, height, width, channels = images4d.shape
    patch_h, patch_w = check_size_pair(patch_size, "patch_size")
    grid_h, grid_w = _grid((height, width), (patch_h, patch_w), "keep")
    n_patches = grid_h * grid_w
    permutation = np.asarray(permutation)
    if permutation.dtype.kind not in "iu":
        raise TypeError(
            f"permutation must hold integers, got dtype {permutation.dtype}."
        )
    if permutation.shape != (n, n_patches):
        raise ValueError(
            f"permutation must have shape (n_images, n_patches) = {(n, n_patches)} "
            f"for these images and patch_size, got {permutation.shape}."
        )
    if not np.array_equal(
        np.sort(permutation, axis=1), np.broadcast_to(np.arange(n_patches), (n, n_patches))
    ):
        raise ValueError(
            f"every row of permutation must be a permutation of 0..{n_patches - 1}."
        )
    covered = (slice(0, grid_h * patch_h), slice(0, grid_w * patch_w))
    patches = extract_patches(
        images4d[:, covered[0], covered[1]], (patch_h, patch_w), stride=(patch_h, patch_w)
    ).reshape(n, n_patches, patch_h, patch_w, channels)
    inverse = np.argsort(permutation, axis=1)
    restored = images4d.copy()
    restored[:, covered[0], covered[1]] = _assemble(
        _take_patches(patches, inverse), grid_h, grid_w
    )
    return _with_layout(restored, np.ndim(images))


_ORDERER_DOC = (
"""Reorder the patches of each image (the POR algorithm) as a transformer.

    Stateless: ``fit`` only validates the parameters against the images and
    records their shape. ``transform`` returns images of the same dtype,
    rebuilt from their reordered non-overlapping patches, in the layout of
    the ``X`` it is given (rows in, rows out; 3-D or 4-D in, the same out),
    which need not be the layout seen in ``fit``; ``flatten=True`` returns
    rows always.

    Parameters
    ----------
    patch_size : int or tuple (ph, pw), default=4
        Patch height and width; patches do not overlap.
""" + _DOC_OPTIONS + """    flatten : bool, default=False
        Return the ordered images as 2-D rows ``(n, H*W*C)`` (row-major over
        ``(H, W, C)``, as ``numpy.reshape`` would), whatever the layout of
        the input; a picklable way to feed 3-D or 4-D images to a
        ``StandardScaler`` or a linear model in a ``Pipeline``. False returns
        the layout of the input given to ``transform``. Only flattened rows
        have feature names (``get_feature_names_out``) and can be a pandas or
        polars DataFrame (``set_output``); ``set_output(transform='pandas')``
        with ``flatten=False`` is a ``ValueError`` saying so.
    image_shape : tuple (H, W) or (H, W, C), default=None
        Shape of one image when ``X`` is given as 2-D rows ``(n, H*W*C)``;
        one entry may be -1 (inferred).

    Attributes
    ----------
    image_shape_ : tuple (H, W, C)
        Shape of the images seen in ``fit``.
    patch_grid_shape_ : tuple (gh, gw)
        Number of patches vertically and horizontally.
    n_features_in_ : int
        ``H * W * C``.
    feature_names_in_ : ndarray of str
        One name per feature (``n_features_in_`` of them); only for 2-D
        input with string column names.

    See Also
    --------
    order_patches : The function behind ``transform``; also returns the
        permutation, which :func:`unorder_patches` inverts.

    Notes
    -----
    The paper leaves these choices open; ours are: intensities on [0, 1]
    (``uint8`` divided by 255), ``n_bins`` equal-width bins, entropies in bits,
    every measure per channel and averaged over channels (as the paper does),
    KL divergence ``KL(reference || candidate)`` with a pseudo-count of 0.5 per
    bin, SSIM with one window over the whole patch, L1/L2 as norms of the
    intensity difference, PSNR with data range 1, ties to the lowest
    row-major index. See the user guide for the reasons.

    References
    ----------
    .. [1] H. Ghebrechristos and G. Alaghband, "Expediting Training Using
       Information Theory-Based Patch Ordering Algorithm".

    Examples
    --------
    >>> import numpy as np
    >>> from skpatch import PatchOrderer
    >>> X = np.random.default_rng(0).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    >>> Xt = PatchOrderer(patch_size=8).fit_transform(X)
    >>> Xt.shape, Xt.dtype
    ((5, 32, 32, 3), dtype('uint8'))
    >>> np.array_equal(Xt[:, :8, :8], X[:, :8, :8])  # the reference stays first
    True
    >>> PatchOrderer(patch_size=8, flatten=True).fit_transform(X).shape
    (5, 3072)
    """
)


class PatchOrderer(TransformerMixin, BaseEstimator):

    _parameter_constraints = {
        "patch_size": _SIZE,
        **_OPTIONS,
        "flatten": ["boolean"],
        "image_shape": [tuple, list, None],
    }

    def __init__(
        self,
        patch_size=4,
        *,
        measure="mutual_information",
        order="similar",
        reference=0,
        n_bins=16,
        border="error",
        batch_size=None,
        n_jobs=None,
        flatten=False,
        image_shape=None,
    ):
        self.patch_size = patch_size
        self.measure = measure
        self.order = order
        self.reference = reference
        self.n_bins = n_bins
        self.border = border
        self.batch_size = batch_size
        self.n_jobs = n_jobs
        self.flatten = flatten
        self.image_shape = image_shape

    def _check_params_vs_input(self, images):
        self._patch_size = check_size_pair(self.patch_size, "patch_size")
        grid = _grid(images.shape[1:3], self._patch_size, self.border)
        _check_reference(self.reference, grid[0] * grid[1])
        return grid

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None):
        """Validate the parameters against the images and record their shape.

        Parameters
        ----------
        X : array-like of shape (n, H, W), (n, H, W, C) or (n, H*W*C)
            Images.
        y : None
            Ignored.

        Returns
        -------
        self : PatchOrderer
        """
        _reset_fitted_attributes(self)
        if is_dask_array(X):  # the values checked by reductions, nothing held in memory
            from ..utils._dask import validate_image_stream

            images = validate_image_stream(
                self, X, lambda proxy: validate_images(self, proxy, reset=True)
            )
        else:
            images = validate_images(self, X, reset=True)
        self.patch_grid_shape_ = self._check_params_vs_input(images)
        return self

    def transform(self, X):
        """Reorder the patches of each image.

        Parameters
        ----------
        X : array-like of shape (n, H, W), (n, H, W, C) or (n, H*W*C)
            Images of the shape seen in ``fit``, in any of these layouts.

        Returns
        -------
        X_ordered : ndarray of the shape and dtype of ``X``, or of shape (n, H*W*C)
            In the layout of this ``X`` (not of the ``X`` seen in ``fit``);
            rows ``(n, H*W*C)`` when ``flatten=True``. A dask array ``X``
            gives a dask array with its row chunks.
        """
        check_is_fitted(self)
        if is_dask_array(X):
            return map_row_blocks(self, "transform", X)
        check_flattened_output(self, returns=_UNFLATTENED, rows=_ROWS)
        layout = _layout_of(X)
        images = validate_images(self, X, reset=False)
        return self._transform(images, layout)

    def fit_transform(self, X, y=None):
        """Fit, then reorder the patches of each image (validates once).

        Parameters
        ----------
        X : array-like of shape (n, H, W), (n, H, W, C) or (n, H*W*C)
            Images.
        y : None
            Ignored.

        Returns
        -------
        X_ordered : ndarray of the shape and dtype of ``X``, or of shape (n, H*W*C)
            Rows ``(n, H*W*C)`` when ``flatten=True``.
        """
        if is_dask_array(X):
            return self.fit(X).transform(X)
        self._validate_params()
        check_flattened_output(self, returns=_UNFLATTENED, rows=_ROWS)
        _reset_fitted_attributes(self)
        layout = _layout_of(X)
        images = validate_images(self, X, reset=True)
        self.patch_grid_shape_ = self._check_params_vs_input(images)
        return self._transform(images, layout)

    def _transform(self, images, layout):
        ordered, _ = _order(
            images,
            self._patch_size,
            self.measure,
            self.order,
            self.reference,
            self.n_bins,
            self.border,
            self.batch_size,
            self.n_jobs,
        )
        return restore_layout(ordered, "rows" if self.flatten else layout)

    @available_if(lambda self: self.flatten)
    def get_feature_names_out(self, input_features=None):
        """Names of the flattened pixels: ``row{r}_col{c}_ch{k}``.

        Only available with ``flatten=True``. Feature ``row{r}_col{c}_ch{k}``
        is the pixel at ``(r, c)``, channel ``k``, of the *ordered* image
        (row-major over ``(H, W, C)``), not the input pixel of that name.

        Parameters
        ----------
        input_features : array-like of str or None, default=None
            Only checked against ``feature_names_in_``.

        Returns
        -------
        feature_names_out : ndarray of str objects
        """
        check_is_fitted(self)
        _check_feature_names_in(self, input_features, generate_names=False)
        height, width, channels = self.image_shape_
        names = [
            f"row{r}_col{c}_ch{k}"
            for r in range(height)
            for c in range(width)
            for k in range(channels)
        ]
        return np.asarray(names, dtype=object)

    def set_output(self, *, transform=None):
        """Set the output container of ``transform`` and ``fit_transform``.

        With ``flatten=True`` the rows ``(n, H*W*C)`` can be a pandas or
        polars DataFrame, columns named by :meth:`get_feature_names_out`.
        With ``flatten=False`` the output is images, not a table: a DataFrame
        output is a ``ValueError`` that says so (under a global
        ``transform_output`` setting such images pass through as arrays).

        Parameters
        ----------
        transform : {'default', 'pandas', 'polars'}, default=None
            ``'default'``: ndarrays; None: leave the setting unchanged.

        Returns
        -------
        self : PatchOrderer
        """
        return set_flattened_output(self, transform, returns=_UNFLATTENED, rows=_ROWS)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.transformer_tags.preserves_dtype = ["float64", "float32"]
        return tags


PatchOrderer.__doc__ = _ORDERER_DOC
