"""Nearest-atom search for the patch dictionary: faiss and a GEMM + selection path.

faiss (k-means, exact L2 index, GPU search, small k) and the selection of
the k largest GEMM scores per row (:func:`numpy.partition` on CPU,
``torch.topk`` on CUDA; much faster than faiss's heap selection at large k)
are both imported inside the functions, so importing this module stays
cheap. Both paths return the same neighbour sets up to ties.
"""

import numpy as np

from ._blocks import blocked_search

__all__ = [
    "GPU_FAISS_INSTALL",
    "check_faiss_gpu",
    "import_faiss",
    "faiss_kmeans",
    "build_index",
    "index_search",
    "serialize_index",
    "deserialize_index",
    "select_mask",
    "indices_to_mask",
]


# faiss-cpu (a dependency of skpatch) and the GPU wheels all install the same
# `faiss` package: a GPU build replaces faiss-cpu, it cannot sit beside it
GPU_FAISS_INSTALL = "pip uninstall -y faiss-cpu && pip install faiss-gpu"


def import_faiss():
    """Return the faiss module or raise an ImportError saying what to install."""
    try:
        import faiss
    except ImportError as exc:  # pragma: no cover - faiss is a hard dependency here
        raise ImportError(
            "PatchDictionaryEmbedding needs faiss: pip install faiss-cpu (or, for "
            f"faiss on CUDA GPUs, a GPU build in its place: {GPU_FAISS_INSTALL})."
        ) from exc
    return faiss


def _faiss_has_gpu(faiss):
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def check_faiss_gpu(faiss, what):
    """Raise saying how to get a faiss that can run ``what`` on the GPUs, unless it can."""
    if not hasattr(faiss, "StandardGpuResources"):
        raise ImportError(
            f"{what} needs faiss with GPU support, but the installed faiss is a CPU "
            "build (faiss-cpu, the one skpatch installs). Replace it with a GPU "
            f"build: {GPU_FAISS_INSTALL} (or the faiss-gpu-cu12 / faiss-gpu-cu11 "
            "wheel matching your CUDA)."
        )
    if faiss.get_num_gpus() == 0:
        raise ValueError(
            f"{what} needs a GPU that faiss can use, but faiss (built with GPU "
            "support) sees none: its CUDA build may not match the driver, or "
            "CUDA_VISIBLE_DEVICES hides the GPUs."
        )


