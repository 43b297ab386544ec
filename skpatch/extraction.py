"""Patch extraction: one row of patches per image.

:func:`extract_patches` is the one extraction routine of the package. It
returns the patch grid ``(n, gh, gw, ph, pw, C)`` as a read-only zero-copy
strided view of the input when no padding is asked; with ``max_patches`` it
returns ``(n, m, ph, pw, C)``, ``m`` distinct random positions per image,
gathered in one fancy-index copy.
:func:`reconstruct_from_patches` inverts the full grid by averaging
overlapping patches.
:class:`PatchExtractor` wraps both as a stateless scikit-learn transformer that,
unlike :class:`sklearn.feature_extraction.image.PatchExtractor`, keeps one row
per image so that ``y`` stays aligned through a Pipeline.
"""

from numbers import Integral

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin, _fit_context
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import (
    Interval,
    RealNotInt,
    StrOptions,
    validate_params,
)
from sklearn.utils.metaestimators import available_if
from sklearn.utils.validation import check_is_fitted

from .utils._dask import is_dask_array, map_row_blocks
from .utils._grid import _extract_view, _pad, _resolve_padding, patch_grid_shape
from .utils._parallel import effective_n_threads, thread_map
from .utils._validation import (
    _check_pair,
    _reset_fitted_attributes,
    check_flattened_output,
    check_images,
    restore_layout,
    set_flattened_output,
    validate_images,
)

__all__ = ["PatchExtractor", "extract_patches", "reconstruct_from_patches"]

# what set_output's refusal says the output is, with flatten=False and True
_UNFLATTENED = "a patch grid (n, gh, gw, ph, pw, C)"
_ROWS = "(n, gh*gw*ph*pw*C)"


def _as_4d(images, name="images"):
    images = np.asarray(images)
    if images.ndim == 3:
        return images[..., np.newaxis]
    if images.ndim == 4:
        return images
    raise ValueError(
        f"{name} must be (n, H, W) or (n, H, W, C), got shape {images.shape}."
    )


_PARALLEL_MIN_BYTES = 32 * 2**20
_CHUNK_BYTES = 4 * 2**20


def _patch_runs(images, patch_size, stride, pads):
    """The patch grid as ``(n, gh, gw, ph)`` runs of ``pw * C`` values: a view.

    Each patch row is one contiguous run of ``pw * C`` values of an image row;
    viewing a run as a single opaque (void) item lets numpy copy it as one
    memcpy instead of paying its per-loop overhead on runs of only C values.
    """
    n, height, width, channels = images.shape
    grid_h, grid_w = patch_grid_shape((height, width), patch_size, stride, pads)
    padded = np.ascontiguousarray(_pad(images, pads))
    row = padded.strides[1]  # bytes per (padded) image row
    run = np.dtype((np.void, patch_size[1] * channels * padded.itemsize))
    return np.ndarray(
        (n, grid_h, grid_w, patch_size[0]),
        dtype=run,
        buffer=padded,
        strides=(
            padded.strides[0],
            row * stride[0],
            channels * padded.itemsize * stride[1],
            row,
        ),
    )


def _n_sampled(max_patches, n_positions):
    """Patches per image for ``max_patches``, as scikit-learn's ``_compute_n_patches``.

    ``None``: every position; an int: at most that many (all positions if it
    is larger); a float in (0, 1): ``int(max_patches * n_positions)``.
    """
    if max_patches is None:
        return n_positions
    if isinstance(max_patches, bool):
        raise ValueError(
            "max_patches must be None, an int >= 1 or a float in (0, 1), got "
            f"{max_patches!r}."
        )
    if isinstance(max_patches, Integral):
        return min(int(max_patches), n_positions)
    n_samples = int(max_patches * n_positions)
    if n_samples == 0:
        # scikit-learn returns no patch here; an empty row is never what is meant
        raise ValueError(
            f"max_patches={max_patches!r} of the {n_positions} patch positions per "
            "image is 0 patches; ask for a larger fraction or an int >= 1."
        )
    return n_samples


