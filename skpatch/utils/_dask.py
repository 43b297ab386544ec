"""Dask support: lazy import, detection of dask arrays, block-wise methods.

Dask is optional (``pip install "skpatch[dask]"``). Nothing here imports it
unless a dask array is passed in, so ``import skpatch`` never loads it.
"""

import sys
import uuid
import warnings

import numpy as np

_DASK_EXTRA_MESSAGE = (
    'Dask support needs the optional extra: pip install "skpatch[dask]" '
    "(dask[array] and distributed)."
)


def import_dask_array():
    """Import ``dask.array``, or raise an ImportError naming the extra."""
    try:
        import dask.array as da
    except ImportError as exc:
        raise ImportError(_DASK_EXTRA_MESSAGE) from exc
    return da


def import_distributed():
    """Import ``distributed``, or raise an ImportError naming the extra."""
    try:
        import distributed
    except ImportError as exc:
        raise ImportError(_DASK_EXTRA_MESSAGE) from exc
    return distributed


def is_dask_array(X):
    """Whether ``X`` is a dask array, without importing dask when it is not loaded."""
    if not type(X).__module__.startswith("dask"):
        return False
    da = sys.modules.get("dask.array")
    return da is not None and isinstance(X, da.Array)


def _apply(estimator, method, block, *args):
    return getattr(estimator, method)(block, *args)


def map_row_blocks(estimator, method, X, block_args=None):
    """``estimator.<method>`` applied to each row chunk of the dask array ``X``.

    Returns a dask array with the row chunks of ``X``; nothing is computed
    (except ``method`` on one zero image, here, to learn the output's shape
    and dtype and to check ``X``'s shape against the fitted one). The other
    axes are first merged into one chunk, so every task sees whole images and
    the result equals ``method`` on the in-memory array, bit for bit.

    The estimator is one node of the graph: on a distributed cluster it is
    sent (pickled, without its engine) once to each worker that needs it.
    ``block_args(start, stop)``, when given, returns extra arguments of
    ``method`` for the rows ``start:stop`` (e.g. the random patch positions
    drawn for all rows at once, so that blocks do not repeat one draw).
    """
    da = import_dask_array()
    import dask

    X = _whole_rows(X)
    with warnings.catch_warnings():  # a black image is no evidence of a scale trap
        warnings.simplefilter("ignore")
        extra = () if block_args is None else block_args(0, 1)
        probe = getattr(estimator, method)(np.zeros((1,) + X.shape[1:], dtype=X.dtype), *extra)
    probe = np.asarray(probe)
    tail, dtype = probe.shape[1:], probe.dtype
    token = uuid.uuid4().hex
    shared = dask.delayed(estimator, name=f"{type(estimator).__name__}-{token}")
    apply = dask.delayed(_apply, pure=True)
    blocks = X.to_delayed().ravel()
    pieces, start = [], 0
    for i, (block, n_rows) in enumerate(zip(blocks, X.chunks[0])):
        extra = () if block_args is None else block_args(start, start + n_rows)
        task = apply(shared, method, block, *extra, dask_key_name=f"{method}-{token}-{i}")
        pieces.append(da.from_delayed(task, shape=(n_rows,) + tail, dtype=dtype))
        start += n_rows
    return da.concatenate(pieces, axis=0)


def _whole_rows(X):
    """``X`` with known row chunks and every other axis in one chunk."""
    if any(np.isnan(size) for size in X.chunks[0]):
        raise ValueError(
            "X has unknown row chunk sizes; call X.compute_chunk_sizes() first."
        )
    if X.ndim > 1 and any(len(chunks) > 1 for chunks in X.chunks[1:]):
        X = X.rechunk({axis: -1 for axis in range(1, X.ndim)})
    return X


def validate_image_stream(estimator, X, validate=None):
    """Validate the dask array ``X`` in ``fit`` without holding it in memory.

    One pass of reductions (the smallest and largest value) over the stream;
    the estimator's own validation then runs on a two-image proxy of ``X``'s
    shape and dtype that holds these two values, so every check (shape,
    dtype, finiteness, float32 range, the recorded pixel scale) is the
    in-memory one. ``validate(proxy)`` is that validation (default: the
    estimator's ``_validate_images(proxy, reset=True)``). Returns ``X`` as
    lazy ``(n, H, W, C)`` images.
    """
    import dask

    X = _whole_rows(X)
    if X.ndim not in (2, 3, 4):
        raise ValueError(
            f"X must be a dask array of images (n, H, W), (n, H, W, C) or rows "
            f"(n, H*W*C); got {X.ndim} dimension(s) with shape {X.shape}."
        )
    n_images = X.shape[0]
    proxy = np.zeros((min(n_images, 2),) + X.shape[1:], dtype=X.dtype)
    if n_images and proxy[0].size:
        low, high = dask.compute(X.min(), X.max())
        proxy[0].flat[0] = high
        if n_images > 1:
            proxy[1].flat[0] = low
        elif proxy[0].size > 1:
            proxy[0].flat[-1] = low
        elif abs(low) > abs(high):
            proxy[0].flat[0] = low
    if validate is None:
        estimator._validate_images(proxy, reset=True)
    else:
        validate(proxy)
    return X.reshape((n_images,) + tuple(estimator.image_shape_))


def gather_patches(images, patch_size, stride, chosen):
    """Patches at the sorted flat grid positions ``chosen`` of lazy images.

    Each row block gathers its own patches on the worker that decodes it;
    only the patches travel. Equal to the in-memory gather, row for row.
    """
    import dask

    from ._grid import _gather_patches, patch_grid_shape

    grid = patch_grid_shape(images.shape[1:3], patch_size, stride)
    per_image = grid[0] * grid[1]
    gather = dask.delayed(_gather_patches, pure=True)
    pieces, start = [], 0
    for block, n_rows in zip(images.to_delayed().ravel(), images.chunks[0]):
        low, high = np.searchsorted(chosen, [start * per_image, (start + n_rows) * per_image])
        if high > low:
            pieces.append(gather(block, patch_size, stride, chosen[low:high] - start * per_image))
        start += n_rows
    patches = dask.compute(*pieces)
    if not patches:
        return np.empty((0,) + tuple(patch_size) + images.shape[3:], dtype=images.dtype)
    return np.concatenate(patches)
