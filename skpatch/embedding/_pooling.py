"""Spatial pooling of the patch codes behind PatchDictionaryEmbedding.

Three layouts of the pooled grid, all described by which patch positions each
output cell averages (:func:`pooling_layout`):

- ``pooling=p`` (an int): the patch grid cut into ``p x p`` disjoint regions
  of near-equal size;
- ``pooling=(size, stride)``: overlapping ``size x size`` windows at
  ``stride``, ceil mode, as ``torch.nn.functional.avg_pool2d(kernel_size=size,
  stride=stride, ceil_mode=True)`` (no padding: a window running past the
  grid's end averages the positions it covers, torch's divisor there);
- ``pooling=None``: no pooling, one output cell per patch position.

The codes of a cell's positions are summed (a 0/1 matrix product, integer
counts from neighbour indices, or a plain reshape without pooling), divided by
the cell sizes and optionally raised to a signed power. With ``flip_invariant``
the codes of the mirror atoms are summed over the mirrored positions as well,
which adds the code of the mirror image. torch is imported by the caller (this
module is only imported by the engine), except by :func:`pooling_layout`.
"""

from typing import NamedTuple

import numpy as np

__all__ = ["pool_regions", "pooling_layout", "PoolingLayout", "RegionPooling"]


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


def window_starts(length, size, stride):
    """Start of each ceil-mode window along one axis (torch's rule, no padding).

    ``ceil((length - size) / stride) + 1`` windows, less the last one when it
    would start past the end (torch drops a window that starts in the padding).
    """
    n_out = -(-(length - size) // stride) + 1
    if (n_out - 1) * stride >= length:
        n_out -= 1
    return np.arange(n_out) * stride


class PoolingLayout(NamedTuple):
    """Which patch positions each pooled cell averages.

    ``positions[i]`` belongs to cell ``cells[i]`` (one entry per membership);
    ``counts`` the number of positions of each cell; ``shape`` the pooled
    grid ``(oh, ow)``; ``identity`` when every cell is one position, in order
    (no pooling).
    """

    shape: tuple
    positions: np.ndarray  # (M,), int64
    cells: np.ndarray  # (M,), int64
    counts: np.ndarray  # (oh * ow,), int64
    identity: bool


def pooling_layout(grid_shape, pooling):
    """The :class:`PoolingLayout` of ``pooling`` (int, ``(size, stride)`` or None) on the grid."""
    gh, gw = grid_shape
    if pooling is None:
        n_positions = gh * gw
        every = np.arange(n_positions, dtype=np.int64)
        return PoolingLayout((gh, gw), every, every.copy(), np.ones(n_positions, np.int64), True)
    if isinstance(pooling, tuple):
        size, stride = pooling
        per_axis = []
        for length in (gh, gw):
            starts = window_starts(length, size, stride)
            # (cell, position) pairs along this axis: window i covers [start_i, start_i + size)
            offsets = np.arange(size)
            members = starts[:, None] + offsets[None, :]
            cell, offset = np.nonzero(members < length)
            per_axis.append((len(starts), cell, members[cell, offset]))
        (oh, row_cell, row), (ow, col_cell, col) = per_axis
        cells = (row_cell[:, None] * ow + col_cell[None, :]).ravel()
        positions = (row[:, None] * gw + col[None, :]).ravel()
        counts = np.bincount(cells, minlength=oh * ow)
        return PoolingLayout((oh, ow), positions.astype(np.int64), cells.astype(np.int64),
                             counts.astype(np.int64), False)
    region, counts = pool_regions(grid_shape, pooling)
    return PoolingLayout((pooling, pooling), np.arange(gh * gw, dtype=np.int64), region,
                         counts, False)


def mirror_positions(grid_shape):
    """Row-major position of the left-right mirror of every row-major grid position."""
    gh, gw = grid_shape
    return np.arange(gh * gw, dtype=np.int64).reshape(gh, gw)[:, ::-1].ravel()


class RegionPooling:
    """Mean pooling of per-patch codes over the cells of a :class:`PoolingLayout`.

    Parameters
    ----------
    grid_shape : tuple (gh, gw)
        Patch positions per image.
    pooling : int, tuple (size, stride) or None
        See :func:`pooling_layout`.
    flip_invariant : bool
        The second half of the atoms are the mirrors of the first half: their
        codes are summed over the mirrored positions and added to the first half.
    power : float
        Signed power applied to the pooled means.
    device : str
        torch device of the pooling matrices.
    """

    def __init__(self, grid_shape, pooling, *, flip_invariant, power, device):
        import torch

        layout = pooling_layout(grid_shape, pooling)
        self.layout = layout
        self.identity = layout.identity
        self.flip_invariant = flip_invariant
        self.power = power
        self.n_positions = grid_shape[0] * grid_shape[1]
        self.counts = torch.as_tensor(layout.counts, dtype=torch.float32, device=device)
        self.positions = [torch.as_tensor(layout.positions, device=device)]
        self.cells = torch.as_tensor(layout.cells, device=device)
        if flip_invariant:
            # the mirror atoms' codes, summed over the mirrored positions of each cell
            mirror = mirror_positions(grid_shape)
            self.positions.append(torch.as_tensor(mirror[layout.positions], device=device))
        self.matrices = None
        if not self.identity:
            self.matrices = [self._matrix(positions) for positions in self.positions]

    def _matrix(self, positions):
        """``(R, P)`` 0/1 matrix summing the positions of each cell."""
        import torch

        matrix = torch.zeros(self.n_regions, self.n_positions, device=self.counts.device)
        matrix[self.cells, positions] = 1.0
        return matrix

    @property
    def n_regions(self):
        return self.counts.shape[0]

    @property
    def shape(self):
        """The pooled grid ``(oh, ow)``."""
        return self.layout.shape

    def _sum(self, values, which, vectors=None):
        """Cell sums ``(b, R, Q[, r])`` of ``values`` ``(b, P, Q)`` (and per-patch ``vectors``)."""
        from . import _encodings

        if self.identity:
            if which:  # the mirror atoms' codes, from the mirrored positions
                values = values[:, self.positions[1]]
                vectors = None if vectors is None else vectors[:, self.positions[1]]
            if vectors is None:
                return values
            return values[..., None] * vectors[:, :, None, :]
        if vectors is None:
            return _encodings.encode_hard(values, values.shape[0], self.matrices[which])
        return _encodings.encode_full(vectors, values, values.shape[0], self.matrices[which])

    def dense(self, values, n_images, vectors=None):
        """Cell sums ``(b, R, Q'[, r])`` of dense per-patch codes ``(b * P, Q)``.

        ``vectors`` is None for 'hard' and 'triangle' and, for 'full', the
        pair (patch vectors, mirrored patch vectors) ``(b * P, r)``. With
        ``flip_invariant`` the first half of the atoms is summed over the
        cells and the second half (their mirrors) over the mirrored positions:
        the code of the image plus the code of its mirror image.
        """
        values = values.reshape(n_images, self.n_positions, -1)
        if vectors is not None:
            vectors = [v.reshape(n_images, self.n_positions, -1) for v in vectors]
        if not self.flip_invariant:
            return self._sum(values, 0, None if vectors is None else vectors[0])
        half = values.shape[2] // 2
        first = self._sum(values[:, :, :half], 0, None if vectors is None else vectors[0])
        second = self._sum(values[:, :, half:], 1, None if vectors is None else vectors[1])
        return first + second

    def sparse(self, indices, n_images, n_atoms):
        """:meth:`dense` of 'hard' codes given as neighbour indices ``(b * P, k)``."""
        from . import _encodings

        counts = _encodings.encode_hard_sparse(
            indices, n_images, self.positions[0], self.cells, self.n_positions,
            self.n_regions, n_atoms,
        )
        if not self.flip_invariant:
            return counts
        half = n_atoms // 2
        mirrored = _encodings.encode_hard_sparse(
            indices, n_images, self.positions[1], self.cells, self.n_positions,
            self.n_regions, n_atoms,
        )
        return counts[..., :half] + mirrored[..., half:]

    def finish(self, codes):
        """Stack the per-sign cell sums, divide by the cell sizes, apply ``power``."""
        import torch

        codes = torch.stack(codes, dim=1)
        # mean pooling: cell sums over cell sizes, the same on every path
        if not (self.identity and not self.flip_invariant):
            sizes = self.counts.reshape((1, 1, -1) + (1,) * (codes.ndim - 3))
            codes = codes / (2 * sizes if self.flip_invariant else sizes)
        if self.power != 1:
            codes = codes.abs().pow_(self.power).mul_(codes.sign())
        return codes
