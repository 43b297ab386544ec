"""Spatial pooling of the patch codes behind PatchDictionaryEmbedding.

The patch grid is cut into ``pooling x pooling`` regions; the codes of a
region's patches are summed (a 0/1 matrix product, or integer counts from
neighbour indices), divided by the region sizes and optionally raised to a
signed power. With ``flip_invariant`` the codes of the mirror atoms are summed
over the mirrored regions as well, which adds the code of the mirror image.
torch is imported by the caller (this module is only imported by the engine).
"""

import numpy as np
import torch

from . import _encodings

__all__ = ["pool_regions", "pool_matrix", "RegionPooling"]


def pool_regions(grid_shape, pooling):
    """Region index of every patch position and the size of every region.

    The ``gh x gw`` grid is cut into ``pooling x pooling`` blocks of near-equal
    size: row ``i`` goes to block row ``floor(i * pooling / gh)``.

    Parameters
    ----------
    grid_shape : tuple (gh, gw)
    pooling : int

    Returns
    -------
    region : ndarray of shape (gh * gw,), int64
        Row-major region number of each row-major position.
    counts : ndarray of shape (pooling * pooling,), int64
        Number of positions in each region.
    """
    gh, gw = grid_shape
    rows = np.arange(gh) * pooling // gh
    cols = np.arange(gw) * pooling // gw
    region = (rows[:, None] * pooling + cols[None, :]).ravel().astype(np.int64)
    counts = np.bincount(region, minlength=pooling * pooling).astype(np.int64)
    return region, counts


def pool_matrix(region, counts):
    """``(R, P)`` 0/1 matrix summing the positions of each region.

    Parameters
    ----------
    region : torch.Tensor of shape (P,), int64
    counts : torch.Tensor of shape (R,), float32

    Returns
    -------
    pool : torch.Tensor of shape (R, P), float32
    """
    n_positions = region.shape[0]
    pool = torch.zeros(counts.shape[0], n_positions, device=counts.device)
    pool[region, torch.arange(n_positions, device=counts.device)] = 1.0
    return pool


class RegionPooling:
    """Mean pooling of per-patch codes over the regions of the patch grid.

    Parameters
    ----------
    grid_shape : tuple (gh, gw)
        Patch positions per image.
    pooling : int
        Regions per side.
    flip_invariant : bool
        The second half of the atoms are the mirrors of the first half: their
        codes are summed over the mirrored regions and added to the first half.
    power : float
        Signed power applied to the pooled means.
    device : str
        torch device of the pooling matrices.
    """

    def __init__(self, grid_shape, pooling, *, flip_invariant, power, device):
        region, counts = pool_regions(grid_shape, pooling)
        self.flip_invariant = flip_invariant
        self.power = power
        self.region = torch.as_tensor(region, device=device)
        self.counts = torch.as_tensor(counts, dtype=torch.float32, device=device)
        self.matrix = pool_matrix(self.region, self.counts)
        self.region_mirror = self.matrix_mirror = None
        if flip_invariant:
            # each position summed again into the region of its mirror position
            gh, gw = grid_shape
            mirrored = region.reshape(gh, gw)[:, ::-1].ravel()
            self.region_mirror = torch.as_tensor(mirrored, device=device)
            self.matrix_mirror = pool_matrix(self.region_mirror, self.counts)

    @property
    def n_regions(self):
        return self.counts.shape[0]

    def dense(self, values, n_images, vectors=None):
        """Region sums ``(b, R, Q'[, r])`` of dense per-patch codes ``(b * P, Q)``.

        ``vectors`` is None for 'hard' and 'triangle' and, for 'full', the
        pair (reduced patches, reduced mirrored patches) ``(b * P, r)``. With
        ``flip_invariant`` the first half of the atoms is summed over the
        regions and the second half (their mirrors) over the mirrored regions:
        the code of the image plus the code of its mirror image.
        """

        def pool(values, matrix, which):
            if vectors is None:
                return _encodings.encode_hard(values, n_images, matrix)
            return _encodings.encode_full(vectors[which], values, n_images, matrix)

        if not self.flip_invariant:
            return pool(values, self.matrix, 0)
        half = values.shape[1] // 2
        return pool(values[:, :half], self.matrix, 0) + pool(
            values[:, half:], self.matrix_mirror, 1
        )

    def sparse(self, indices, n_images, n_atoms):
        """:meth:`dense` of 'hard' codes given as neighbour indices ``(b * P, k)``."""
        counts = _encodings.encode_hard_sparse(
            indices, n_images, self.region, self.n_regions, n_atoms
        )
        if not self.flip_invariant:
            return counts
        half = n_atoms // 2
        mirrored = _encodings.encode_hard_sparse(
            indices, n_images, self.region_mirror, self.n_regions, n_atoms
        )
        return counts[..., :half] + mirrored[..., half:]

    def finish(self, codes):
        """Stack the per-sign region sums, divide by the region sizes, apply ``power``."""
        codes = torch.stack(codes, dim=1)
        # mean pooling: region sums over region sizes, the same on every path
        sizes = self.counts.reshape((1, 1, -1) + (1,) * (codes.ndim - 3))
        codes = codes / (2 * sizes if self.flip_invariant else sizes)
        if self.power != 1:
            codes = codes.abs().pow_(self.power).mul_(codes.sign())
        return codes
