"""Dask support: lazy import, detection of dask arrays, block-wise methods.

Dask is optional (``pip install "skpatch[dask]"``). Nothing here imports it
unless a dask array is passed in, so ``import skpatch`` never loads it.
"""

import sys
import uuid

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


def _apply(estimator, method, block):
    return getattr(estimator, method)(block)


def map_row_blocks(estimator, method, X):
    """``estimator.<method>`` applied to each row chunk of the dask array ``X``.

    Returns a dask array with the row chunks of ``X``; nothing is computed
    (except ``method`` on one zero image, here, to learn the output's shape
    and dtype and to check ``X``'s shape against the fitted one). The other
    axes are first merged into one chunk, so every task sees whole images and
    the result equals ``method`` on the in-memory array, bit for bit.

    The estimator is one node of the graph: on a distributed cluster it is
    sent (pickled, without its engine) once to each worker that needs it.
    """
    da = import_dask_array()
    import dask

    if any(np.isnan(size) for size in X.chunks[0]):
        raise ValueError(
            "X has unknown row chunk sizes; call X.compute_chunk_sizes() first."
        )
    if X.ndim > 1:
        X = X.rechunk({axis: -1 for axis in range(1, X.ndim)})
    probe = getattr(estimator, method)(np.zeros((1,) + X.shape[1:], dtype=X.dtype))
    probe = np.asarray(probe)
    tail, dtype = probe.shape[1:], probe.dtype
    token = uuid.uuid4().hex
    shared = dask.delayed(estimator, name=f"{type(estimator).__name__}-{token}")
    apply = dask.delayed(_apply, pure=True)
    blocks = X.to_delayed().ravel()
    pieces = [
        da.from_delayed(
            apply(shared, method, block, dask_key_name=f"{method}-{token}-{i}"),
            shape=(n_rows,) + tail,
            dtype=dtype,
        )
        for i, (block, n_rows) in enumerate(zip(blocks, X.chunks[0]))
    ]
    return da.concatenate(pieces, axis=0)
