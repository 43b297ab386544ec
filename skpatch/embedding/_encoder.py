"""The engine of a fitted PatchDictionaryEmbedding: search, encode and pool on a device.

:class:`PatchEncoder` is built from the estimator's fitted numpy arrays on the
device present. It picks, once, how the nearest atoms are found:

- :class:`NearestAtomSearch`: ``k = 1`` with 'hard' codes on the GEMM path;
  GEMM and argmax block by block, in cache, giving indices;
- :class:`GemmSearch`: one GEMM of scores ``2 q.a - |a|^2`` and a per-row
  selection, giving a 0/1 mask (and squared distances for 'triangle');
- :class:`FaissSearch`: an exact faiss ``IndexFlatL2``, giving indices (and
  a mask and distances for 'triangle' and 'full').

'soft_threshold' searches nothing: it scores every atom in one GEMM,
thresholds and pools. On a CPU with numba, 'soft_threshold' and 'hard' codes
with ``k >= 2`` on the GEMM path run as
:class:`~skpatch.embedding._encodings.FusedCodes`: GEMM blocks turned into
codes and pooled by compiled kernels while in cache (the exact top-k by
counting passes instead of :func:`numpy.partition`).

The estimator caches the engine, drops it when pickled and rebuilds it on
first use after unpickling. torch is imported by the caller.
"""

import time
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import numpy as np
import torch
from sklearn.utils import gen_batches
from sklearn.utils._chunking import get_chunk_n_rows

from ..utils import _faiss, _kernels
from ..utils._blocks import block_rows_for, blocked_addmm
from ..utils._grid import _extract_view
from ..utils._parallel import effective_n_threads
from ..utils._thread_limits import limit_this_thread
from ..utils._validation import _to_float
from . import _encodings
from ._pooling import RegionPooling
from ._whitening import mirror_dims, normalize_patches

__all__ = ["PatchEncoder", "NearestAtomSearch", "GemmSearch", "FaissSearch", "select_mask"]

# for 2 <= k <= this, faiss's search beats GEMM + selection on CPU (measured:
# k = 1 is a GEMM + argmax, and from k = 8 the GEMM + partition path wins)
_FAISS_MAX_K = 4
# score buffer of the nearest-atom (k = 1) path: 1 MB (256 rows of 1024 atoms)
# measured best among 128 KB - 4 MB on a 2-core EPYC (512 KB L2 per core)
_NEAREST_BLOCK_BYTES = 1 << 20


class Neighbours(NamedTuple):
    """The k nearest atoms of a chunk's patches, for one sign.

    ``indices`` ``(m, k)`` where the search gives them and the codes need no
    more; otherwise ``mask`` ``(m, Q)`` (1 on the k nearest) and, for
    'triangle', ``sq_distances`` ``(m, Q)`` (read on the mask only).
    """

    indices: object = None
    mask: object = None
    sq_distances: object = None


