"""Compiled (numba) kernels of the CPU encoding path: threshold or select, and pool, in one pass.

After each fixed-shape GEMM block of scores (``utils/_blocks.py``), one
kernel call turns the block into codes and adds them into the pooled cells of
their images while the block is still in cache, with no dense
``(patches x atoms)`` code buffer and no Python loop per image:

- :func:`pool_soft_threshold`: ``max(0, t)`` (and ``max(0, offset - t)`` for
  the negated patch) of the scores ``t = s - alpha``;
- :func:`pool_top_k`: the exact ``k`` largest scores of each row (and of the
  negated row ``offset - t``), counted into the cells: hard codes.

Every row is added into its image's cells in the order of its patch
position, whatever the block or chunk it came in, so the pooled sums are the
same bits whatever the chunk size. The pooling is given per patch position as
the cells it belongs to (CSR arrays ``ptr``, ``cells``): one pair per part of
the atoms (two with ``flip_invariant``: the second half of the atoms is
summed over the mirrored positions).

numba is imported, and each kernel compiled (cached on disk), on first use
only (the kernels themselves are in ``_numba_kernels.py``, which imports
numba); :func:`available` says whether numba can be imported.
"""

import functools

import numpy as np

__all__ = ["available", "pooling_csr", "pool_soft_threshold", "pool_top_k"]


@functools.cache
def available():
    """Whether numba can be imported (the compiled kernels are used only then)."""
    try:
        import numba  # noqa: F401
    except ImportError:
        return False
    return True


def pooling_csr(layout_positions, cells, n_positions):
    """``(ptr, cells)`` int64: the cells of each patch position, positions in order.

    Parameters
    ----------
    layout_positions : list of ndarray of shape (M,)
        One per part of the atoms: membership ``i`` adds position
        ``layout_positions[part][i]`` into cell ``cells[i]``.
    cells : ndarray of shape (M,)
    n_positions : int

    Returns
    -------
    ptr : ndarray of shape (n_parts, n_positions + 1)
    cell_lists : ndarray of shape (n_parts, M)
        The cells of position ``p`` of part ``j`` are
        ``cell_lists[j, ptr[j, p]:ptr[j, p + 1]]``.
    """
    cells = np.asarray(cells, dtype=np.int64)
    ptrs, lists = [], []
    for positions in layout_positions:
        positions = np.asarray(positions, dtype=np.int64)
        order = np.argsort(positions, kind="stable")
        counts = np.bincount(positions, minlength=n_positions)
        ptrs.append(np.concatenate([[0], np.cumsum(counts)]))
        lists.append(cells[order])
    return np.ascontiguousarray(ptrs, dtype=np.int64), np.ascontiguousarray(lists, dtype=np.int64)


def pool_soft_threshold(scores, n_rows, first_row, n_positions, ptr, cells, negative_offset, out):
    """Add ``max(0, t)`` (and ``max(0, negative_offset - t)``) of each row into its cells.

    Parameters
    ----------
    scores : ndarray of shape (B, Q), float32
        ``t = s - alpha`` of a block of patch rows; the first ``n_rows`` are read.
    n_rows : int
    first_row : int
        Index of the block's first row in the chunk: row ``first_row + r``
        is position ``(first_row + r) % n_positions`` of image
        ``(first_row + r) // n_positions``.
    n_positions : int
    ptr, cells : ndarray, int64
        From :func:`pooling_csr`; one part (columns ``0..Q``) or two (columns
        ``0..Q/2`` and ``Q/2..Q``).
    negative_offset : ndarray of shape (Q,), float32
        Read only when ``out`` has two signs.
    out : ndarray of shape (n_images, n_signs, R, Q / n_parts), float32
        Cell sums, added to.
    """
    from . import _numba_kernels

    _numba_kernels.soft_threshold(scores, n_rows, first_row, n_positions, ptr, cells,
                                  negative_offset, out)


def pool_top_k(scores, n_rows, first_row, n_positions, k, quantile, ptr, cells, negative_offset,
               out, work):
    """Add 1 for each of the ``k`` largest scores of each row (and of ``offset - t``) into its cells.

    The ``k`` largest of a row: those above its ``k``-th largest value, then,
    where several scores equal that value, the first of them in atom order
    up to ``k`` in all. The ``k``-th largest value is found by counting the
    scores at or above a threshold that is narrowed, by interpolation and
    bisection, until exactly ``k`` are at or above it or only equal scores
    are left between the bounds (``_numba_kernels.kth_largest``): a few SIMD
    passes over a row in cache, no sort and no copy.

    Parameters
    ----------
    scores : ndarray of shape (B, Q), float32
    n_rows, first_row, n_positions, ptr, cells, negative_offset
        As in :func:`pool_soft_threshold`; ``negative_offset - t`` are the
        scores of the negated patch.
    k : int
        ``1 <= k <= Q``.
    quantile : float
        Where the search for the k-th largest starts, ``mean + quantile * std``
        of the row (the normal quantile of ``1 - k / Q``).
    out : ndarray of shape (n_images, n_signs, R, Q / n_parts), float32
        Cell counts, added to (exact integers).
    work : ndarray of shape (Q,), float32
        Scratch for the negated row.
    """
    from . import _numba_kernels

    _numba_kernels.top_k(scores, n_rows, first_row, n_positions, int(k), float(quantile), ptr,
                         cells, negative_offset, out, work)
