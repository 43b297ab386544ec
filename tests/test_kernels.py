"""The compiled (numba) kernels of the CPU encoding path, against plain numpy.

``kth_largest`` against a sort (ties taken in atom order), the pooled kernels
against dense codes summed into cells, and the embedding's hard codes through
the kernels against the same codes through the mask + partition path.
"""

from statistics import NormalDist

import numpy as np
import pytest
from numpy.testing import assert_array_equal
from sklearn.base import clone

pytest.importorskip("numba")

from skpatch import PatchDictionaryEmbedding  # noqa: E402
from skpatch.embedding import _encodings  # noqa: E402
from skpatch.embedding._encoder import GemmSearch  # noqa: E402
from skpatch.utils import _kernels, _numba_kernels  # noqa: E402

from _helpers import near_ties  # noqa: E402


def _top_k_reference(row, k):
    """The k largest of a row, ties in atom order: a stable sort."""
    order = np.lexsort((np.arange(row.size), -row.astype(np.float64)))[:k]
    mask = np.zeros(row.size, dtype=bool)
    mask[order] = True
    return mask


def _rows(n_atoms, seed):
    """Score rows of several kinds: smooth, many ties, all equal, offset, huge, tiny."""
    rng = np.random.default_rng(seed)
    rows = [rng.standard_normal(n_atoms), np.round(2 * rng.standard_normal(n_atoms)),
            np.ones(n_atoms), np.zeros(n_atoms), 1000 + 1e-6 * rng.standard_normal(n_atoms),
            1e30 * rng.standard_normal(n_atoms), 1e-30 * rng.standard_normal(n_atoms),
            rng.exponential(size=n_atoms) ** 3, -rng.exponential(size=n_atoms)]
    rows.append(np.repeat(rng.standard_normal(n_atoms // 4 + 1), 4)[:n_atoms])
    return [np.asarray(row, dtype=np.float32) for row in rows]


@pytest.mark.parametrize("n_atoms, k", [(1024, 256), (1024, 1), (1024, 1023), (1024, 1024),
                                        (10, 3), (2, 1), (7, 7), (5, 4), (300, 77)])
def test_kth_largest_selects_the_top_k_with_ties_in_atom_order(n_atoms, k):
    quantile = NormalDist().inv_cdf(1 - k / n_atoms) if k < n_atoms else 0.0
    for seed in range(3):
        for row in _rows(n_atoms, seed):
            threshold, cut = _numba_kernels.kth_largest(row, k, quantile)
            chosen = (row > threshold) | ((row == threshold) & (np.arange(n_atoms) < cut))
            assert_array_equal(chosen, _top_k_reference(row, k))


def test_kth_largest_with_a_bad_starting_quantile_still_exact():
    row = np.random.default_rng(0).standard_normal(512).astype(np.float32)
    for quantile in (-40.0, 0.0, 40.0, 1e30):
        threshold, cut = _numba_kernels.kth_largest(row, 100, quantile)
        chosen = (row > threshold) | ((row == threshold) & (np.arange(512) < cut))
        assert_array_equal(chosen, _top_k_reference(row, 100))


def _cells(n_positions, n_cells, seed, flip):
    """A random membership of positions in cells (some in none, some in several)."""
    rng = np.random.default_rng(seed)
    positions = rng.integers(0, n_positions, size=3 * n_positions)
    cells = rng.integers(0, n_cells, size=positions.size)
    parts = [positions]
    if flip:
        parts.append(rng.permutation(n_positions)[positions])
    return parts, cells


@pytest.mark.parametrize("flip", [False, True])
@pytest.mark.parametrize("n_signs", [1, 2])
def test_pooled_kernels_are_dense_codes_summed_into_cells(flip, n_signs):
    rng = np.random.default_rng(1)
    n_images, n_positions, n_atoms, n_cells, k = 3, 11, 16, 5, 5
    scores = rng.standard_normal((n_images * n_positions, n_atoms)).astype(np.float32)
    scores[4, :6] = 0.5  # ties at the k-th score
    offset = rng.standard_normal(n_atoms).astype(np.float32)
    parts, cells = _cells(n_positions, n_cells, 0, flip)
    ptr, cell_lists = _kernels.pooling_csr(parts, cells, n_positions)
    width = n_atoms // len(parts)
    signs = [scores, offset - scores][:n_signs]
    soft_codes = [np.maximum(values, 0) for values in signs]
    hard_codes = [np.stack([_top_k_reference(row, k) for row in values]).astype(np.float32)
                  for values in signs]
    for kind, codes in [("soft", soft_codes), ("hard", hard_codes)]:
        expected = np.zeros((n_images, n_signs, n_cells, width))
        for sign, values in enumerate(codes):
            values = values.reshape(n_images, n_positions, n_atoms).astype(np.float64)
            for part, positions in enumerate(parts):
                for position, cell in zip(positions, cells):
                    expected[:, sign, cell] += values[:, position, part * width:(part + 1) * width]
        out = np.zeros((n_images, n_signs, n_cells, width), dtype=np.float32)
        # blocks of 4 rows that cut through the images, the last one short
        for start in range(0, scores.shape[0], 4):
            block = np.zeros((4, n_atoms), dtype=np.float32)
            n_valid = min(4, scores.shape[0] - start)
            block[:n_valid] = scores[start:start + n_valid]
            block[n_valid:] = 1e9  # padded rows: never read
            if kind == "soft":
                _kernels.pool_soft_threshold(block, n_valid, start, n_positions, ptr, cell_lists,
                                             offset, out)
            else:
                _kernels.pool_top_k(block, n_valid, start, n_positions, k, 0.0, ptr, cell_lists,
                                    offset, out, np.empty(n_atoms, dtype=np.float32))
        if kind == "hard":
            assert_array_equal(out, expected)  # integer counts
        else:  # float32 sums of a few dozen codes at most
            np.testing.assert_allclose(out, expected, rtol=32 * np.finfo(np.float32).eps)


def _images(n=10, size=9, seed=0):
    rng = np.random.default_rng(seed)
    base = rng.random((n, size + 1, size + 1, 3))
    return (base[:, 1:, 1:] + base[:, :-1, :-1] + 0.3 * base[:, 1:, :-1]) / 2.3


@pytest.mark.parametrize("settings", [
    dict(n_neighbors=5, pooling=2), dict(n_neighbors=12, both_signs=True, pooling=(3, 2)),
    dict(n_neighbors=7, both_signs="raw", pooling=None),
    dict(n_neighbors=8, flip_invariant=True, both_signs=True, pooling=3),
])
def test_hard_codes_through_the_kernels_equal_the_mask_path(settings, monkeypatch):
    X = _images()
    params = dict(patch_size=3, n_atoms=32, knn_backend="gemm", random_state=0, **settings)
    fused = PatchDictionaryEmbedding(**params).fit(X)
    assert isinstance(fused._get_encoder().search, _encodings.FusedCodes)
    monkeypatch.setattr(_kernels, "available", lambda: False)
    masked = PatchDictionaryEmbedding(**params).fit(X)
    assert isinstance(masked._get_encoder().search, GemmSearch)
    got, expected = fused.transform(X), masked.transform(X)
    n_ties = near_ties(fused, X)
    if n_ties == 0:  # the same neighbour sets on any CPU: the same counts, the same bits
        assert_array_equal(got, expected)
    else:
        # a patch that swaps one neighbour moves one count between two slots of
        # each cell it is pooled into (weight at most 1 per cell mean): L1 <= 2 per tie
        assert np.abs(got - expected).sum() <= 2 * n_ties
        # and on this CPU, as found when written, no tie flips
        assert np.mean(got == expected) > 0.99


def test_hard_codes_through_the_kernels_identical_whatever_the_chunk_size(monkeypatch):
    # at most 37 rows a block: 3 blocks of 34 rows for the 100 positions of an image
    monkeypatch.setattr(_encodings, "_FUSED_BLOCK_BYTES", 4 * 32 * 37)
    X = _images(n=7, size=12)
    base = PatchDictionaryEmbedding(patch_size=3, n_atoms=32, n_neighbors=9, both_signs=True,
                                    pooling=(4, 3), knn_backend="gemm", batch_size="auto",
                                    random_state=0).fit(X)
    assert base._get_encoder().search.block_rows == 34
    reference = base.transform(X)
    for batch_size, n_jobs in [(1, 1), (2, 2), (5, 1), (7, 2)]:
        other = clone(base).set_params(batch_size=batch_size, n_jobs=n_jobs).fit(X)
        assert_array_equal(other.transform(X), reference)
    # per patch position, exactly k = 9 ones per sign
    per_position = clone(base).set_params(pooling=None).fit(X).transform(X)
    assert_array_equal(per_position.reshape(7, 2, -1, 32).sum(axis=3), 9.0)
