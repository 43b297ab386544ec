"""The patch encodings behind PatchDictionaryEmbedding (region sums of the codes).

Pure torch functions on one chunk of images, :class:`SoftThreshold` (the
soft-threshold encoding of Coates & Ng 2011) and :class:`FusedCodes` (GEMM
blocks encoded and pooled by compiled kernels on the CPU). Every function works image by
image in the sense that no value depends on another image of the chunk; with
the fixed-shape GEMM blocks of the search (``utils/_blocks.py``) this makes
``transform`` identical whatever the chunk size. torch is
imported by the caller (this module is only imported by the engine, ``_encoder.py``;
the regions themselves are in ``_pooling.py``).
"""

import numpy as np
import torch

from ..utils._blocks import block_rows_for, blocked_addmm

__all__ = [
    "encode_hard",
    "encode_hard_sparse",
    "encode_triangle",
    "encode_full",
    "SoftThreshold",
    "FusedCodes",
]


def encode_hard(mask, n_images, pool):
    """Sum-pooled Phi_hard: how many of a region's patches have each atom among their k nearest.

    Parameters
    ----------
    mask : torch.Tensor of shape (n_images * P, Q)
        1 for the k nearest atoms of each patch, else 0 (image-major rows,
        row-major positions).
    n_images : int
    pool : torch.Tensor of shape (R, P)
        0/1 matrix summing the positions of each pooled cell (``RegionPooling``).

    Returns
    -------
    pooled : torch.Tensor of shape (n_images, R, Q), float32
        Region sums (exact integers for 0/1 codes); the caller divides by
        the region sizes.
    """
    n_regions, n_positions = pool.shape
    return torch.matmul(pool, mask.reshape(n_images, n_positions, -1))


def encode_hard_sparse(indices, n_images, positions, cells, n_positions, n_regions, n_atoms):
    """:func:`encode_hard` from neighbour indices, without a dense mask (for small k).

    Parameters
    ----------
    indices : torch.Tensor of shape (n_images * P, k), int64
    n_images : int
    positions, cells : torch.Tensor of shape (M,), int64
        Position ``positions[i]`` is summed into cell ``cells[i]`` (a position
        may belong to several cells: overlapping windows).
    n_positions : int
        ``P``, the patch positions per image.
    n_regions : int
    n_atoms : int

    Returns
    -------
    counts : torch.Tensor of shape (n_images, R, Q), float32
        Per-cell counts; divide by the cell sizes for the mean.
    """
    image = torch.arange(n_images, device=indices.device)[:, None]
    rows = (image * n_positions + positions[None, :]).reshape(-1)
    base = ((image * n_regions + cells[None, :]) * n_atoms).reshape(-1)
    slots = (base[:, None] + indices[rows]).reshape(-1)
    # integer counts: exact and independent of summation order
    counts = torch.bincount(slots, minlength=n_images * n_regions * n_atoms)
    return counts.to(torch.float32).reshape(n_images, n_regions, n_atoms)


def triangle_values(sq_distances, mask, k):
    """Coates et al.'s triangle ``max(0, mean_j d_j - d_a)`` over each row's k selected atoms.

    Parameters
    ----------
    sq_distances : torch.Tensor of shape (m, Q)
        Squared distances of each patch to every atom (only the selected
        entries are read).
    mask : torch.Tensor of shape (m, Q)
        1 on the k nearest atoms.
    k : int

    Returns
    -------
    values : torch.Tensor of shape (m, Q)
        0 outside the selected atoms.
    """
    distances = sq_distances.clamp_min(0.0).sqrt_()
    distances.mul_(mask)
    mean = distances.sum(dim=1, keepdim=True) / k
    return (mean - distances).clamp_min_(0.0).mul_(mask)


def encode_triangle(sq_distances, mask, k, n_images, pool):
    """Sum-pooled triangle encoding over the k nearest atoms (see :func:`triangle_values`).

    Returns
    -------
    pooled : torch.Tensor of shape (n_images, R, Q), float32
    """
    return encode_hard(triangle_values(sq_distances, mask, k), n_images, pool)