_KEY_CHUNK_BYTES = 16 * 2**20


def _sample_positions(n_images, grid, n_samples, random_state):
    """``(n_images, n_samples, 2)`` grid positions, distinct within each image.

    Each image draws its own uniformly random subset of the ``gh * gw``
    positions, in uniformly random order, deterministic for an int
    ``random_state``. No loop over images or patches: see
    :func:`_distinct_by_rejection` (few samples of many positions) and
    :func:`_distinct_by_keys` (the rest).
    """
    # one seed derived from random_state; PCG64 gives raw 64-bit keys cheaply
    seed = check_random_state(random_state).randint(np.iinfo(np.int32).max)
    generator = np.random.Generator(np.random.PCG64(seed))
    n_positions = grid[0] * grid[1]
    if n_samples * (n_samples - 1) <= n_positions:
        flat = _distinct_by_rejection(generator, n_images, n_positions, n_samples)
    else:
        flat = _distinct_by_keys(generator, n_images, n_positions, n_samples)
    return np.stack(np.divmod(flat, grid[1]), axis=-1)


def _distinct_by_rejection(generator, n_images, n_positions, n_samples):
    """Uniform draws, each row with a repeat redrawn whole until none has one.

    An accepted row is uniform over ordered tuples of distinct positions. With
    ``m * (m - 1) <= gh * gw`` at most ~40% of the rows repeat a position, so
    the rounds shrink geometrically; the cost is O(n * m), not O(n * gh * gw).
    """
    flat = generator.integers(0, n_positions, size=(n_images, n_samples))
    redo = np.arange(n_images)
    while redo.size:
        ordered = np.sort(flat[redo], axis=1)
        redo = redo[(ordered[:, 1:] == ordered[:, :-1]).any(axis=1)]
        flat[redo] = generator.integers(0, n_positions, size=(redo.size, n_samples))
    return flat


