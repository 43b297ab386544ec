"""The patch encodings behind PatchDictionaryEmbedding (region sums of the codes).

Pure torch functions on one chunk of images, and :class:`SoftThreshold`, the
soft-threshold encoding (Coates & Ng 2011) fused with its pooling. Every function works image by
image in the sense that no value depends on another image of the chunk; with
the fixed-shape GEMM blocks of the search (``utils/_blocks.py``) this makes
``transform`` identical whatever the chunk size. torch is
imported by the caller (this module is only imported by the engine, ``_encoder.py``;
the regions themselves are in ``_pooling.py``).
"""

import torch

from ..utils._blocks import block_rows_for, blocked_addmm

__all__ = [
    "encode_hard",
    "encode_hard_sparse",
    "encode_triangle",
    "encode_full",
    "SoftThreshold",
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


# scores of one block of the fused soft-threshold path, both signs together:
# about 1 MB (243 rows of 1024 atoms for one sign on a 27 x 27 grid, 122 for
# two), thresholded and pooled while in cache; measured best of 256 KB - 1 MB
# on a 2-core Xeon (2 MB L2 per core)
_THRESHOLD_BLOCK_BYTES = 1 << 20


class SoftThreshold:
    """Region sums of Coates & Ng's soft-threshold codes ``max(0, s - alpha)``.

    ``s = q . a / |a|`` is the projection of the whitened centred patch
    ``q = (x - mean) W`` on each atom scaled to unit length. The centring,
    the whitening and the atom norms are folded into one GEMM on the raw
    patches, ``t = x @ weight + bias = s - alpha``; the code is ``t``
    clamped at 0, in place, and the code of the negated patch
    ``max(0, s' - alpha) = max(0, negative_offset - t)`` comes from the same
    GEMM output (``s' = -s`` for the centred convention, ``-s + 2 b`` with
    ``b = -mean W a / |a|`` for the raw one). No selection.

    On CPU with pooling the work is fused per image: its rows are scored in
    a few blocks of a fixed number of rows (about 1 MB of scores each, the
    last block zero-padded and given zero pooling weight), each block is
    thresholded and summed into the image's cells by a small GEMM with the
    block's columns of the pooling matrix while it is still in cache (the
    bias is folded into the scoring GEMM as a last row of the weight, against
    a last column of ones in the patch rows). Every
    GEMM has a shape fixed by the model and every image is summed in the
    same order, so the result does not depend on the chunk size; memory is
    one block whatever the number of images. Otherwise (a GPU, or no
    pooling) the chunk is scored by :func:`~skpatch.utils._blocks.blocked_addmm`,
    thresholded in place and pooled by :meth:`RegionPooling.dense
    <skpatch.embedding._pooling.RegionPooling.dense>`.

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
        self.n_atoms = weight.shape[1]
        self.fused = weight.device.type == "cpu" and not pooling.identity
        if self.fused:
            self.weight_and_bias = torch.cat([self.weight, self.bias[None]]).contiguous()
            self._plan_blocks()

    def _plan_blocks(self):
        """Rows per block and each block's columns of the pooling matrices (zero-padded)."""
        n_positions = self.pooling.n_positions
        target = max(1, min(256, _THRESHOLD_BLOCK_BYTES // (4 * self.n_atoms * self.n_signs)))
        n_blocks = -(-n_positions // target)
        self.block_rows = -(-n_positions // n_blocks)
        self.blocks = []
        for start in range(0, n_positions, self.block_rows):
            stop = min(start + self.block_rows, n_positions)
            matrices = []
            for matrix in self.pooling.matrices:
                columns = matrix.new_zeros((matrix.shape[0], self.block_rows))
                columns[:, : stop - start] = matrix[:, start:stop]
                matrices.append(columns)
            self.blocks.append((start, stop, matrices))

    @property
    def n_signs(self):
        return 1 if self.negative_offset is None else 2

    def region_sums(self, patches, n_images):
        """Cell sums ``(b, R, Q')`` of each sign's codes, from patch rows ``(b * P, d)``.

        On the fused path the rows carry a last column of ones, ``(b * P, d + 1)``
        (the bias is the last row of ``weight_and_bias``).
        """
        if not self.fused:
            return self._region_sums_dense(patches, n_images)
        return self._region_sums_fused(patches, n_images)

    def _region_sums_dense(self, patches, n_images):
        scores = blocked_addmm(self.bias, patches, self.weight, block_rows_for(patches.device))
        values = [scores]
        if self.negative_offset is not None:
            values.append(torch.sub(self.negative_offset, scores).clamp_min_(0.0))
        scores.clamp_min_(0.0)
        return [self.pooling.dense(v, n_images) for v in values]

    def _region_sums_fused(self, rows, n_images):
        pooling = self.pooling
        n_positions, n_rows = pooling.n_positions, self.block_rows
        half = self.n_atoms // 2 if pooling.flip_invariant else self.n_atoms
        # (atom columns, pooling matrix) per part: all atoms, or each half over its positions
        parts = [(None, 0)]
        if pooling.flip_invariant:
            parts = [(slice(0, half), 0), (slice(half, self.n_atoms), 1)]
        out = [rows.new_empty((n_images, pooling.n_regions, half))
               for _ in range(self.n_signs)]
        scores = rows.new_empty((n_rows, self.n_atoms))
        negative = rows.new_empty((n_rows, self.n_atoms)) if self.n_signs == 2 else None
        # the short last block of an image, copied into a full one (stale rows weighted 0)
        padded = rows.new_ones((n_rows, rows.shape[1]))
        # one accumulator per sign and part: the same operands on every image
        sums = [[rows.new_empty((pooling.n_regions, half)) for _ in parts]
                for _ in range(self.n_signs)]
        sizes = [stop - start for start, stop, _ in self.blocks]
        for image, rows_of_image in enumerate(rows.view(n_images, n_positions, -1)):
            for per_sign in sums:
                for total in per_sign:
                    total.zero_()
            for (start, stop, matrices), block in zip(self.blocks, rows_of_image.split(sizes)):
                if stop - start < n_rows:
                    padded[: stop - start] = block
                    block = padded
                torch.mm(block, self.weight_and_bias, out=scores)  # s - alpha
                values = [scores]
                if negative is not None:
                    torch.sub(self.negative_offset, scores, out=negative).clamp_min_(0.0)
                    values.append(negative)
                scores.clamp_min_(0.0)
                for block_values, per_sign in zip(values, sums):
                    for (atoms, which), total in zip(parts, per_sign):
                        part = block_values if atoms is None else block_values[:, atoms]
                        total.addmm_(matrices[which], part)
            for per_sign, pooled in zip(sums, out):
                pooled[image] = per_sign[0] if len(per_sign) == 1 else per_sign[0] + per_sign[1]
        return out
