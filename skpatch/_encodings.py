"""The patch encodings and the spatial pooling behind PatchDictionaryEmbedding.

Pure torch functions on one chunk of images. Every function works image by
image in the sense that no value depends on another image of the chunk, which
is what makes ``transform`` identical whatever the chunk size. torch is
imported by the caller (this module is only imported from ``embedding.py``).
"""

import numpy as np
import torch

__all__ = [
    "pool_regions",
    "encode_hard",
    "encode_triangle",
    "encode_full",
]


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


def _slot_index(indices, n_images, n_positions, region, n_regions, n_atoms):
    """Flat ``(image, region, atom)`` slot of every (patch, neighbour) pair."""
    device = indices.device
    image = torch.arange(n_images, device=device).repeat_interleave(n_positions)
    patch_region = region.repeat(n_images)
    base = (image * n_regions + patch_region) * n_atoms
    return (base[:, None] + indices).reshape(-1)


def encode_hard(indices, n_images, region, counts, n_atoms):
    """Mean-pooled Phi_hard: the fraction of a region's patches having each atom among their k nearest.

    Parameters
    ----------
    indices : torch.Tensor of shape (n_images * P, k), int64
        Nearest atoms of every patch, image-major then row-major positions.
    n_images : int
    region : torch.Tensor of shape (P,), int64
    counts : torch.Tensor of shape (R,), float32
    n_atoms : int

    Returns
    -------
    pooled : torch.Tensor of shape (n_images, R, n_atoms), float32
    """
    n_regions = counts.shape[0]
    n_positions = region.shape[0]
    slots = _slot_index(indices, n_images, n_positions, region, n_regions, n_atoms)
    # integer counts: exact and independent of summation order
    pooled = torch.bincount(slots, minlength=n_images * n_regions * n_atoms)
    pooled = pooled.to(torch.float32).reshape(n_images, n_regions, n_atoms)
    return pooled / counts[None, :, None]


def triangle_values(sq_distances):
    """Coates et al.'s triangle activation ``max(0, mean_j d_j - d_k)`` over the given atoms.

    Parameters
    ----------
    sq_distances : torch.Tensor of shape (m, k)
        Squared distances of each patch to its k nearest atoms (or to all).

    Returns
    -------
    values : torch.Tensor of shape (m, k)
    """
    distances = sq_distances.clamp_min(0.0).sqrt_()
    mean = distances.mean(dim=1, keepdim=True)
    return (mean - distances).clamp_min_(0.0)


def encode_triangle(sq_distances, indices, n_images, region, counts, n_atoms):
    """Mean-pooled triangle encoding over the k nearest atoms (all atoms when ``indices`` is None).

    Parameters
    ----------
    sq_distances : torch.Tensor of shape (n_images * P, k)
        Squared distances to the atoms listed in ``indices`` (or to every atom).
    indices : torch.Tensor of shape (n_images * P, k) or None
        Atom of each column; None means column j is atom j (``k = n_atoms``).
    n_images : int
    region : torch.Tensor of shape (P,), int64
    counts : torch.Tensor of shape (R,), float32
    n_atoms : int

    Returns
    -------
    pooled : torch.Tensor of shape (n_images, R, n_atoms), float32
    """
    values = triangle_values(sq_distances)
    n_regions = counts.shape[0]
    n_positions = region.shape[0]
    if indices is None:
        # dense case: pool with a (R, P) averaging matrix, one GEMM per image
        pool = torch.zeros(n_regions, n_positions, device=values.device)
        pool[region, torch.arange(n_positions, device=values.device)] = 1.0
        pool /= counts[:, None]
        return torch.matmul(pool, values.reshape(n_images, n_positions, n_atoms))
    slots = _slot_index(indices, n_images, n_positions, region, n_regions, n_atoms)
    pooled = torch.zeros(n_images * n_regions * n_atoms, device=values.device)
    pooled.index_add_(0, slots, values.reshape(-1))
    pooled = pooled.reshape(n_images, n_regions, n_atoms)
    return pooled / counts[None, :, None]


def encode_full(reduced, indices, n_images, region, counts, n_atoms):
    """Mean-pooled Phi_full: each patch's reduced vector added to the slots of its k nearest atoms.

    Parameters
    ----------
    reduced : torch.Tensor of shape (n_images * P, r)
        The patch in the reduced (leading whitened components) space.
    indices : torch.Tensor of shape (n_images * P, k), int64
    n_images : int
    region : torch.Tensor of shape (P,), int64
    counts : torch.Tensor of shape (R,), float32
    n_atoms : int

    Returns
    -------
    pooled : torch.Tensor of shape (n_images, R, n_atoms, r), float32
    """
    n_regions = counts.shape[0]
    n_positions = region.shape[0]
    k = indices.shape[1]
    n_components = reduced.shape[1]
    slots = _slot_index(indices, n_images, n_positions, region, n_regions, n_atoms)
    source = reduced[:, None, :].expand(-1, k, -1).reshape(-1, n_components)
    pooled = torch.zeros(
        n_images * n_regions * n_atoms, n_components, device=reduced.device
    )
    pooled.index_add_(0, slots, source)
    pooled = pooled.reshape(n_images, n_regions, n_atoms, n_components)
    return pooled / counts[None, :, None, None]
