"""Fixed-shape row blocks (utils/_blocks.py): a row's GEMM result is the same in any set of rows."""

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal

from skpatch.utils._blocks import blocked_addmm, blocked_search

torch = pytest.importorskip("torch")


def _operands(n_rows=700, depth=75, n_cols=300, seed=0):
    gen = torch.Generator().manual_seed(seed)
    rows = torch.randn(n_rows, depth, generator=gen)
    weight = torch.randn(depth, n_cols, generator=gen)
    bias = torch.randn(n_cols, generator=gen)
    return rows, weight, bias


def test_blocked_addmm_is_the_affine_map():
    rows, weight, bias = _operands()
    got = blocked_addmm(bias, rows, weight, 256)
    # float64 reference: float32 rounding of a 75-term dot product
    expected = bias.double() + rows.double() @ weight.double()
    scale = (rows.double().abs() @ weight.double().abs()).max().item()
    assert_allclose(got.numpy(), expected.numpy(), rtol=0, atol=75 * 2.0**-23 * scale)
    assert_array_equal(blocked_addmm(None, rows, weight, 256).numpy(),
                       blocked_addmm(torch.zeros(300), rows, weight, 256).numpy())


@pytest.mark.parametrize("chunk", [1, 3, 25, 100, 255, 257, 699])
def test_a_rows_result_does_not_depend_on_its_chunk(chunk):
    # chunks of other sizes put each row at another place of other blocks;
    # each GEMM still has 256 rows, so the bits are the same on every BLAS path
    rows, weight, bias = _operands()
    reference = blocked_addmm(bias, rows, weight, 256)
    pieces = [blocked_addmm(bias, rows[start:start + chunk], weight, 256)
              for start in range(0, rows.shape[0], chunk)]
    assert_array_equal(torch.cat(pieces).numpy(), reference.numpy())


def test_blocked_search_drops_the_padding_and_keeps_the_order():
    calls = []

    def search(block):
        calls.append(block.shape)
        return block.sum(axis=1), np.arange(block.shape[0]) + 10 * len(calls)

    queries = np.arange(2500 * 2, dtype=np.float32).reshape(2500, 2)
    sums, tags = blocked_search(search, queries, block_rows=1024)
    assert calls == [(1024, 2)] * 3  # the last block zero-padded to the same shape
    assert_array_equal(sums, queries.sum(axis=1))
    assert_array_equal(tags, np.concatenate([np.arange(1024) + 10, np.arange(1024) + 20,
                                             np.arange(452) + 30]))


def test_faiss_distances_do_not_depend_on_the_number_of_queries():
    faiss = pytest.importorskip("faiss")
    from skpatch.utils._faiss import index_search

    rng = np.random.default_rng(0)
    atoms = rng.standard_normal((64, 27)).astype(np.float32)
    queries = rng.standard_normal((300, 27)).astype(np.float32)
    index = faiss.IndexFlatL2(27)
    index.add(atoms)
    distances, indices = index_search(index, queries, 5)
    # faiss uses its direct kernel below 20 queries and a BLAS GEMM above
    for chunk in (1, 7, 19, 21, 150):
        parts = [index_search(index, queries[start:start + chunk], 5)
                 for start in range(0, 300, chunk)]
        assert_array_equal(np.concatenate([p[0] for p in parts]), distances)
        assert_array_equal(np.concatenate([p[1] for p in parts]), indices)
    brute = ((queries[:, None, :].astype(np.float64) - atoms[None]) ** 2).sum(-1)
    assert_array_equal(indices[:, 0], brute.argmin(axis=1))