def faiss_kmeans(points, n_clusters, *, n_iter=25, seed=0, use_gpu=False):
    """Cluster ``points`` with faiss k-means and return the centroids.

    Parameters
    ----------
    points : ndarray of shape (m, d)
        Training points (converted to C-contiguous float32).
    n_clusters : int
        Number of centroids.
    n_iter : int, default=25
        Lloyd iterations.
    seed : int, default=0
        faiss seed (initialisation and its own subsampling).
    use_gpu : bool, default=False
        Run on the GPU when faiss was built with CUDA support.

    Returns
    -------
    centroids : ndarray of shape (n_clusters, d), float32
    """
    faiss = import_faiss()
    points = np.ascontiguousarray(points, dtype=np.float32)
    kmeans = faiss.Kmeans(
        points.shape[1],
        int(n_clusters),
        niter=int(n_iter),
        seed=int(seed),
        # use every sampled point: the caller already subsampled
        max_points_per_centroid=max(256, -(-points.shape[0] // int(n_clusters))),
        # small data is legitimate here (tests, digits): no "too few points" warning
        min_points_per_centroid=1,
        gpu=bool(use_gpu and _faiss_has_gpu(faiss)),
        verbose=False,
    )
    kmeans.train(points)
    return np.array(kmeans.centroids, dtype=np.float32, copy=True)


def _gpu_number(device):
    """The GPU of ``'cuda'`` (the current one, 0 in a one-GPU worker) or ``'cuda:N'``."""
    if device is not None and device.startswith("cuda:"):
        return int(device[5:])
    return 0


def build_index(atoms, *, use_gpu=False, device="cuda", all_gpus=False):
    """Exact L2 faiss index (``IndexFlatL2``) over ``atoms``, on the GPU if asked and possible.

    ``device`` (``'cuda'`` or ``'cuda:N'``) picks the GPU; ``all_gpus=True``
    spreads the atoms over every visible GPU instead (faiss's
    ``index_cpu_to_all_gpus`` with ``shard=True``: each GPU holds a part of
    one large dictionary and the results are merged exactly).

    Where faiss has no GPU support, ``use_gpu`` keeps the index on the CPU
    (the search still works), but ``use_gpu`` with ``all_gpus``, an explicit
    request for GPU indexes, raises an ImportError naming the install step
    (a ValueError when faiss has GPU support but sees no GPU).
    """
    faiss = import_faiss()
    if use_gpu and all_gpus:
        check_faiss_gpu(faiss, "index_gpus='all' (one faiss index sharded over every GPU)")
    atoms = np.ascontiguousarray(atoms, dtype=np.float32)
    index = faiss.IndexFlatL2(atoms.shape[1])
    index.add(atoms)
    if use_gpu and _faiss_has_gpu(faiss):
        if all_gpus and faiss.get_num_gpus() > 1:
            options = faiss.GpuMultipleClonerOptions()
            options.shard = True
            index = faiss.index_cpu_to_all_gpus(index, co=options)
        else:
            resources = faiss.StandardGpuResources()
            index = faiss.index_cpu_to_gpu(resources, _gpu_number(device), index)
    return index


def index_search(index, queries, k):
    """Squared distances and indices of the ``k`` nearest atoms, sorted by distance.

    The queries go to faiss in blocks of a fixed number of rows (the last one
    zero-padded), so a query's distances do not depend on how many queries
    were searched with it (see :mod:`skpatch.utils._blocks`).
    """
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    return blocked_search(lambda block: index.search(block, int(k)), queries)


def serialize_index(index):
    """Bytes of ``index`` (moved to the CPU first), loadable on a CPU-only machine."""
    faiss = import_faiss()
    if hasattr(faiss, "index_gpu_to_cpu") and (
        "Gpu" in type(index).__name__ or "Shards" in type(index).__name__
    ):
        index = faiss.index_gpu_to_cpu(index)
    return faiss.serialize_index(index).tobytes()


def deserialize_index(data):
    """Inverse of :func:`serialize_index`; returns a CPU index."""
    faiss = import_faiss()
    return faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8).copy())


def select_mask(scores, k):
    """0/1 float mask with exactly ``k`` ones per row, on the ``k`` largest scores.

    On CPU the ``k``-th largest score of every row comes from
    :func:`numpy.partition` (introselect, about 6x faster than ``torch.topk``
    at ``k = 256`` of 1024); rows where ties put more than ``k`` scores at
    that value are redone with :func:`numpy.argpartition`. On CUDA,
    ``torch.topk`` and a scatter.

    Parameters
    ----------
    scores : torch.Tensor of shape (m, q)
    k : int

    Returns
    -------
    mask : torch.Tensor of shape (m, q), float32, on the device of ``scores``
    """
    import torch

    n_cols = scores.shape[1]
    k = int(k)
    if k == n_cols:
        return torch.ones_like(scores)
    if scores.device.type != "cpu":
        indices = torch.topk(scores, k, dim=1, sorted=False).indices
        return torch.zeros_like(scores).scatter_(1, indices, 1.0)
    values = scores.numpy()
    threshold = np.partition(values, n_cols - k, axis=1)[:, n_cols - k, None]
    mask = values >= threshold
    tied = np.flatnonzero(mask.sum(axis=1) != k)
    if tied.size:
        top = np.argpartition(values[tied], n_cols - k, axis=1)[:, n_cols - k :]
        mask[tied] = False
        mask[tied[:, None], top] = True
    return torch.from_numpy(mask.astype(np.float32))


def indices_to_mask(indices, n_cols):
    """0/1 float mask ``(m, n_cols)`` with ones at ``indices`` ``(m, k)``."""
    import torch

    mask = torch.zeros(indices.shape[0], n_cols, device=indices.device)
    return mask.scatter_(1, indices, 1.0)