class NearestAtomSearch:
    """Index ``(m, 1)`` of the nearest atom to each whitened ``sign * patch``.

    On CPU the scores ``2 s q.a - |a|^2`` of a block of rows are written into
    one reused buffer of about 1 MB and reduced by ``argmax`` while still in
    cache; the blocks are a fixed size (the last one zero-padded), so the
    result does not depend on the chunk size. On a GPU the blocks are large.
    """

    needs_whitened = False

    def __init__(self, score_weight, score_bias, negative_offset):
        # the negated patch scores -(2 q.a - |a|^2) + negative_offset (see GemmSearch)
        self.weights = {
            1.0: (score_weight.contiguous(), score_bias.contiguous()),
            -1.0: ((-score_weight).contiguous(), (negative_offset - score_bias).contiguous()),
        }

    def neighbours(self, patches, whitened, signs):
        for sign in signs:
            yield Neighbours(indices=self._nearest(patches, *self.weights[sign]))

    @staticmethod
    def _nearest(patches, weight, bias):
        n_rows, n_atoms = patches.shape[0], weight.shape[1]
        on_cpu = patches.device.type == "cpu"
        # on a GPU, one large block: small GEMMs would only add kernel launches
        block = (max(1, _NEAREST_BLOCK_BYTES // (4 * n_atoms)) if on_cpu
                 else block_rows_for(patches.device))
        buffer = torch.empty((block, n_atoms), device=patches.device)
        indices = torch.empty((n_rows,), dtype=torch.int64, device=patches.device)
        if on_cpu:  # numpy's SIMD argmax: ~9x torch.argmax over rows of 1024 on CPU
            scores_np, indices_np = buffer.numpy(), indices.numpy()
        padded = None
        for start in range(0, n_rows, block):
            stop = min(start + block, n_rows)
            rows = patches[start:stop]
            if stop - start < block:  # every GEMM has the same shape (see utils._blocks)
                padded = patches.new_zeros((block, patches.shape[1]))
                padded[: stop - start] = rows
                rows = padded
            torch.addmm(bias, rows, weight, out=buffer)
            if on_cpu:
                np.argmax(scores_np[: stop - start], axis=1, out=indices_np[start:stop])
            else:
                torch.argmax(buffer[: stop - start], dim=1, out=indices[start:stop])
        return indices[:, None]


class GemmSearch:
    """0/1 mask of the k largest scores ``2 q'.a - |a|^2`` of one GEMM per chunk.

    ``q = (x - mean) W`` is folded into the GEMM on the raw patches; the
    scores of the negated patch ``q' = -q + shift`` are derived from those of
    ``q`` in place, ``-(2 q.a - |a|^2) + negative_offset``, so both signs cost
    one GEMM (``shift = 0``, ``offset = -2 |a|^2`` for the centred
    convention; ``shift = -2 mean W``, ``offset = 2 bias`` for the raw one).
    With ``distances`` the scores are turned, in place, into the squared
    distances ``|q' - a|^2`` (needs the whitened rows).
    """

    def __init__(self, score_weight, score_bias, negative_offset, negative_shift, k, *,
                 distances):
        self.score_weight, self.score_bias = score_weight, score_bias
        self.negative_offset, self.negative_shift = negative_offset, negative_shift
        self.k, self.distances = k, distances
        self.needs_whitened = distances

    def neighbours(self, patches, whitened, signs):
        positive = blocked_addmm(self.score_bias, patches, self.score_weight,
                                 block_rows_for(patches.device))
        for sign in signs:
            if sign > 0:
                scores = positive if len(signs) == 1 else positive.clone()
            else:
                scores = positive.neg_().add_(self.negative_offset)
            mask = select_mask(scores, self.k)
            if not self.distances:
                yield Neighbours(mask=mask)
                continue
            rows = whitened if sign > 0 else negated(whitened, self.negative_shift)
            scores.neg_().add_((rows**2).sum(dim=1, keepdim=True))  # in place: |q' - a|^2
            yield Neighbours(mask=mask, sq_distances=scores)


def negated(whitened, shift):
    """The whitened negated patches: ``-q`` (centred) or ``-q + shift`` (raw, ``shift = -2 mean W``)."""
    return -whitened if shift is None else shift - whitened


class FaissSearch:
    """faiss's exact search of the whitened ``sign * patch`` rows."""

    needs_whitened = True

    def __init__(self, index, n_atoms, k, negative_shift, *, dense):
        self.index, self.n_atoms, self.k, self.dense = index, n_atoms, k, dense
        self.negative_shift = negative_shift

    def neighbours(self, patches, whitened, signs):
        for sign in signs:
            rows = whitened if sign > 0 else negated(whitened, self.negative_shift)
            queries = rows.cpu().numpy()
            sq_dist, idx = _faiss.index_search(self.index, queries, self.k)
            indices = torch.from_numpy(idx).to(whitened.device)
            if not self.dense:
                yield Neighbours(indices=indices)
                continue
            mask = _faiss.indices_to_mask(indices, self.n_atoms)
            sq_distances = torch.zeros_like(mask).scatter_(
                1, indices, torch.from_numpy(sq_dist).to(whitened.device)
            )
            yield Neighbours(mask=mask, sq_distances=sq_distances)


def _select_into(values, k, out):
    """Write the 0/1 mask of the ``k`` largest of each row of ``values`` into float32 ``out``."""
    n_cols = values.shape[1]
    threshold = np.partition(values, n_cols - k, axis=1)[:, n_cols - k, None]
    mask = np.greater_equal(values, threshold)
    tied = np.flatnonzero(_row_counts(mask) != k)
    if tied.size:  # more than k scores at the threshold: k of them, exactly
        top = np.argpartition(values[tied], n_cols - k, axis=1)[:, n_cols - k :]
        mask[tied] = False
        mask[tied[:, None], top] = True
    np.copyto(out, mask, casting="unsafe")


def select_mask(scores, k):
    """0/1 float mask with exactly ``k`` ones per row, on the ``k`` largest scores.

    :func:`skpatch.utils._faiss.select_mask` with a cheaper CPU tail: the
    k-th largest score of each row from :func:`numpy.partition`, one
    comparison into a boolean mask, and the ones of each row counted 8 bytes
    at a time (the mask viewed as uint64 words, whose byte lanes cannot
    overflow for rows of at most 2040 columns) instead of a boolean sum;
    rows where ties put more than ``k`` scores at the threshold are redone
    with :func:`numpy.argpartition`. The same masks as ``_faiss.select_mask``.
    """
    n_cols = scores.shape[1]
    k = int(k)
    if k == n_cols or scores.device.type != "cpu":
        return _faiss.select_mask(scores, k)
    mask = np.empty(scores.shape, dtype=np.float32)
    _select_into(scores.numpy(), k, mask)
    return torch.from_numpy(mask)


def _row_counts(mask):
    """Number of True entries of each row of a C-contiguous boolean matrix."""
    n_rows, n_cols = mask.shape
    if n_cols % 8 or n_cols > 8 * 255 or not mask.flags.c_contiguous:
        return np.count_nonzero(mask, axis=1)
    # each byte lane of the word sums holds at most n_cols / 8 <= 255 ones
    lanes = mask.view(np.uint64).sum(axis=1, dtype=np.uint64)
    return lanes.view(np.uint8).reshape(n_rows, 8).sum(axis=1, dtype=np.int64)


def search_backend(knn_backend, device, n_neighbors):
    """'faiss' or 'gemm': the setting, or for 'auto' faiss for ``2 <= k <= 4`` on CPU."""
    if knn_backend != "auto":
        return knn_backend
    if device == "cpu" and 1 < n_neighbors <= _FAISS_MAX_K:
        return "faiss"
    return "gemm"


def _rows_with_ones(view, patch_dim, patch_normalize):
    """Float32 patch rows ``(m, d + 1)`` of a patch view, the last column ones (a folded bias)."""
    n_rows = int(np.prod(view.shape[:3]))
    rows = np.empty((n_rows, patch_dim + 1), dtype=np.float32)
    rows[:, patch_dim] = 1.0
    target = rows[:, :patch_dim]
    if patch_normalize:
        patches = np.ascontiguousarray(view, dtype=np.float32).reshape(n_rows, patch_dim)
        target[...] = normalize_patches(patches, True)
        return rows
    # the rows' first d columns seen as (b, gh, gw, ph, pw, C): one copy, no temporary
    split = target.reshape(view.shape)
    if np.shares_memory(split, rows):
        np.copyto(split, view, casting="same_kind")
    else:  # pragma: no cover - numpy could not split the axis without a copy
        target[...] = np.ascontiguousarray(view, dtype=np.float32).reshape(n_rows, patch_dim)
    return rows


class PatchEncoder:
    """Pooled codes of images under a fitted dictionary, on one torch device.

    Parameters
    ----------
    mean, whitening, atoms, full_projection : ndarray
        The estimator's ``mean_``, ``whitening_``, ``atoms_`` and the
        projection of whitened rows onto their leading PCA components.
    mirror_projection : ndarray or None
        With ``flip_invariant`` and 'full': the projection of the mirrored
        whitened rows.
    settings : dict
        ``patch_size``, ``stride``, ``grid_shape``, ``pooling`` (int, tuple
        ``(size, stride)`` or None), ``encoding``, ``n_neighbors``, ``alpha``
        (the soft threshold),
        ``sign_convention`` (None: one sign; ``'centred'``: the negated
        whitened patch ``-q``; ``'raw'``: the whitened negated input
        ``(-x - mean) W``), ``full_input`` (``'whitened'`` or ``'raw'``),
        ``flip_invariant``, ``patch_normalize``, ``power``, ``knn_backend``.
    device : str
        The torch device to run on (present on this machine).
    index : faiss.Index or None
        Reused by the faiss search when given, else built from ``atoms``.
    """

    def __init__(self, *, mean, whitening, atoms, full_projection, mirror_projection,
                 settings, device, index=None):
        self.device = device
        self.patch_size, self.stride = settings["patch_size"], settings["stride"]
        self.encoding, self.k = settings["encoding"], settings["n_neighbors"]
        self.alpha = settings.get("alpha", 0.25)
        self.sign_convention = settings["sign_convention"]
        self.index_gpus = settings.get("index_gpus", "device")
        self.signs = (1.0,) if self.sign_convention is None else (1.0, -1.0)
        self.full_input = settings.get("full_input", "whitened")
        self.patch_normalize = settings["patch_normalize"]
        self.n_atoms, self.n_positions = atoms.shape[0], int(np.prod(settings["grid_shape"]))
        self.pooling = RegionPooling(
            settings["grid_shape"], settings["pooling"],
            flip_invariant=settings["flip_invariant"], power=settings["power"], device=device,
        )
        self.mean = torch.as_tensor(mean, device=device)
        self.whitening = torch.as_tensor(whitening, device=device)
        self.patch_dim = atoms.shape[1]
        # raw sign convention: the whitened -x is (-x - mean) W = -q - 2 mean W
        self.negative_shift = None
        if self.sign_convention == "raw":
            self.negative_shift = -2.0 * (self.mean @ self.whitening)
        if self.full_input == "raw":
            # the raw patch itself, and its mirror image (a permutation of its entries)
            channels = self.patch_dim // (self.patch_size[0] * self.patch_size[1])
            self.raw_mirror = torch.as_tensor(mirror_dims(self.patch_size, channels), device=device)
            self.projections = None
        else:
            self.projections = [torch.as_tensor(full_projection, device=device)]
            if mirror_projection is not None:
                self.projections.append(torch.as_tensor(mirror_projection, device=device))
        self.backend = search_backend(settings["knn_backend"], device, self.k)
        if self.encoding == "soft_threshold":  # no search: the GEMM path's threads
            self.backend = "gemm"
        self.search = self._make_search(atoms, index)

    @property
    def per_atom(self):
        """Values per atom slot: 1, or for 'full' ``r`` (whitened) or the patch dimension (raw)."""
        if self.encoding != "full":
            return 1
        return self.patch_dim if self.projections is None else self.projections[0].shape[1]

    def _make_search(self, atoms, index):
        if self.encoding == "soft_threshold":
            return self._soft_threshold(atoms)
        hard = self.encoding == "hard"
        if self.backend == "faiss":
            if index is None:
                index = _faiss.build_index(
                    atoms, use_gpu=self.device.startswith("cuda"), device=self.device,
                    all_gpus=self.index_gpus == "all",
                )
            return FaissSearch(index, self.n_atoms, self.k, self.negative_shift, dense=not hard)
        atoms = torch.as_tensor(atoms, device=self.device)
        atom_sq_norms = (atoms**2).sum(dim=1)
        # 2 q.a - |a|^2 with q = (x - mean) W: one GEMM on the raw patches
        score_weight = 2.0 * self.whitening @ atoms.T
        score_bias = -(self.mean @ score_weight) - atom_sq_norms
        # scores of the negated patch: -(scores of q) + offset
        if self.negative_shift is None:
            negative_offset = -2.0 * atom_sq_norms  # 2 (-q).a - |a|^2
        else:
            negative_offset = 2.0 * score_bias  # 2 (-x - mean) W a - |a|^2
        if self.k == 1 and hard:
            return NearestAtomSearch(score_weight, score_bias, negative_offset)
        if hard and self.device == "cpu" and self.k < self.n_atoms and _kernels.available():
            # select and count in compiled kernels, block by block: no mask, no partition
            return _encodings.FusedCodes(
                score_weight, score_bias,
                None if self.sign_convention is None else negative_offset, self.pooling,
                kind="top_k", k=self.k,
            )
        return GemmSearch(score_weight, score_bias, negative_offset, self.negative_shift,
                          self.k, distances=self.encoding == "triangle")

    def _soft_threshold(self, atoms):
        """The soft threshold with ``s = q . a / |a|`` folded into one GEMM on the raw patches."""
        atoms = torch.as_tensor(atoms, device=self.device, dtype=torch.float64)
        norms = torch.linalg.vector_norm(atoms, dim=1)
        # a zero atom projects every patch to 0 (no division by zero)
        unit = atoms / torch.where(norms > 0, norms, torch.ones_like(norms))[:, None]
        weight = self.whitening.double() @ unit.T
        bias = -(self.mean.double() @ weight)  # s = x . weight + bias
        negative_offset = None
        if self.sign_convention == "centred":  # max(0, -s - alpha) = max(0, -2 alpha - (s - alpha))
            negative_offset = torch.full_like(bias, -2.0 * self.alpha)
        elif self.sign_convention == "raw":  # (-x - mean) W . a/|a| = -s + 2 bias
            negative_offset = 2.0 * bias - 2.0 * self.alpha
        as32 = lambda tensor: None if tensor is None else tensor.float()  # noqa: E731
        if self.device == "cpu" and _kernels.available():
            return _encodings.FusedCodes(as32(weight), as32(bias - self.alpha),
                                         as32(negative_offset), self.pooling,
                                         kind="soft_threshold")
        return _encodings.SoftThreshold(as32(weight), as32(bias - self.alpha),
                                        as32(negative_offset), self.pooling)

    @property
    def index(self):
        """The faiss index of the faiss search, else None."""
        return getattr(self.search, "index", None)

    # ------------------------------------------------------------ one chunk
    def encode(self, images):
        """Pooled codes ``(b, n_signs, R, Q[, r])`` of a chunk of float images ``(b, H, W, C)``."""
        view = _extract_view(images, self.patch_size, self.stride, ((0, 0), (0, 0)))
        n_images = images.shape[0]
        if isinstance(self.search, _encodings.FusedCodes):
            rows = _rows_with_ones(view, self.patch_dim, self.patch_normalize)
            return self.pooling.finish(self.search.region_sums(torch.from_numpy(rows), n_images))
        patches = np.ascontiguousarray(view, dtype=np.float32).reshape(-1, self.patch_dim)
        patches = torch.from_numpy(normalize_patches(patches, self.patch_normalize))
        patches = patches.to(self.device)
        if self.encoding == "soft_threshold":
            return self.pooling.finish(self.search.region_sums(patches, n_images))
        whitened = None
        if self.search.needs_whitened or self.encoding == "triangle" or (
            self.encoding == "full" and self.projections is not None
        ):
            whitened = blocked_addmm(None, patches - self.mean, self.whitening,
                                     block_rows_for(patches.device))
        codes = [
            self._pool(found, sign, patches, whitened, n_images)
            for sign, found in zip(self.signs, self.search.neighbours(patches, whitened, self.signs))
        ]
        return self.pooling.finish(codes)

    def _pool(self, found, sign, patches, whitened, n_images):
        """Region sums of one sign's codes, from the neighbours the search found."""
        if found.indices is not None:  # 'hard' only: counts, no dense mask
            return self.pooling.sparse(found.indices, n_images, self.n_atoms)
        if self.encoding == "triangle":
            values = _encodings.triangle_values(found.sq_distances, found.mask, self.k)
            return self.pooling.dense(values, n_images)
        if self.encoding == "full":
            return self.pooling.dense(found.mask, n_images, self._full_vectors(patches, sign, whitened))
        return self.pooling.dense(found.mask, n_images)

    def _full_vectors(self, patches, sign, whitened):
        """The vectors 'full' scatters (and their mirror images with ``flip_invariant``).

        'whitened': the leading components of the encoded whitened patch (``q``
        or its negation); 'raw': the encoded patch itself, ``x`` or for the
        negated code ``-x`` ('raw' signs) or ``2 mean - x`` ('centred' signs,
        whose whitened row is ``-q``).
        """
        if self.projections is not None:
            rows = whitened if sign > 0 else negated(whitened, self.negative_shift)
            block = block_rows_for(rows.device)
            return [blocked_addmm(None, rows, projection, block) for projection in self.projections]
        rows = patches
        if sign < 0:
            rows = -patches if self.sign_convention == "raw" else 2.0 * self.mean - patches
        vectors = [rows]
        if self.pooling.flip_invariant:
            vectors.append(rows[:, self.raw_mirror])
        return vectors

    # ----------------------------------------------------------- all images
    def chunk_size(self, n_images, batch_size):
        """Images per chunk: ``batch_size``, or for 'auto' a bound on each chunk's buffers."""
        if batch_size != "auto":
            return int(batch_size)
        if isinstance(self.search, FaissSearch) and self.encoding == "hard":
            # no dense (patches x atoms) buffer: faiss works best on large query blocks
            row_bytes = self.n_positions * (self.patch_dim + 3 * self.k) * 4
            working_memory = 64
        elif isinstance(self.search, _encodings.FusedCodes):
            # no (patches x atoms) buffer beyond one ~1 MB block: the patches dominate
            row_bytes = self.n_positions * self.patch_dim * 4 * 2
            working_memory = 8
        elif self.k == 1 and self.encoding == "hard":
            # no dense buffer either (NearestAtomSearch): the patches, their
            # codes' slots and indices; large chunks keep the Python overhead low
            row_bytes = self.n_positions * (self.patch_dim * 4 + 4 * 8)
            working_memory = 32
        else:
            # keep each (patches x atoms) float32 buffer near 8 MB: below glibc's
            # mmap threshold, so buffers are reused instead of page-faulted anew
            row_bytes = self.n_positions * self.n_atoms * 4 * self.per_atom
            working_memory = 8
        # the pooled codes of an image (and their integer counts, or the
        # products 'full' sums) also live in the chunk: per-location maps are large
        n_pooled = len(self.signs) * self.pooling.n_regions * self.n_atoms * self.per_atom
        row_bytes = max(row_bytes, 3 * 4 * n_pooled)
        # one image per chunk when an image alone exceeds the budget (no warning)
        working_memory = max(working_memory, -(-row_bytes // 2**20))
        return get_chunk_n_rows(
            row_bytes=row_bytes, max_n_rows=n_images, working_memory=working_memory
        )

    def transform(self, images, *, batch_size="auto", n_jobs=None, log=None):
        """Features ``(n, n_features)`` float32 of images of any dtype, chunk by chunk.

        Each chunk is scaled to float (uint8 to [0, 1]) on its own, so the
        working memory does not grow with ``n``. On CPU the GEMM paths encode
        ``n_jobs`` chunks at a time, one per worker thread, each running torch
        single-threaded; the faiss path runs one worker on ``n_jobs`` threads
        (faiss splits the queries). The limits are set in the workers only.
        """
        n_images = images.shape[0]
        batches = list(gen_batches(n_images, self.chunk_size(n_images, batch_size)))
        out = np.empty((n_images, self.n_features), dtype=np.float32)
        start = time.perf_counter()

        def encode(batch):
            with torch.inference_mode():
                codes = self.encode(_to_float(images[batch]))
                out[batch] = codes.reshape(codes.shape[0], -1).cpu().numpy()
            return batch

        if self.device != "cpu":
            for batch in map(encode, batches):
                self._report(log, batch, n_images, start)
            return out
        if self.backend == "faiss":
            n_workers, per_worker = 1, effective_n_threads(n_jobs)
        else:
            n_workers, per_worker = effective_n_threads(n_jobs, len(batches)), 1
        # torch's idle OpenMP threads spin against any other thread, and the
        # selection (numpy) is single-threaded: one chunk per single-threaded worker
        with ThreadPoolExecutor(n_workers, thread_name_prefix="skpatch",
                                initializer=limit_this_thread,
                                initargs=(per_worker,)) as pool:
            for batch in pool.map(encode, batches):
                self._report(log, batch, n_images, start)
        return out

    @property
    def n_features(self):
        """``n_signs * R * Q`` (``Q / 2`` with ``flip_invariant``), times ``r`` for 'full'."""
        n_signs = len(self.signs)
        n_kept = self.n_atoms // 2 if self.pooling.flip_invariant else self.n_atoms
        return n_signs * self.pooling.n_regions * n_kept * self.per_atom

    @staticmethod
    def _report(log, batch, n_images, start):
        if log is not None:
            log(f"encoded {batch.stop}/{n_images} images", start)