def _distinct_by_keys(generator, n_images, n_positions, n_samples):
    """The ``m`` smallest of one random 64-bit key per position, sorted.

    The position's index sits in a key's low bits, so a plain (value)
    partition and sort carry it along, faster than ``argpartition``; the
    other 50-odd bits make a tie, which would favour the lower index,
    practically impossible.
    """
    index_bits = max(1, (n_positions - 1).bit_length())
    index_mask = np.uint64((1 << index_bits) - 1)
    flat = np.empty((n_images, n_samples), dtype=np.intp)
    # keys for a chunk of images at a time: memory bounded whatever n; the raw
    # stream continues across chunks, so the draw is the same whatever the chunk
    chunk = max(1, _KEY_CHUNK_BYTES // (8 * n_positions))
    for start in range(0, n_images, chunk):
        stop = min(start + chunk, n_images)
        keys = generator.bit_generator.random_raw((stop - start) * n_positions)
        keys = keys.reshape(stop - start, n_positions)
        keys &= ~index_mask
        keys |= np.arange(n_positions, dtype=np.uint64)
        if n_samples < n_positions:
            keys.partition(n_samples - 1, axis=1)
            keys = keys[:, :n_samples]
        keys.sort(axis=1)
        flat[start:stop] = keys & index_mask
    return flat


def _extract_sampled(images, patch_size, stride, pads, positions):
    """C-contiguous ``(n, m, ph, pw, C)`` copy of the patches at ``positions``.

    One fancy-index gather on the run view of the patch grid.
    """
    n, m = positions.shape[:2]
    runs = _patch_runs(images, patch_size, stride, pads)
    rows = np.arange(n)[:, np.newaxis]
    out = runs[rows, positions[..., 0], positions[..., 1]]
    return out.view(images.dtype).reshape(n, m, *patch_size, images.shape[3])


def _extract_flat(images, patch_size, stride, pads, n_jobs=None):
    """C-contiguous ``(n, gh * gw * ph * pw * C)`` copy in the input dtype."""
    n = images.shape[0]
    runs = _patch_runs(images, patch_size, stride, pads)
    out = np.empty(runs.shape, dtype=runs.dtype)
    per_image = max(1, out[:1].nbytes)
    chunk = max(1, _CHUNK_BYTES // per_image)
    starts = range(0, n, chunk)

    def copy_chunk(start):
        np.copyto(out[start : start + chunk], runs[start : start + chunk])

    # numpy releases the GIL while copying: chunks of images in parallel, on at
    # most 8 threads (a copy is bound by memory bandwidth beyond that)
    n_threads = effective_n_threads(n_jobs, n_tasks=min(len(starts), 8))
    if out.nbytes < _PARALLEL_MIN_BYTES:
        n_threads = 1
    thread_map(copy_chunk, starts, n_threads)
    return out.view(images.dtype).reshape(n, -1)


_SIZE = [Interval(Integral, 1, None, closed="left"), tuple, list]
_PADDING = [Interval(Integral, 0, None, closed="left"), tuple, list, StrOptions({"same"})]
_MAX_PATCHES = [
    None,
    Interval(RealNotInt, 0, 1, closed="neither"),
    Interval(Integral, 1, None, closed="left"),
]


@validate_params(
    {
        "images": ["array-like"],
        "patch_size": _SIZE,
        "stride": _SIZE,
        "padding": _PADDING,
        "max_patches": _MAX_PATCHES,
        "random_state": ["random_state"],
        "return_positions": ["boolean"],
    },
    prefer_skip_nested_validation=True,
)
def extract_patches(
    images,
    patch_size,
    *,
    stride=1,
    padding=0,
    max_patches=None,
    random_state=None,
    return_positions=False,
):
    """Extract the grid of patches of every image, or a random sample of it.

    Parameters
    ----------
    images : array-like of shape (n, H, W) or (n, H, W, C)
        Images, channels last. No copy is made of a numpy array.
    patch_size : int or tuple (ph, pw)
        Patch height and width.
    stride : int or tuple (sh, sw), default=1
        Step between neighbouring patches.
    padding : int, tuple (pad_h, pad_w) or 'same', default=0
        Zero padding added on each side. ``'same'`` pads so that there is one
        patch per pixel (per ``stride`` pixels), the patch at grid position
        ``(i, j)`` being centred on pixel ``(i * sh, j * sw)``; for an even
        patch size the centre is the upper-left of the four middle pixels.
    max_patches : int or float, default=None
        ``None`` returns the whole grid. Otherwise each image gets ``m``
        distinct grid positions, drawn uniformly at random, independently for
        each image, in random order: ``m = max_patches`` for an int (all
        ``gh * gw`` positions if it is larger, as in scikit-learn), ``m =
        int(max_patches * gh * gw)`` for a float in (0, 1) (an error if that
        is 0).
    random_state : int, RandomState instance or None, default=None
        Draws the positions when ``max_patches`` is set; an int gives the same
        positions on every call.
    return_positions : bool, default=False
        Also return where each sampled patch comes from. Needs ``max_patches``.

    Returns
    -------
    patches : ndarray of shape (n, gh, gw, ph, pw, C) or (n, m, ph, pw, C)
        Without ``max_patches``, ``patches[k, i, j]`` is the patch of image
        ``k`` whose top-left corner is at padded pixel ``(i * sh, j * sw)``;
        ``C = 1`` for grayscale input. Without padding it is a read-only view
        into ``images``; with padding a read-only view into a padded copy.
        With ``max_patches``, a C-contiguous copy in the input dtype: one row
        of ``m`` patches per image.
    positions : ndarray of shape (n, m, 2)
        Only with ``return_positions=True``: ``positions[k, s] = (i, j)``, the
        grid position of ``patches[k, s]``, so that it equals
        ``extract_patches(images, patch_size, stride=stride,
        padding=padding)[k, i, j]``.

    See Also
    --------
    reconstruct_from_patches : The inverse of the whole grid, averaging overlaps.
    PatchExtractor : The same as a scikit-learn transformer.

    Examples
    --------
    >>> import numpy as np
    >>> from skpatch import extract_patches
    >>> images = np.arange(2 * 4 * 4).reshape(2, 4, 4)
    >>> patches = extract_patches(images, 2, stride=2)
    >>> patches.shape
    (2, 2, 2, 2, 2, 1)
    >>> patches[0, 1, 0, :, :, 0]
    array([[ 8,  9],
           [12, 13]])
    >>> sampled, positions = extract_patches(
    ...     images, 2, stride=2, max_patches=3, random_state=0, return_positions=True
    ... )
    >>> sampled.shape, positions.shape
    ((2, 3, 2, 2, 1), (2, 3, 2))
    >>> i, j = positions[1, 0]
    >>> bool((sampled[1, 0] == patches[1, i, j]).all())
    True
    """
    patch_size = _check_pair(patch_size, "patch_size")
    stride = _check_pair(stride, "stride")
    pads = _resolve_padding(padding, patch_size)
    images = _as_4d(images)
    grid = patch_grid_shape(images.shape[1:3], patch_size, stride, pads)
    if max_patches is None:
        if return_positions:
            raise ValueError(
                "return_positions=True needs max_patches: without it every grid "
                "position is returned, patches[k, i, j] being at position (i, j)."
            )
        return _extract_view(images, patch_size, stride, pads)
    n_samples = _n_sampled(max_patches, grid[0] * grid[1])
    positions = _sample_positions(len(images), grid, n_samples, random_state)
    patches = _extract_sampled(images, patch_size, stride, pads, positions)
    return (patches, positions) if return_positions else patches


def _check_image_size(image_size, channels):
    """``(H, W)`` from ``image_size`` ``(H, W)`` or ``(H, W, C)``, C matching the patches."""
    image_size = tuple(image_size)
    if len(image_size) == 3:
        if image_size[2] != channels:
            raise ValueError(
                f"image_size {image_size} has {image_size[2]!r} channels but the "
                f"patches have {channels}; expected (H, W) or (H, W, {channels})."
            )
        image_size = image_size[:2]
    elif len(image_size) != 2:
        raise ValueError(
            f"image_size must be (H, W) or (H, W, C), got {image_size!r}."
        )
    return _check_pair(image_size, "image_size")


@validate_params(
    {
        "patches": ["array-like"],
        "image_size": [tuple, list],
        "stride": _SIZE,
        "padding": _PADDING,
    },
    prefer_skip_nested_validation=True,
)
def reconstruct_from_patches(patches, image_size, *, stride=1, padding=0):
    """Rebuild images from their patch grid, averaging overlapping pixels.

    Vectorized: one array operation per pixel offset inside a patch
    (``ph * pw`` of them), never a loop over patches. Sums are accumulated in
    float64 whatever the patches' dtype, so float32 patches of 0..255 values
    average as exactly as scikit-learn's ``reconstruct_from_patches_2d``.

    Parameters
    ----------
    patches : array-like of shape (n, gh, gw, ph, pw, C)
        A patch grid as returned by :func:`extract_patches`.
    image_size : tuple (H, W) or (H, W, C)
        Size of the original (unpadded) images; ``C``, if given, must be the
        patches' channel count.
    stride : int or tuple (sh, sw), default=1
        The stride used for extraction.
    padding : int, tuple or 'same', default=0
        The padding used for extraction; padded pixels are dropped.

    Returns
    -------
    images : ndarray of shape (n, H, W, C)
        In the patches' floating point dtype (float64 for integer patches).

    Raises
    ------
    ValueError
        If the grid does not match ``image_size`` or leaves pixels uncovered
        (a stride larger than the patch, say).

    Examples
    --------
    >>> import numpy as np
    >>> from skpatch import extract_patches, reconstruct_from_patches
    >>> images = np.random.RandomState(0).rand(3, 5, 6)
    >>> patches = extract_patches(images, 3)
    >>> rebuilt = reconstruct_from_patches(patches, (5, 6))
    >>> np.allclose(rebuilt[..., 0], images)
    True
    """
    patches = np.asarray(patches)
    if patches.ndim != 6:
        raise ValueError(
            "patches must be a patch grid of shape (n, gh, gw, ph, pw, C), got "
            f"shape {patches.shape}."
        )
    n, grid_h, grid_w, patch_h, patch_w, channels = patches.shape
    image_size = _check_image_size(image_size, channels)
    stride = _check_pair(stride, "stride")
    patch_size = (patch_h, patch_w)
    pads = _resolve_padding(padding, patch_size)
    expected = patch_grid_shape(image_size, patch_size, stride, pads)
    if expected != (grid_h, grid_w):
        raise ValueError(
            f"patches hold a {grid_h}x{grid_w} grid, but images of size {image_size} "
            f"with patch_size {patch_size}, stride {stride} and padding {padding!r} "
            f"give a {expected[0]}x{expected[1]} grid."
        )
    padded_h = image_size[0] + sum(pads[0])
    padded_w = image_size[1] + sum(pads[1])
    span_h = (grid_h - 1) * stride[0] + 1
    span_w = (grid_w - 1) * stride[1] + 1
    dtype = patches.dtype if patches.dtype.kind == "f" else np.float64
    # float64 sums: a float32 sum of up to ph * pw values of 0..255 loses ~1e-3
    sums = np.zeros((n, padded_h, padded_w, channels), dtype=np.float64)
    counts = np.zeros((padded_h, padded_w), dtype=np.int64)
    for di in range(patch_h):
        for dj in range(patch_w):
            rows = slice(di, di + span_h, stride[0])
            cols = slice(dj, dj + span_w, stride[1])
            sums[:, rows, cols, :] += patches[:, :, :, di, dj, :]
            counts[rows, cols] += 1
    inside = (
        slice(pads[0][0], pads[0][0] + image_size[0]),
        slice(pads[1][0], pads[1][0] + image_size[1]),
    )
    counts = counts[inside]
    if counts.min() == 0:
        raise ValueError(
            f"patches of size {patch_size} at stride {stride} do not cover every "
            f"pixel of a {image_size} image ({int((counts == 0).sum())} uncovered); "
            "cannot reconstruct."
        )
    images = sums[:, inside[0], inside[1], :] / counts[:, :, np.newaxis]
    return images.astype(dtype, copy=False)


class PatchExtractor(TransformerMixin, BaseEstimator):
    """Extract the patches of each image, one row per image.

    A stateless transformer: ``fit`` only validates and records the image
    shape. Unlike :class:`sklearn.feature_extraction.image.PatchExtractor`, the
    number of rows never changes, so ``y`` stays aligned in a Pipeline, and
    the output keeps the input dtype. With ``max_patches``, each row holds
    ``m`` patches at distinct random positions of its image instead of the
    whole grid.

    Parameters
    ----------
    patch_size : int or tuple (ph, pw), default=8
        Patch height and width.
    stride : int or tuple (sh, sw), default=1
        Step between neighbouring patches.
    padding : int, tuple (pad_h, pad_w) or 'same', default=0
        Zero padding on each side; ``'same'`` gives one patch per pixel (see
        :func:`extract_patches`).
    flatten : bool, default=False
        If False, ``transform`` returns the patch grid
        ``(n, gh, gw, ph, pw, C)`` (a read-only zero-copy view when there is
        no padding). If True, a C-contiguous 2-D array
        ``(n, gh * gw * ph * pw * C)`` in the input dtype, for tabular models.
        Only these rows have feature names (``get_feature_names_out``) and
        can be a pandas or polars DataFrame (``set_output``);
        ``set_output(transform='pandas')`` with ``flatten=False`` is a
        ``ValueError`` saying so.
    n_jobs : int, default=None
        Threads copying the patches when ``flatten=True`` and the output is
        large (32 MB or more; at most 8). ``None``: the process's limit (see
        :ref:`engine`); ``-1``: all CPUs. The output is the same whatever
        ``n_jobs``.
    image_shape : tuple (H, W) or (H, W, C), default=None
        Shape of one image when ``X`` is given as 2-D rows ``(n, H*W*C)``;
        one entry may be -1 (inferred). Not needed for 3-D or 4-D ``X``.
    max_patches : int or float, default=None
        ``None``: the whole grid. Otherwise ``transform`` returns
        ``(n, m, ph, pw, C)`` (``(n, m * ph * pw * C)`` with ``flatten=True``):
        ``m`` distinct grid positions per image, drawn uniformly and
        independently for each image, in random order. ``m = max_patches`` for
        an int (all ``gh * gw`` positions if it is larger, as in scikit-learn);
        ``m = int(max_patches * gh * gw)`` for a float in (0, 1).
    random_state : int, RandomState instance or None, default=None
        Draws the positions when ``max_patches`` is set. As in scikit-learn's
        ``PatchExtractor`` it is read in each ``transform``: an int gives the
        same positions on every call, a RandomState instance new ones.

    Attributes
    ----------
    image_shape_ : tuple (H, W, C)
        Shape of the images seen in ``fit`` (``C = 1`` for grayscale).
    patch_grid_shape_ : tuple (gh, gw)
        Number of patch positions vertically and horizontally.
    n_patches_ : int
        Patches per image that ``transform`` returns: ``gh * gw``, or ``m``
        with ``max_patches``.
    n_features_in_ : int
        ``H * W * C``.
    feature_names_in_ : ndarray of shape (`n_features_in_`,)
        Only for 2-D input with string column names.

    See Also
    --------
    extract_patches : The function behind ``transform``.
    reconstruct_from_patches : The function behind ``inverse_transform``.

    Notes
    -----
    Grayscale images keep a channel axis of length 1 in the patch grid, so
    that downstream code handles one layout.

    With ``max_patches`` the positions differ from image to image, so the
    flattened features are named by sample slot, not grid position
    (``sample{s}_row{r}_col{c}_ch{k}``), and ``inverse_transform`` is an
    error (a sample does not cover the image). The positions a ``transform``
    drew are those of ``extract_patches(images, patch_size, stride=stride,
    padding=padding, max_patches=max_patches, random_state=random_state,
    return_positions=True)`` on the same ``(n, H, W[, C])`` images, for an
    int ``random_state``.

    scikit-learn's ``PatchExtractor(max_patches=m)`` draws each position
    independently, so an image may repeat a patch; here the ``m`` positions
    of an image are distinct.

    Examples
    --------
    >>> import numpy as np
    >>> from skpatch import PatchExtractor
    >>> X = np.arange(2 * 5 * 5, dtype=np.uint8).reshape(2, 5, 5)
    >>> PatchExtractor(patch_size=3, stride=2).fit_transform(X).shape
    (2, 2, 2, 3, 3, 1)
    >>> Xt = PatchExtractor(patch_size=3, stride=2, flatten=True).fit_transform(X)
    >>> Xt.shape, Xt.dtype
    ((2, 36), dtype('uint8'))
    >>> sampler = PatchExtractor(patch_size=3, max_patches=4, random_state=0)
    >>> sampler.fit_transform(X).shape
    (2, 4, 3, 3, 1)
    """

    _parameter_constraints = {
        "patch_size": _SIZE,
        "stride": _SIZE,
        "padding": _PADDING,
        "flatten": ["boolean"],
        "n_jobs": [Integral, None],
        "image_shape": [tuple, list, None],
        "max_patches": _MAX_PATCHES,
        "random_state": ["random_state"],
    }

    def __init__(
        self,
        patch_size=8,
        *,
        stride=1,
        padding=0,
        flatten=False,
        n_jobs=None,
        image_shape=None,
        max_patches=None,
        random_state=None,
    ):
        self.patch_size = patch_size
        self.stride = stride
        self.padding = padding
        self.flatten = flatten
        self.n_jobs = n_jobs
        self.image_shape = image_shape
        self.max_patches = max_patches
        self.random_state = random_state

    def _resolved_params(self, images):
        patch_size = _check_pair(self.patch_size, "patch_size")
        stride = _check_pair(self.stride, "stride")
        pads = _resolve_padding(self.padding, patch_size)
        grid = patch_grid_shape(images.shape[1:3], patch_size, stride, pads)
        return patch_size, stride, pads, grid

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None):
        """Validate the images and record their shape.

        Parameters
        ----------
        X : array-like of shape (n, H, W), (n, H, W, C) or (n, H*W*C)
            Images.
        y : None
            Ignored.

        Returns
        -------
        self : PatchExtractor
        """
        _reset_fitted_attributes(self)
        if is_dask_array(X):  # the values checked by reductions, nothing held in memory
            from .utils._dask import validate_image_stream

            images = validate_image_stream(
                self, X, lambda proxy: validate_images(self, proxy, reset=True)
            )
        else:
            images = validate_images(self, X, reset=True)
        *_, self.patch_grid_shape_ = self._resolved_params(images)
        grid_h, grid_w = self.patch_grid_shape_
        self.n_patches_ = _n_sampled(self.max_patches, grid_h * grid_w)
        return self

    def transform(self, X):
        """Extract the patches of each image.

        Works without ``fit`` (the transformer is stateless); after ``fit``,
        images of another shape are an error.

        Parameters
        ----------
        X : array-like of shape (n, H, W), (n, H, W, C) or (n, H*W*C)
            Images.

        Returns
        -------
        patches : ndarray of shape (n, gh, gw, ph, pw, C) or (n, gh*gw*ph*pw*C)
            The patch grid, or its flattened copy when ``flatten=True``. With
            ``max_patches``, ``(n, m, ph, pw, C)`` or ``(n, m*ph*pw*C)``. A
            dask array ``X`` gives a dask array with its row chunks.
        """
        if is_dask_array(X):
            return self._transform_dask(X)
        check_flattened_output(self, returns=_UNFLATTENED, rows=_ROWS)
        return self._transform(X)

    def _transform_dask(self, X):
        """Row blocks of a dask array; random positions drawn for all rows at once."""
        if self.max_patches is None:
            return map_row_blocks(self, "_transform", X)
        self._validate_params()
        image_shape = getattr(self, "image_shape_", None)
        if image_shape is None:  # the shape of one image, as transform would see it
            image_shape = check_images(
                np.zeros((1,) + X.shape[1:], dtype=X.dtype), image_shape=self.image_shape
            ).shape[1:]
        *_, grid = self._resolved_params(np.empty((1,) + tuple(image_shape)))
        n_samples = _n_sampled(self.max_patches, grid[0] * grid[1])
        # the in-memory draw for all X, each block given its rows' positions
        positions = _sample_positions(X.shape[0], grid, n_samples, self.random_state)
        return map_row_blocks(
            self, "_transform", X, block_args=lambda start, stop: (positions[start:stop],)
        )

    def _transform(self, X, positions=None):
        if hasattr(self, "image_shape_"):
            images = validate_images(self, X, reset=False)
        else:
            self._validate_params()
            images = check_images(X, image_shape=self.image_shape)
        patch_size, stride, pads, grid = self._resolved_params(images)
        if self.max_patches is not None:
            if positions is None:
                n_samples = _n_sampled(self.max_patches, grid[0] * grid[1])
                positions = _sample_positions(len(images), grid, n_samples, self.random_state)
            patches = _extract_sampled(images, patch_size, stride, pads, positions)
            return patches.reshape(len(images), -1) if self.flatten else patches
        if self.flatten:
            return _extract_flat(images, patch_size, stride, pads, self.n_jobs)
        return _extract_view(images, patch_size, stride, pads)

    def inverse_transform(self, X):
        """Rebuild images from patches, averaging overlapping pixels.

        Parameters
        ----------
        X : ndarray of shape (n, gh, gw, ph, pw, C) or (n, gh*gw*ph*pw*C)
            Output of ``transform``.

        Returns
        -------
        images : ndarray
            Floating point images in the layout passed to ``fit``.

        Raises
        ------
        ValueError
            With ``max_patches``: a random sample of patches does not cover
            the image.
        """
        check_is_fitted(self)
        if self.max_patches is not None:
            raise ValueError(
                f"inverse_transform needs the whole patch grid, but max_patches="
                f"{self.max_patches!r} samples a subset of it; use max_patches=None."
            )
        patches = np.asarray(X)
        height, width, channels = self.image_shape_
        patch_size, stride, _, _ = self._resolved_params(
            np.empty((1, height, width, channels))
        )
        grid_shape = self.patch_grid_shape_ + patch_size + (channels,)
        if patches.ndim == 2:
            if patches.shape[1] != int(np.prod(grid_shape)):
                raise ValueError(
                    f"X has {patches.shape[1]} features, but PatchExtractor "
                    f"produces {int(np.prod(grid_shape))} per image."
                )
            patches = patches.reshape((patches.shape[0],) + grid_shape)
        elif patches.shape[1:] != grid_shape:
            raise ValueError(
                f"X must be a patch grid of shape (n, {', '.join(map(str, grid_shape))})"
                f" or its flattened rows, got shape {patches.shape}."
            )
        images = reconstruct_from_patches(
            patches, (height, width), stride=stride, padding=self.padding
        )
        return restore_layout(images, self._input_layout)

    @available_if(lambda self: self.flatten)
    def get_feature_names_out(self, input_features=None):
        """Names of the flattened features: ``patch{i}_{j}_row{r}_col{c}_ch{k}``.

        Only available with ``flatten=True``. With ``max_patches`` the
        positions vary by image, so the names are ``sample{s}_row{r}_col{c}_ch{k}``
        for sample slot ``s`` of ``n_patches_``.

        Parameters
        ----------
        input_features : None
            Ignored; present for API consistency.

        Returns
        -------
        feature_names_out : ndarray of str objects
        """
        check_is_fitted(self)
        grid_h, grid_w = self.patch_grid_shape_
        patch_h, patch_w = _check_pair(self.patch_size, "patch_size")
        channels = self.image_shape_[2]
        if self.max_patches is not None:
            names = [
                f"sample{s}_row{r}_col{c}_ch{k}"
                for s in range(self.n_patches_)
                for r in range(patch_h)
                for c in range(patch_w)
                for k in range(channels)
            ]
            return np.asarray(names, dtype=object)
        names = [
            f"patch{i}_{j}_row{r}_col{c}_ch{k}"
            for i in range(grid_h)
            for j in range(grid_w)
            for r in range(patch_h)
            for c in range(patch_w)
            for k in range(channels)
        ]
        return np.asarray(names, dtype=object)

    def set_output(self, *, transform=None):
        """Set the output container of ``transform`` and ``fit_transform``.

        With ``flatten=True`` the rows can be a pandas or polars DataFrame,
        columns named by :meth:`get_feature_names_out`. With ``flatten=False``
        the output is a 6-D patch grid, not a table: a DataFrame output is a
        ``ValueError`` that says so (under a global ``transform_output``
        setting the grid passes through as an array).

        Parameters
        ----------
        transform : {'default', 'pandas', 'polars'}, default=None
            ``'default'``: ndarrays; None: leave the setting unchanged.

        Returns
        -------
        self : PatchExtractor
        """
        return set_flattened_output(self, transform, returns=_UNFLATTENED, rows=_ROWS)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.requires_fit = False
        tags.transformer_tags.preserves_dtype = ["float64", "float32"]
        return tags
