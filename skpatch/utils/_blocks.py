"""Fixed-shape row blocks: float results that do not depend on how many rows are processed.

A BLAS GEMM may round a row's result differently for a different number of
rows (MKL and OpenBLAS pick other kernels, tile edges and K splits by shape),
so ``transform`` in chunks of 1 and of 100 images would differ in the last
bits. Every GEMM on the encoding path therefore runs on blocks of exactly
``block_rows`` rows, the last one zero-padded: each call has the same shape,
and a row's result is the same whatever the chunk it came in, on every CPU
and BLAS code path (tested with ``MKL_CBWR=COMPATIBLE`` and
``MKL_ENABLE_INSTRUCTIONS=AVX2``). The block size depends only on the device.
"""

import numpy as np

__all__ = ["block_rows_for", "blocked_addmm", "blocked_search"]

# rows per GEMM call: 256 on CPU (a few MB of scores per block stay in cache
# for the selection that follows); one large block on a GPU
_CPU_BLOCK_ROWS = 256
_GPU_BLOCK_ROWS = 16384
# queries per faiss search call: faiss switches from its direct kernel to a
# BLAS GEMM at 20 queries and blocks the GEMM by 4096 queries
FAISS_BLOCK_ROWS = 1024


def block_rows_for(device):
    """Rows per GEMM block on ``device`` (a str or torch.device)."""
    return _CPU_BLOCK_ROWS if str(device) == "cpu" else _GPU_BLOCK_ROWS


def blocked_addmm(bias, rows, weight, block_rows, out=None):
    """``bias + rows @ weight`` in GEMMs of exactly ``block_rows`` rows (torch tensors).

    Parameters
    ----------
    bias : torch.Tensor of shape (q,) or None
    rows : torch.Tensor of shape (m, d)
    weight : torch.Tensor of shape (d, q)
    block_rows : int
    out : torch.Tensor of shape (m, q), optional

    Returns
    -------
    out : torch.Tensor of shape (m, q)
        Each row equal, bit for bit, to that row computed in any other set of rows.
    """
    import torch

    n_rows, n_cols = rows.shape[0], weight.shape[1]
    if out is None:
        out = torch.empty((n_rows, n_cols), dtype=rows.dtype, device=rows.device)
    if bias is None:
        bias = torch.zeros((n_cols,), dtype=rows.dtype, device=rows.device)
    n_full = n_rows - n_rows % block_rows
    for start in range(0, n_full, block_rows):
        stop = start + block_rows
        torch.addmm(bias, rows[start:stop], weight, out=out[start:stop])
    if n_full < n_rows:
        padded = rows.new_zeros((block_rows, rows.shape[1]))
        padded[: n_rows - n_full] = rows[n_full:]
        out[n_full:] = torch.addmm(bias, padded, weight)[: n_rows - n_full]
    return out


def blocked_search(search, queries, block_rows=FAISS_BLOCK_ROWS):
    """``search(block)`` over blocks of exactly ``block_rows`` query rows (numpy), concatenated.

    ``search`` returns a tuple of ``(rows, ...)`` arrays (faiss's distances
    and indices); the rows of the zero-padded last block are dropped.
    """
    n_rows = queries.shape[0]
    results = []
    for start in range(0, max(n_rows, 1), block_rows):
        block = queries[start:start + block_rows]
        n_block = block.shape[0]
        if n_block < block_rows:
            padded = np.zeros((block_rows, queries.shape[1]), dtype=queries.dtype)
            padded[:n_block] = block
            block = padded
        results.append([part[:n_block] for part in search(block)])
    if len(results) == 1:
        return tuple(results[0])
    return tuple(np.concatenate(parts) for parts in zip(*results))