def encode_full(reduced, mask, n_images, pool):
    """Sum-pooled Phi_full: each patch's reduced vector added to the slots of its k nearest atoms.

    Parameters
    ----------
    reduced : torch.Tensor of shape (n_images * P, r)
        The patch in the reduced (leading whitened components) space.
    mask : torch.Tensor of shape (n_images * P, Q)
    n_images : int
    pool : torch.Tensor of shape (R, P)

    Returns
    -------
    pooled : torch.Tensor of shape (n_images, R, Q, r), float32
    """
    n_regions, n_positions = pool.shape
    n_components = reduced.shape[-1]
    # (b, R, P, r): each region's 0/1 weights times the patch vectors
    weighted = pool[None, :, :, None] * reduced.reshape(n_images, 1, n_positions, n_components)
    selected = mask.reshape(n_images, n_positions, -1).transpose(1, 2)[:, None]
    return torch.matmul(selected, weighted)


# scores of one block of the fused CPU path: about 1 MB (256 rows of 1024
# atoms), encoded and pooled by one kernel call while in cache
_FUSED_BLOCK_BYTES = 1 << 20


class SoftThreshold:
    """Region sums of Coates & Ng's soft-threshold codes ``max(0, s - alpha)``, chunk by chunk.

    ``s = q . a / |a|`` is the projection of the whitened centred patch
    ``q = (x - mean) W`` on each atom scaled to unit length. The centring,
    the whitening and the atom norms are folded into one GEMM on the raw
    patches, ``t = x @ weight + bias = s - alpha``; the code is ``t``
    clamped at 0, in place, and the code of the negated patch
    ``max(0, s' - alpha) = max(0, negative_offset - t)`` comes from the same
    GEMM output (``s' = -s`` for the centred convention, ``-s + 2 b`` with
    ``b = -mean W a / |a|`` for the raw one). No selection.

    This is the GPU path (and the CPU one without numba): the chunk is
    scored by :func:`~skpatch.utils._blocks.blocked_addmm`, thresholded in
    place and pooled by :meth:`RegionPooling.dense
    <skpatch.embedding._pooling.RegionPooling.dense>`. On a CPU,
    :class:`FusedCodes` does the same block by block in cache.

    Parameters
    ----------
    weight : torch.Tensor of shape (d, Q)
        ``W a^T / |a|``.
    bias : torch.Tensor of shape (Q,)
        ``-mean W a^T / |a| - alpha``.
    negative_offset : torch.Tensor of shape (Q,) or None
        None for one sign.
    pooling : RegionPooling
    """

    needs_whitened = False

    def __init__(self, weight, bias, negative_offset, pooling):
        self.weight, self.bias = weight.contiguous(), bias.contiguous()
        self.negative_offset = negative_offset
        self.pooling = pooling

    def region_sums(self, patches, n_images):
        """Cell sums ``(b, R, Q')`` of each sign's codes, from patch rows ``(b * P, d)``."""
        scores = blocked_addmm(self.bias, patches, self.weight, block_rows_for(patches.device))
        values = [scores]
        if self.negative_offset is not None:
            values.append(torch.sub(self.negative_offset, scores).clamp_min_(0.0))
        scores.clamp_min_(0.0)
        return [self.pooling.dense(v, n_images) for v in values]


