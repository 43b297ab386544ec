"""The patch encodings behind PatchDictionaryEmbedding (region sums of the codes).

Pure torch functions on one chunk of images. Every function works image by
image in the sense that no value depends on another image of the chunk; with
the fixed-shape GEMM blocks of the search (``utils/_blocks.py``) this makes
``transform`` identical whatever the chunk size. torch is
imported by the caller (this module is only imported by the engine, ``_encoder.py``;
the regions themselves are in ``_pooling.py``).
"""

import torch

__all__ = [
    "encode_hard",
    "encode_hard_sparse",
    "encode_triangle",
    "encode_full",
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
