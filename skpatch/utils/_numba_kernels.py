"""The numba kernels behind :mod:`skpatch.utils._kernels` (imported on first use only).

Compiled with ``cache=True``: the machine code is kept beside this file (or
in numba's cache directory) and reused by later processes, Dask workers
included.
"""

import numba
import numpy as np

__all__ = ["soft_threshold", "top_k"]

_JIT = dict(nogil=True, cache=True, boundscheck=False)


@numba.njit(**_JIT)
def soft_threshold(scores, n_rows, first_row, n_positions, ptr, cells, negative_offset, out):
    """See :func:`skpatch.utils._kernels.pool_soft_threshold`."""
    n_signs, width = out.shape[1], out.shape[3]
    zero = np.float32(0.0)
    for r in range(n_rows):
        row_index = first_row + r
        image = row_index // n_positions
        position = row_index - image * n_positions
        row = scores[r]
        for part in range(ptr.shape[0]):
            start = part * width
            for member in range(ptr[part, position], ptr[part, position + 1]):
                cell = cells[part, member]
                total = out[image, 0, cell]
                for j in range(width):
                    total[j] += max(row[start + j], zero)
                if n_signs == 2:
                    negated = out[image, 1, cell]
                    for j in range(width):
                        negated[j] += max(negative_offset[start + j] - row[start + j], zero)


@numba.njit(fastmath=True, **_JIT)
def _count_at_least(row, threshold):
    """How many scores are >= threshold (a float32 count: exact below 2**24 atoms, and SIMD)."""
    count = np.float32(0.0)
    for j in range(row.shape[0]):
        count += np.float32(1.0) if row[j] >= threshold else np.float32(0.0)
    return int(count)


@numba.njit(fastmath=True, **_JIT)
def _mean_and_std(row):
    """Mean and standard deviation of the scores (float32 sums: SIMD)."""
    total, squares = np.float32(0.0), np.float32(0.0)
    for j in range(row.shape[0]):
        total += row[j]
        squares += row[j] * row[j]
    mean = np.float64(total) / row.shape[0]
    return mean, np.sqrt(max(np.float64(squares) / row.shape[0] - mean * mean, 0.0))


@numba.njit(**_JIT)
def _count_equal(row, value):
    count = 0
    for j in range(row.shape[0]):
        count += row[j] == value
    return count


@numba.njit(**_JIT)
def kth_largest(row, k, z):
    """``(threshold, cut)``: the k largest scores are those above ``threshold``, and
    those equal to it at atoms ``j < cut``.

    ``cut = len(row)`` when exactly k scores are at or above ``threshold``
    (then ``threshold`` may lie between two scores); otherwise ``threshold`` is
    the k-th largest score and several scores equal it.

    The threshold is narrowed between ``low`` (at least k scores at or above
    it) and ``high`` (fewer than k), each step one counting pass over the
    row: first ``mean + z * std`` (``z`` the normal quantile of ``1 - k / n``)
    and a bracket around it, then guesses interpolated from the two counts,
    with a bisection whenever a guess did not halve the number of scores
    between the bounds, until
    exactly k scores are at or above ``low`` or no float lies between the
    bounds; then the largest score below ``high`` is the k-th largest, tied
    scores taken in atom order.
    """
    n = row.shape[0]
    if k == n:  # every score
        low = row[0]
        for j in range(n):
            low = min(low, row[j])
        return low, n
    mean, std = _mean_and_std(row)
    guess = np.float32(mean + z * std)
    if not (np.isfinite(guess) and np.isfinite(std)):  # float32 sums overflowed
        guess, std = row[0], 0.0
    count = _count_at_least(row, guess)
    # a bracket around the guess, its width doubled until it holds the k-th score
    # (+-inf at worst); at least a few float steps wide
    step = max(0.5 * std, 2.5e-7 * abs(np.float64(guess)), 1e-30)
    if count >= k:
        low, count_low = guess, count
        high = np.float32(np.float64(low) + step)
        count_high = _count_at_least(row, high)
        while count_high >= k:
            low, count_low, step = high, count_high, 2.0 * step
            high = np.float32(np.float64(low) + step)
            count_high = _count_at_least(row, high)
    else:
        high, count_high = guess, count
        low = np.float32(np.float64(high) - step)
        count_low = _count_at_least(row, low)
        while count_low < k:
            high, count_high, step = low, count_low, 2.0 * step
            low = np.float32(np.float64(high) - step)
            count_low = _count_at_least(row, low)
    bisect = False
    for _ in range(160):
        if count_low == k:
            return low, n
        gap = count_low - count_high
        # where the count would reach k were the scores uniform between the bounds
        fraction = (count_low - k + 0.5) / gap
        middle = np.float32(np.float64(low) + (np.float64(high) - np.float64(low)) * fraction)
        if bisect or not low < middle < high:
            middle = np.float32(0.5 * (np.float64(low) + np.float64(high)))
            if not low < middle < high:
                break  # adjacent floats: only scores equal to low lie in [low, high)
        count = _count_at_least(row, middle)
        if count >= k:
            low, count_low = middle, count
        else:
            high, count_high = middle, count
        bisect = 2 * (count_low - count_high) > gap  # the guess did not halve the gap
    if count_low == k:
        return low, n
    # the k-th largest is the largest score below high
    value = low
    for j in range(n):
        if row[j] < high and row[j] > value:
            value = row[j]
    low = value
    count_low = _count_at_least(row, low)
    if count_low == k:
        return low, n
    # ties at low: the scores above it, then the first equal ones up to k
    needed = k - (count_low - _count_equal(row, low))
    seen = 0
    for j in range(n):
        if row[j] == low:
            seen += 1
            if seen == needed:
                return low, j + 1
    return low, n


@numba.njit(**_JIT)
def top_k(scores, n_rows, first_row, n_positions, k, z, ptr, cells, negative_offset, out,
          work):
    """See :func:`skpatch.utils._kernels.pool_top_k`."""
    n_signs, width = out.shape[1], out.shape[3]
    n_atoms = scores.shape[1]
    one, zero = np.float32(1.0), np.float32(0.0)
    for r in range(n_rows):
        row_index = first_row + r
        image = row_index // n_positions
        position = row_index - image * n_positions
        for sign in range(n_signs):
            row = scores[r]
            if sign == 1:
                for j in range(n_atoms):
                    work[j] = negative_offset[j] - scores[r, j]
                row = work
            value, cut = kth_largest(row, k, z)
            for part in range(ptr.shape[0]):
                start = part * width
                for member in range(ptr[part, position], ptr[part, position + 1]):
                    total = out[image, sign, cells[part, member]]
                    if cut == n_atoms:
                        for j in range(width):
                            total[j] += one if row[start + j] >= value else zero
                    else:  # ties at the k-th value: the first ones, up to k in all
                        for j in range(width):
                            v = row[start + j]
                            keep = v > value or (v == value and start + j < cut)
                            total[j] += one if keep else zero