class FusedCodes:
    """Scores, codes and pooling of a chunk, block by block, on the CPU (compiled kernels).

    Each image's patch rows are cut into the same few blocks of a fixed number
    of rows (about 1 MB of scores; an image's last block zero-padded), each
    copied into one aligned buffer and scored by one GEMM,
    ``[x, 1] @ [[weight], [bias]]`` (the bias a last row of the weight, against
    a last column of ones in the patch rows), and one kernel call of
    :mod:`skpatch.utils._kernels` turns the block's scores into codes and adds
    them into the cells of their images while the block is in cache:

    - ``'soft_threshold'``: ``max(0, t)`` and, for the negated patch,
      ``max(0, negative_offset - t)`` (see :class:`SoftThreshold`);
    - ``'top_k'``: hard codes, 1 for each of the ``k`` largest scores
      ``2 q.a - |a|^2`` of each row (and of the negated patch's
      ``negative_offset - t``), exact, ties at the k-th score taken in atom
      order.

    No dense ``(patches x atoms)`` code buffer is written; the Python loop is
    over blocks. A patch position is always at the same row of a block of
    the same shape, whatever the chunk, and each cell adds its rows in the
    order of their patch positions, so the output does not depend on the
    chunk size.

    Parameters
    ----------
    weight : torch.Tensor of shape (d, Q)
    bias : torch.Tensor of shape (Q,)
    negative_offset : torch.Tensor of shape (Q,) or None
        None for one sign.
    pooling : RegionPooling
    kind : {'soft_threshold', 'top_k'}
    k : int, default=None
        For ``'top_k'``.
    """

    needs_whitened = False

    def __init__(self, weight, bias, negative_offset, pooling, *, kind, k=None):
        from statistics import NormalDist

        from ..utils import _kernels

        self.weight_and_bias = torch.cat([weight, bias[None]]).contiguous()
        self.n_atoms = weight.shape[1]
        self.n_signs = 1 if negative_offset is None else 2
        self.negative_offset = (np.zeros(self.n_atoms, dtype=np.float32)
                                if negative_offset is None
                                else np.ascontiguousarray(negative_offset.numpy()))
        self.pooling, self.kind, self.k = pooling, kind, k
        # the start of the top-k search: the normal quantile of 1 - k / Q
        self.quantile = 0.0
        if kind == "top_k" and 0 < k < self.n_atoms:
            self.quantile = NormalDist().inv_cdf(1.0 - k / self.n_atoms)
        self.ptr, self.cells = _kernels.pooling_csr(
            [positions.numpy() for positions in pooling.positions], pooling.cells.numpy(),
            pooling.n_positions,
        )
        # blocks of each image's rows, the same for every image: a row always sits at the
        # same place of a block of the same shape (MKL's AVX2 kernels round a row
        # differently at another place in a block of some shapes)
        target = max(1, min(256, _FUSED_BLOCK_BYTES // (4 * self.n_atoms)))
        n_positions = pooling.n_positions
        self.block_rows = -(-n_positions // -(-n_positions // target))

    def region_sums(self, rows, n_images):
        """Cell sums ``(b, R, Q')`` of each sign's codes, from rows ``(b * P, d + 1)`` ending in 1."""
        from ..utils import _kernels

        pooling, n_rows = self.pooling, self.block_rows
        n_parts = self.ptr.shape[0]
        out = np.zeros((n_images, self.n_signs, pooling.n_regions, self.n_atoms // n_parts),
                       dtype=np.float32)
        scores = rows.new_empty((n_rows, self.n_atoms))
        scores_np = scores.numpy()
        work = np.empty(self.n_atoms, dtype=np.float32)
        # every GEMM reads one aligned buffer: the same operand addresses for every
        # block (MKL may take another code path at another alignment)
        block = rows.new_zeros((n_rows, rows.shape[1]))
        n_positions = pooling.n_positions
        starts = [(start, min(start + n_rows, n_positions))
                  for start in range(0, n_positions, n_rows)]
        for first in range(0, n_images * n_positions, n_positions):
            for start, stop in starts:
                n_valid = stop - start
                block[:n_valid] = rows[first + start : first + stop]
                if n_valid < n_rows:  # every GEMM has the same shape (see utils._blocks)
                    block[n_valid:] = 0.0
                torch.mm(block, self.weight_and_bias, out=scores)
                if self.kind == "soft_threshold":
                    _kernels.pool_soft_threshold(scores_np, n_valid, first + start, n_positions,
                                                 self.ptr, self.cells, self.negative_offset, out)
                else:
                    _kernels.pool_top_k(scores_np, n_valid, first + start, n_positions, self.k,
                                        self.quantile, self.ptr, self.cells,
                                        self.negative_offset, out, work)
        return [torch.from_numpy(out[:, sign]) for sign in range(self.n_signs)]
