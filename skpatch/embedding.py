"""PatchDictionaryEmbedding: whitened patch dictionary with k-NN encodings.

The unsupervised model of Coates et al. (2011), Thiry et al. (2021) and
Brutzkus et al. (2022): whiten the patches, build a dictionary of atoms, encode
each patch by its nearest atoms, pool the codes over a spatial grid. A linear
classifier on top gives the published patch-based CIFAR-10 models.
"""

import sys
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from numbers import Integral, Real

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin, _fit_context
from sklearn.utils import check_random_state, gen_batches
from sklearn.utils._chunking import get_chunk_n_rows
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import _check_feature_names_in, check_is_fitted

from .extraction import _extract_view
from .utils._device import check_device_param
from .utils._validation import check_size_pair, validate_images

__all__ = ["PatchDictionaryEmbedding"]

# Coates et al.'s brightness/contrast regularizer 10 on 0-255 pixels, on [0, 1]
_CONTRAST_REG = 10.0 / 255.0**2
# for 2 <= k <= this, faiss's search beats GEMM + selection on CPU (measured:
# k = 1 is a GEMM + argmax, and from k = 8 the GEMM + partition path wins)
_FAISS_MAX_K = 4
# score buffer of the nearest-atom (k = 1) path: 1 MB (256 rows of 1024 atoms)
# measured best among 128 KB - 4 MB on a 2-core EPYC (512 KB L2 per core)
_NEAREST_BLOCK_BYTES = 1 << 20


_TORCH_THREADS_LOCK = threading.Lock()
_TORCH_THREADS = {"active": 0, "caller": None}


@contextmanager
def _single_threaded_torch():
    """torch on one intra-op thread while any transform runs chunk threads.

    The caller's ``torch.get_num_threads()`` is saved by the first of
    concurrent transforms (say, from a threaded grid search) and restored by
    the last, so overlapping calls cannot leave torch on one thread.
    """
    import torch

    with _TORCH_THREADS_LOCK:
        if _TORCH_THREADS["active"] == 0:
            _TORCH_THREADS["caller"] = torch.get_num_threads()
            torch.set_num_threads(1)
        _TORCH_THREADS["active"] += 1
    try:
        yield
    finally:
        with _TORCH_THREADS_LOCK:
            _TORCH_THREADS["active"] -= 1
            if _TORCH_THREADS["active"] == 0:
                torch.set_num_threads(_TORCH_THREADS["caller"])


class PatchDictionaryEmbedding(TransformerMixin, BaseEstimator):
    """Embed images by the nearest dictionary atoms of their whitened patches.

    ``fit`` samples patches without replacement, fits the whitening, builds a
    dictionary of ``n_atoms`` atoms in the whitened space and an exact L2
    faiss index. ``transform`` finds the ``k`` nearest atoms of every patch
    (stride ``stride``), encodes each patch, averages the codes over a
    ``pooling x pooling`` grid of regions and flattens, one row per image.

    Parameters
    ----------
    patch_size : int or tuple (ph, pw), default=6
        Patch height and width.
    stride : int or tuple (sh, sw), default=1
        Step between encoded patches (fitting samples from the same grid).
    n_atoms : int, default=1024
        Dictionary size ``Q``.
    dictionary : {'kmeans', 'data', 'gaussian'}, default='kmeans'
        ``'kmeans'``: faiss k-means centroids of the whitened sampled patches
        (seeded); ``'data'``: whitened sampled patches drawn without
        replacement (Thiry et al.); ``'gaussian'``: standard normal atoms,
        which match the whitened patches' identity covariance.
    n_neighbors : int or float, default=0.25
        Number ``k`` of nearest atoms per patch; a float in (0, 1] is a
        fraction of ``n_atoms`` (rounded, at least 1).
    encoding : {'hard', 'full', 'triangle'}, default='hard'
        ``'hard'``: 1 for each of the k nearest atoms, 0 elsewhere
        (Phi_hard); ``'full'``: the patch's ``n_full_components`` leading
        whitened components written into the slots of its k nearest atoms
        (Phi_full); ``'triangle'``: ``max(0, mean_j d_j - d_a)`` for each of
        the k nearest atoms ``a`` with ``d`` the Euclidean distances to these
        k atoms (Coates et al. with ``k = n_atoms``).
    both_signs : bool, default=False
        Also encode the negated whitened patch and concatenate both codes
        (Thiry et al.). Costs no second GEMM.
    whiten : {'zca', 'pca'} or None, default='zca'
        ``'zca'``: ``W = U diag(1 / sqrt(lambda + whiten_reg)) U^T``;
        ``'pca'``: ``W = U diag(1 / sqrt(lambda + whiten_reg))`` (rotated
        coordinates: same distances, hence the same neighbours as ZCA);
        None: only the mean patch is subtracted.
    whiten_reg : float, default=1e-3
        Added to the covariance eigenvalues (Thiry et al.'s ``eps``), in the
        units of the pixel values squared (uint8 images are scaled to [0, 1]).
        0 needs a full-rank patch covariance: ``fit`` raises a ValueError
        when an eigenvalue is zero to float precision (constant images,
        ``patch_normalize=True``).
    n_full_components : int, default=8
        Leading whitened (PCA) components kept per patch by ``'full'``.
    patch_normalize : bool, default=False
        Subtract each patch's mean and divide by ``sqrt(var + 10 / 255**2)``
        before whitening (Coates et al.'s normalization for [0, 1] pixels).
    pooling : int, default=2
        Average the codes over ``pooling x pooling`` regions of the patch grid
        (1 = global average). Mean rather than sum: a sum is the mean times
        the region size, which a following ``StandardScaler`` removes, but the
        mean keeps features comparable when regions differ in size.
    power : float, default=1.0
        Raise the pooled features to this power, keeping their sign (0.5 is
        the signed square root, the "power normalization" of Perronnin et
        al. for pooled histograms). 1 leaves them as they are.
    flip_invariant : bool, default=False
        Make the features of an image and of its horizontal mirror equal.
        The whitening is fitted on the sampled patches and their mirrors, the
        dictionary is ``n_atoms / 2`` atoms and their mirror images, and each
        pooled code is added to the code of the mirrored image, which is a
        permutation of the same codes (no second encoding). A linear model on
        these features treats an image and its mirror alike, as training on
        flip-augmented data and averaging both flips at prediction would. One
        feature is kept per (atom, mirror atom) pair, so the output has half
        the features. ``n_atoms`` must be even.
    n_patches_fit : int, default=262144
        Number of patches sampled (without replacement) to fit the whitening
        and the dictionary; all patches when the images have fewer.
    knn_backend : {'auto', 'faiss', 'gemm'}, default='auto'
        ``'faiss'``: faiss ``IndexFlatL2.search``; ``'gemm'``: one torch GEMM
        and a per-row selection (:func:`numpy.partition` on CPU,
        ``torch.topk`` on CUDA; an argmax for ``k = 1``). ``'auto'`` uses
        faiss for ``2 <= k <= 4`` on CPU and the GEMM path otherwise (much
        faster at large k, where faiss's heap selection dominates). Same
        neighbour sets up to ties.
    batch_size : int or 'auto', default='auto'
        Images encoded per chunk; ``'auto'`` bounds each chunk's buffers
        (about 8 MB of scores, or 32-64 MB of patches where no dense score
        buffer is needed). On CPU with the GEMM backend the chunks are encoded
        in parallel, one per thread, on ``torch.get_num_threads()`` threads
        (each running torch single-threaded), so the working memory is that
        many chunks. The output does not depend on either.
    device : {'auto', 'cpu', 'cuda'} or str, default='auto'
        Where the GEMMs and k-means run; ``'auto'`` uses a CUDA GPU when one
        is visible.
    random_state : int, RandomState instance or None, default=None
        Seeds the patch sampling, the data atoms, the Gaussian atoms and
        faiss k-means.
    verbose : int, default=0
        Print progress of fitting and encoding to stderr.
    image_shape : tuple (H, W) or (H, W, C), default=None
        Shape of one image when ``X`` is given as 2-D rows.

    Attributes
    ----------
    mean_ : ndarray of shape (ph * pw * C,)
        Mean sampled patch (after ``patch_normalize``).
    whitening_ : ndarray of shape (ph * pw * C, ph * pw * C)
        ``W``: a centred patch row ``x`` is whitened as ``x @ W``.
    explained_variance_ : ndarray of shape (ph * pw * C,)
        Covariance eigenvalues of the sampled patches, decreasing.
    atoms_ : ndarray of shape (n_atoms, ph * pw * C), float32
        The dictionary, in the whitened space.
    index_ : faiss.Index
        Exact L2 index over ``atoms_`` (rebuilt from them when unpickled).
    n_neighbors_ : int
        The resolved ``k``.
    patch_grid_shape_ : tuple (gh, gw)
        Patch positions per image.
    n_features_out_ : int
        ``(2 if both_signs else 1) * pooling**2 * n_atoms``, times
        ``n_full_components`` for ``'full'``, halved by ``flip_invariant``.
    mirror_atoms_ : ndarray of shape (n_atoms,), int64
        Only with ``flip_invariant``: the index of each atom's mirror image.
    image_shape_ : tuple (H, W, C)
    n_features_in_ : int
    feature_names_in_ : ndarray of shape (n_features_in,)
        Only for 2-D input with string column names.

    See Also
    --------
    skpatch.PatchExtractor : The patches themselves.
    sklearn.cluster.KMeans : k-means in scikit-learn (faiss is used here).

    Notes
    -----
    One preprocessing (scaling, patch normalization, centring, whitening)
    serves both the dictionary and the encoding. The output layout is
    ``(sign, region_row, region_col, atom[, component])`` flattened in that
    order, float32. The nearest atoms come from a GEMM, so neighbours that
    are exactly tied may differ between backends and devices.

    References
    ----------
    .. [1] A. Coates, H. Lee, A. Y. Ng. An analysis of single-layer networks
       in unsupervised feature learning. AISTATS 2011.
    .. [2] L. Thiry, M. Arbel, E. Belilovsky, E. Oyallon. The unreasonable
       effectiveness of patches in deep convolutional kernels methods.
       ICLR 2021.
    .. [3] A. Brutzkus, A. Globerson, E. Malach, A. Regev Netser,
       S. Shalev-Shwartz. Efficient learning of CNNs using patch based
       features. ICML 2022.

    Examples
    --------
    >>> import numpy as np
    >>> from skpatch import PatchDictionaryEmbedding
    >>> X = np.random.default_rng(0).random((20, 8, 8))
    >>> emb = PatchDictionaryEmbedding(patch_size=3, n_atoms=16, n_neighbors=4,
    ...                                random_state=0).fit(X)
    >>> emb.transform(X).shape
    (20, 64)
    >>> emb.transform(X)[0, :16].sum()  # mean of k=4 ones over each patch
    np.float32(4.0)
    """

    _parameter_constraints = {
        "patch_size": [Interval(Integral, 1, None, closed="left"), tuple, list],
        "stride": [Interval(Integral, 1, None, closed="left"), tuple, list],
        "n_atoms": [Interval(Integral, 1, None, closed="left")],
        "dictionary": [StrOptions({"kmeans", "data", "gaussian"})],
        "n_neighbors": [
            Interval(Integral, 1, None, closed="left"),
            Interval(Real, 0, 1, closed="right"),
        ],
        "encoding": [StrOptions({"hard", "full", "triangle"})],
        "both_signs": ["boolean"],
        "whiten": [StrOptions({"zca", "pca"}), None],
        "whiten_reg": [Interval(Real, 0, None, closed="left")],
        "n_full_components": [Interval(Integral, 1, None, closed="left")],
        "patch_normalize": ["boolean"],
        "pooling": [Interval(Integral, 1, None, closed="left")],
        "power": [Interval(Real, 0, None, closed="neither")],
        "flip_invariant": ["boolean"],
        "n_patches_fit": [Interval(Integral, 1, None, closed="left")],
        "knn_backend": [StrOptions({"auto", "faiss", "gemm"})],
        "batch_size": [Interval(Integral, 1, None, closed="left"), StrOptions({"auto"})],
        "device": [str],
        "random_state": ["random_state"],
        "verbose": ["verbose"],
        "image_shape": [tuple, list, None],
    }

    def __init__(
        self,
        patch_size=6,
        *,
        stride=1,
        n_atoms=1024,
        dictionary="kmeans",
        n_neighbors=0.25,
        encoding="hard",
        both_signs=False,
        whiten="zca",
        whiten_reg=1e-3,
        n_full_components=8,
        patch_normalize=False,
        pooling=2,
        power=1.0,
        flip_invariant=False,
        n_patches_fit=262144,
        knn_backend="auto",
        batch_size="auto",
        device="auto",
        random_state=None,
        verbose=0,
        image_shape=None,
    ):
        self.patch_size = patch_size
        self.stride = stride
        self.n_atoms = n_atoms
        self.dictionary = dictionary
        self.n_neighbors = n_neighbors
        self.encoding = encoding
        self.both_signs = both_signs
        self.whiten = whiten
        self.whiten_reg = whiten_reg
        self.n_full_components = n_full_components
        self.patch_normalize = patch_normalize
        self.pooling = pooling
        self.power = power
        self.flip_invariant = flip_invariant
        self.n_patches_fit = n_patches_fit
        self.knn_backend = knn_backend
        self.batch_size = batch_size
        self.device = device
        self.random_state = random_state
        self.verbose = verbose
        self.image_shape = image_shape

    # ------------------------------------------------------------------ fit
    def _check_params_vs_input(self, images):
        """Resolve the data-dependent settings into private attributes."""
        check_device_param(self.device)
        self._patch_size = check_size_pair(self.patch_size, "patch_size")
        self._stride = check_size_pair(self.stride, "stride")
        height, width, channels = images.shape[1:]
        if self._patch_size[0] > height or self._patch_size[1] > width:
            raise ValueError(
                f"patch_size={self._patch_size} is larger than the images "
                f"(H, W) = ({height}, {width})."
            )
        grid = tuple(
            (size - p) // s + 1
            for size, p, s in zip((height, width), self._patch_size, self._stride)
        )
        if self.flip_invariant and (width - self._patch_size[1]) % self._stride[1]:
            raise ValueError(
                f"flip_invariant=True needs a patch grid that mirrors onto itself: "
                f"(width - patch width) = {width - self._patch_size[1]} must be a "
                f"multiple of the horizontal stride {self._stride[1]}; change "
                "stride or patch_size."
            )
        if self.pooling > min(grid):
            raise ValueError(
                f"pooling={self.pooling} regions per side but the patch grid is "
                f"only {grid[0]} x {grid[1]}; pooling must be <= {min(grid)}."
            )
        n_total = images.shape[0] * grid[0] * grid[1]
        self._n_sampled = min(int(self.n_patches_fit), n_total)
        if self.flip_invariant and self.n_atoms % 2:
            raise ValueError(
                f"n_atoms={self.n_atoms} must be even with flip_invariant=True "
                "(n_atoms / 2 atoms and their mirror images)."
            )
        n_base = self.n_atoms // 2 if self.flip_invariant else self.n_atoms
        if self.dictionary != "gaussian" and n_base > self._n_sampled:
            what = (
                f"n_atoms / 2 = {n_base} (flip_invariant=True)"
                if self.flip_invariant
                else f"n_atoms={self.n_atoms}"
            )
            raise ValueError(
                f"{what} is larger than the {self._n_sampled} "
                f"patches sampled from {images.shape[0]} sample(s) "
                f"(n_patches_fit={self.n_patches_fit}); lower n_atoms or pass "
                "more images."
            )
        if isinstance(self.n_neighbors, Integral):
            k = int(self.n_neighbors)
        else:
            k = max(1, int(round(float(self.n_neighbors) * self.n_atoms)))
        # triangle over all atoms is Coates et al.'s encoding; hard/full would be constant/redundant
        k_max = self.n_atoms if self.encoding == "triangle" else self.n_atoms - 1
        if k > k_max:
            raise ValueError(
                f"n_neighbors={self.n_neighbors} gives k={k} nearest atoms but "
                f"encoding={self.encoding!r} with n_atoms={self.n_atoms} needs "
                f"k <= {k_max}."
            )
        patch_dim = self._patch_size[0] * self._patch_size[1] * channels
        if self.encoding == "full" and self.n_full_components > patch_dim:
            raise ValueError(
                f"n_full_components={self.n_full_components} exceeds the patch "
                f"dimension ph * pw * C = {patch_dim}."
            )
        self._grid = grid
        return k

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None):
        """Fit the whitening, the dictionary and the nearest-atom index.

        Parameters
        ----------
        X : array-like of shape (n, H, W), (n, H, W, C) or (n, H*W*C)
            Training images; uint8 is scaled to [0, 1].
        y : None
            Ignored.

        Returns
        -------
        self : PatchDictionaryEmbedding
        """
        from .utils import _faiss

        random_state = check_random_state(self.random_state)
        images = validate_images(self, X, reset=True, dtype="float")
        k = self._check_params_vs_input(images)
        device = self._torch_device()
        start = time.perf_counter()

        patches = self._sample_patches(images, random_state)
        patches = self._normalize(patches)
        if self.flip_invariant:
            # a flip-symmetric mean and covariance: the whitening commutes with the mirror
            self._fit_whitening(np.concatenate([patches, patches[:, self._mirror_dims()]]))
        else:
            self._fit_whitening(patches)
        whitened = (patches - self.mean_) @ self.whitening_
        self._log(f"whitened {patches.shape[0]} patches", start)

        n_atoms = int(self.n_atoms) // 2 if self.flip_invariant else int(self.n_atoms)
        if self.dictionary == "kmeans":
            atoms = _faiss.faiss_kmeans(
                whitened,
                n_atoms,
                seed=random_state.randint(np.iinfo(np.int32).max),
                use_gpu=device.startswith("cuda"),
            )
        elif self.dictionary == "data":
            chosen = random_state.choice(whitened.shape[0], n_atoms, replace=False)
            atoms = whitened[np.sort(chosen)]
        else:
            atoms = random_state.standard_normal((n_atoms, whitened.shape[1]))
        if self.flip_invariant:
            # atom i + n_atoms/2 is the mirror image of atom i, in the whitened space
            atoms = np.concatenate([atoms, atoms @ self._whitened_mirror()])
            self.mirror_atoms_ = np.roll(np.arange(2 * n_atoms), n_atoms)
            n_atoms *= 2
        self.atoms_ = np.ascontiguousarray(atoms, dtype=np.float32)
        self.index_ = _faiss.build_index(self.atoms_, use_gpu=device.startswith("cuda"))
        self._log(f"built a {self.dictionary!r} dictionary of {n_atoms} atoms", start)

        self.n_neighbors_ = k
        self.patch_grid_shape_ = self._grid
        n_signs = 2 if self.both_signs else 1
        per_atom = self.n_full_components if self.encoding == "full" else 1
        kept = n_atoms // 2 if self.flip_invariant else n_atoms
        self.n_features_out_ = n_signs * self.pooling**2 * kept * per_atom
        return self

    def _mirror_dims(self):
        """Permutation of a patch row's ``(ph, pw, C)`` entries that mirrors it left-right."""
        ph, pw = self._patch_size
        channels = self.image_shape_[2]
        return np.arange(ph * pw * channels).reshape(ph, pw, channels)[:, ::-1].ravel()

    def _whitened_mirror(self):
        """``M`` with ``mirror(x) -> q M`` for whitened rows ``q = (x - mean) W``.

        ``M = W^-1 P W`` with ``P`` the mirror permutation; ``P`` itself for
        ZCA (and no whitening), whose ``W`` commutes with ``P`` once the
        covariance is flip-symmetric.
        """
        whitening = self.whitening_.astype(np.float64)
        permutation = np.eye(whitening.shape[0])[self._mirror_dims()].T
        return np.linalg.solve(whitening, permutation @ whitening)

    def _sample_patches(self, images, random_state):
        """``n_patches_fit`` patches drawn without replacement, as float32 rows."""
        grid = self._grid
        view = _extract_view(images, self._patch_size, self._stride, ((0, 0), (0, 0)))
        n_total = images.shape[0] * grid[0] * grid[1]
        rng = np.random.default_rng(random_state.randint(np.iinfo(np.int32).max))
        chosen = np.sort(rng.choice(n_total, self._n_sampled, replace=False))
        image, rest = np.divmod(chosen, grid[0] * grid[1])
        row, col = np.divmod(rest, grid[1])
        patches = view[image, row, col]
        return patches.reshape(patches.shape[0], -1).astype(np.float32)

    def _normalize(self, patches):
        if not self.patch_normalize:
            return patches
        centred = patches - patches.mean(axis=1, keepdims=True)
        scale = np.sqrt(centred.var(axis=1, keepdims=True) + _CONTRAST_REG)
        return centred / scale

    def _fit_whitening(self, patches):
        patches64 = patches.astype(np.float64)
        mean = patches64.mean(axis=0)
        centred = patches64 - mean
        cov = centred.T @ centred / patches64.shape[0]
        eigenvalues, eigenvectors = np.linalg.eigh(cov)
        order = np.argsort(eigenvalues)[::-1]
        eigenvalues = np.clip(eigenvalues[order], 0.0, None)
        eigenvectors = eigenvectors[:, order]
        dim = patches.shape[1]
        if self.whiten is None:
            whitening = np.eye(dim)
            full_projection = eigenvectors
        else:
            if self.whiten_reg == 0:
                self._check_full_rank(eigenvalues)
            scale = 1.0 / np.sqrt(eigenvalues + self.whiten_reg)
            if self.whiten == "zca":
                whitening = (eigenvectors * scale) @ eigenvectors.T
                full_projection = eigenvectors
            else:
                whitening = eigenvectors * scale
                full_projection = np.eye(dim)
        self.mean_ = mean.astype(np.float32)
        self.whitening_ = whitening.astype(np.float32)
        self.explained_variance_ = eigenvalues
        # maps a whitened row to its leading PCA components, for 'full'
        self._full_projection = np.ascontiguousarray(
            full_projection[:, : self.n_full_components], dtype=np.float32
        )

    def _check_full_rank(self, eigenvalues):
        """Raise when whitening with ``whiten_reg=0`` would divide by a zero eigenvalue."""
        # float32 patches leave about eps32 of each value as residue: eps64**0.5 sits between
        tolerance = np.sqrt(np.finfo(np.float64).eps) * eigenvalues[0]
        n_zero = int(np.sum(eigenvalues <= tolerance))
        if n_zero:
            reason = (
                "patch_normalize=True removes each patch's mean"
                if self.patch_normalize
                else "constant or linearly dependent pixels"
            )
            raise ValueError(
                f"whiten_reg=0 cannot whiten these patches: {n_zero} of the "
                f"{eigenvalues.size} eigenvalues of the patch covariance are zero "
                f"(to float precision; {reason}), and whiten={self.whiten!r} "
                "divides by sqrt(eigenvalue + whiten_reg). Pass whiten_reg > 0 "
                "(default 1e-3) or whiten=None."
            )

    # ------------------------------------------------------------ transform
    def transform(self, X):
        """Encode and pool the patches of each image.

        Parameters
        ----------
        X : array-like of shape (n, H, W), (n, H, W, C) or (n, H*W*C)
            Images of the shape seen in ``fit``.

        Returns
        -------
        X_new : ndarray of shape (n, n_features_out), float32
            ``n_features_out_`` features per image.
        """
        check_is_fitted(self)
        images = validate_images(self, X, reset=False, dtype="float")
        return self._transform(images)

    def _chunk_size(self, n_images):
        if self.batch_size != "auto":
            return int(self.batch_size)
        n_positions = self.patch_grid_shape_[0] * self.patch_grid_shape_[1]
        if self._knn_backend(self._torch_device()) == "faiss" and self.encoding == "hard":
            # no dense (patches x atoms) buffer: faiss works best on large query blocks
            row_bytes = n_positions * (self.atoms_.shape[1] + 3 * self.n_neighbors_) * 4
            return get_chunk_n_rows(
                row_bytes=row_bytes, max_n_rows=n_images, working_memory=64
            )
        if self.n_neighbors_ == 1 and self.encoding == "hard":
            # no dense buffer either (see _nearest_atoms): the patches, their
            # codes' slots and indices; large chunks keep the Python overhead low
            row_bytes = n_positions * (self.atoms_.shape[1] * 4 + 4 * 8)
            return get_chunk_n_rows(
                row_bytes=row_bytes, max_n_rows=n_images, working_memory=32
            )
        per_atom = self.n_full_components if self.encoding == "full" else 1
        # keep each (patches x atoms) float32 buffer near 8 MB: below glibc's
        # mmap threshold, so buffers are reused instead of page-faulted anew
        row_bytes = n_positions * self.atoms_.shape[0] * 4 * per_atom
        return get_chunk_n_rows(
            row_bytes=row_bytes, max_n_rows=n_images, working_memory=8
        )

    def _transform(self, images):
        import torch

        from . import _encodings

        device = self._torch_device()
        n_images = images.shape[0]
        out = np.empty((n_images, self.n_features_out_), dtype=np.float32)
        region, counts = _encodings.pool_regions(self.patch_grid_shape_, self.pooling)
        state = {
            "region": torch.as_tensor(region, device=device),
            "counts": torch.as_tensor(counts, dtype=torch.float32, device=device),
            "atoms": torch.as_tensor(self.atoms_, device=device),
            "mean": torch.as_tensor(self.mean_, device=device),
            "whitening": torch.as_tensor(self.whitening_, device=device),
            "projection": torch.as_tensor(self._full_projection, device=device),
        }
        state["atom_sq_norms"] = (state["atoms"] ** 2).sum(dim=1)
        state["score_weight"] = 2.0 * state["whitening"] @ state["atoms"].T
        state["score_bias"] = (
            -(state["mean"] @ state["score_weight"]) - state["atom_sq_norms"]
        )
        state["pool"] = _encodings.pool_matrix(state["region"], state["counts"])
        if self.flip_invariant:
            # each position summed again into the region of its mirror position
            gh, gw = self.patch_grid_shape_
            mirrored = region.reshape(gh, gw)[:, ::-1].ravel()
            state["region_mirror"] = torch.as_tensor(mirrored, device=device)
            state["pool_mirror"] = _encodings.pool_matrix(
                state["region_mirror"], state["counts"]
            )
            projection = self._whitened_mirror() @ self._full_projection.astype(np.float64)
            state["projection_mirror"] = torch.as_tensor(
                projection.astype(np.float32), device=device
            )
        for sign in (1.0, -1.0):  # filled here: the chunk workers only read state
            self._nearest_weights(state, sign)
        start = time.perf_counter()

        def encode(batch):
            with torch.inference_mode():
                codes = self._encode_chunk(images[batch], state, device)
                out[batch] = codes.reshape(codes.shape[0], -1).cpu().numpy()
            return batch

        batches = list(gen_batches(n_images, self._chunk_size(n_images)))
        n_workers = min(torch.get_num_threads(), len(batches))
        if device != "cpu" or self._knn_backend(device) == "faiss":
            n_workers = 1
        with ExitStack() as stack:
            done = map(encode, batches)
            if n_workers > 1:
                # CPU: one chunk per thread, each with single-threaded torch. The
                # selection (numpy) is single-threaded, and torch's idle OpenMP
                # threads spin against any other thread, so splitting the work
                # inside a chunk loses.
                stack.enter_context(_single_threaded_torch())
                pool = stack.enter_context(
                    ThreadPoolExecutor(n_workers, thread_name_prefix="skpatch")
                )
                done = pool.map(encode, batches)
            for batch in done:
                if self.verbose:
                    self._log(f"encoded {batch.stop}/{n_images} images", start)
        return out

    def _encode_chunk(self, images, state, device):
        """Pooled codes ``(b, n_signs, R, Q[, r])`` of one chunk of images."""
        import torch

        from . import _encodings
        from .utils import _faiss

        view = _extract_view(images, self._patch_size, self._stride, ((0, 0), (0, 0)))
        patches = np.ascontiguousarray(view, dtype=np.float32).reshape(
            -1, view.shape[3] * view.shape[4] * view.shape[5]
        )
        patches = torch.from_numpy(self._normalize(patches)).to(device)
        n_images, n_atoms, k = images.shape[0], self.atoms_.shape[0], self.n_neighbors_
        signs = (1.0, -1.0) if self.both_signs else (1.0,)
        backend = self._knn_backend(device)
        pool = state["pool"]
        if backend == "faiss" or self.encoding != "hard":
            whitened = (patches - state["mean"]) @ state["whitening"]

        if backend == "gemm" and k == 1 and self.encoding == "hard":
            # nearest atom only: GEMM and argmax block by block, in cache
            codes = [
                self._pool_sparse(self._nearest_atoms(patches, state, sign), n_images, state)
                for sign in signs
            ]
            return self._finish_codes(codes, state)
        if backend == "gemm":
            # 2 q.a - |a|^2 with q = (x - mean) W: one GEMM on the raw patches
            positive = torch.addmm(state["score_bias"], patches, state["score_weight"])
            if self.encoding == "triangle":
                sq_norms = (whitened**2).sum(dim=1, keepdim=True)
        codes = []
        for sign in signs:
            if backend == "gemm":
                # 2 s q.a - |a|^2 ranks atoms by distance to s q; one GEMM serves both signs
                if sign > 0:
                    scores = positive if len(signs) == 1 else positive.clone()
                else:
                    scores = positive.neg_().sub_(state["atom_sq_norms"], alpha=2.0)
                mask = _faiss.select_mask(scores, k)
                if self.encoding == "triangle":
                    scores.neg_().add_(sq_norms)  # in place: now |s q - a|^2
                sq_dist = scores
            else:
                queries = (sign * whitened).cpu().numpy()
                dist, idx = _faiss.index_search(self._get_index(), queries, k)
                indices = torch.from_numpy(idx).to(device)
                if self.encoding == "hard":
                    codes.append(self._pool_sparse(indices, n_images, state))
                    continue
                mask = _faiss.indices_to_mask(indices, n_atoms)
                sq_dist = torch.zeros_like(mask).scatter_(
                    1, indices, torch.from_numpy(dist).to(device)
                )
            if self.encoding == "triangle":
                mask = _encodings.triangle_values(sq_dist, mask, k)
            if self.encoding == "full":
                vectors = [(sign * whitened) @ state["projection"]]
                if self.flip_invariant:
                    vectors.append((sign * whitened) @ state["projection_mirror"])
                codes.append(self._pool_dense(mask, n_images, state, vectors))
            else:
                codes.append(self._pool_dense(mask, n_images, state))
        return self._finish_codes(codes, state)

    def _finish_codes(self, codes, state):
        """Stack the per-sign region sums, divide by the region sizes, apply ``power``."""
        import torch

        codes = torch.stack(codes, dim=1)
        # mean pooling: region sums over region sizes, the same on every path
        sizes = state["counts"].reshape((1, 1, -1) + (1,) * (codes.ndim - 3))
        codes = codes / (2 * sizes if self.flip_invariant else sizes)
        if self.power != 1:
            codes = codes.abs().pow_(self.power).mul_(codes.sign())
        return codes

    @staticmethod
    def _nearest_weights(state, sign):
        """GEMM weight and bias giving the scores ``2 s q.a - |a|^2``, cached in ``state``."""
        key = "nearest_weights" if sign > 0 else "nearest_weights_neg"
        if key not in state:
            weight, bias = state["score_weight"], state["score_bias"]
            if sign < 0:  # -2 q.a - |a|^2 = -(2 q.a - |a|^2) - 2 |a|^2
                weight, bias = -weight, -bias - 2.0 * state["atom_sq_norms"]
            state[key] = (weight.contiguous(), bias.contiguous())
        return state[key]

    def _nearest_atoms(self, patches, state, sign):
        """Index ``(m, 1)`` of the nearest atom to each whitened ``sign * patch``.

        On CPU the scores ``2 s q.a - |a|^2`` of a block of rows are written
        into one reused buffer of about 1 MB and reduced by ``argmax`` while
        still in cache; the blocks are a fixed size, so the result does not
        depend on the chunk size. On a GPU the chunk is one block.
        """
        import torch

        weight, bias = self._nearest_weights(state, sign)
        n_rows, n_atoms = patches.shape[0], weight.shape[1]
        on_cpu = patches.device.type == "cpu"
        # on a GPU, one block: small GEMMs would only add kernel launches
        block = max(1, _NEAREST_BLOCK_BYTES // (4 * n_atoms)) if on_cpu else max(n_rows, 1)
        buffer = torch.empty((min(block, n_rows), n_atoms), device=patches.device)
        indices = torch.empty((n_rows,), dtype=torch.int64, device=patches.device)
        if on_cpu:  # numpy's SIMD argmax: ~9x torch.argmax over rows of 1024 on CPU
            scores_np, indices_np = buffer.numpy(), indices.numpy()
        for start in range(0, n_rows, block):
            stop = min(start + block, n_rows)
            scores = buffer[: stop - start]
            torch.addmm(bias, patches[start:stop], weight, out=scores)
            if on_cpu:
                np.argmax(scores_np[: stop - start], axis=1, out=indices_np[start:stop])
            else:
                torch.argmax(scores, dim=1, out=indices[start:stop])
        return indices[:, None]

    def _pool_dense(self, values, n_images, state, vectors=None):
        """Region sums ``(b, R, Q'[, r])`` of dense per-patch codes ``(b * P, Q)``.

        ``vectors`` is None for 'hard' and 'triangle' and, for 'full', the
        pair (reduced patches, reduced mirrored patches) ``(b * P, r)``. With
        ``flip_invariant`` the first half of the atoms is summed over the
        regions and the second half (their mirrors) over the mirrored regions:
        the code of the image plus the code of its mirror image.
        """
        from . import _encodings

        def pool(values, regions, which):
            if vectors is None:
                return _encodings.encode_hard(values, n_images, regions)
            return _encodings.encode_full(vectors[which], values, n_images, regions)

        if not self.flip_invariant:
            return pool(values, state["pool"], 0)
        half = values.shape[1] // 2
        return pool(values[:, :half], state["pool"], 0) + pool(
            values[:, half:], state["pool_mirror"], 1
        )

    def _pool_sparse(self, indices, n_images, state):
        """:meth:`_pool_dense` of 'hard' codes given as neighbour indices ``(b * P, k)``."""
        from . import _encodings

        n_regions, n_atoms = state["counts"].shape[0], self.atoms_.shape[0]
        counts = _encodings.encode_hard_sparse(
            indices, n_images, state["region"], n_regions, n_atoms
        )
        if not self.flip_invariant:
            return counts
        half = n_atoms // 2
        mirrored = _encodings.encode_hard_sparse(
            indices, n_images, state["region_mirror"], n_regions, n_atoms
        )
        return counts[..., :half] + mirrored[..., half:]

    def _knn_backend(self, device):
        if self.knn_backend != "auto":
            return self.knn_backend
        if device == "cpu" and 1 < self.n_neighbors_ <= _FAISS_MAX_K:
            return "faiss"
        return "gemm"

    def _torch_device(self):
        """Resolved torch device; a CUDA setting falls back to CPU with a warning."""
        import torch

        check_device_param(self.device)
        if self.device == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            warnings.warn(
                f"device={self.device!r} but no CUDA GPU is available; running on "
                "the CPU.",
                RuntimeWarning,
            )
            return "cpu"
        return self.device

    def _log(self, message, start):
        if self.verbose:
            elapsed = time.perf_counter() - start
            print(f"[PatchDictionaryEmbedding] {message} ({elapsed:.1f}s)", file=sys.stderr)

    # ------------------------------------------------------------- helpers
    def get_feature_names_out(self, input_features=None):
        """Names ``<prefix>_<sign>_r<i>_<j>_a<atom>[_c<component>]`` of the output features.

        With ``flip_invariant``, feature ``a<atom>`` of region ``(i, j)`` also
        holds the mirror atom ``mirror_atoms_[atom]`` of the mirrored region.

        Parameters
        ----------
        input_features : array-like of str or None, default=None
            Only checked against ``feature_names_in_``.

        Returns
        -------
        feature_names_out : ndarray of str objects
        """
        check_is_fitted(self)
        _check_feature_names_in(self, input_features, generate_names=False)
        prefix = type(self).__name__.lower()
        signs = ["pos", "neg"] if self.both_signs else ["pos"]
        regions = [f"r{i}_{j}" for i in range(self.pooling) for j in range(self.pooling)]
        n_kept = self.atoms_.shape[0] // 2 if self.flip_invariant else self.atoms_.shape[0]
        atoms = [f"a{a}" for a in range(n_kept)]
        names = [f"{prefix}_{s}_{r}_{a}" for s in signs for r in regions for a in atoms]
        if self.encoding == "full":
            comps = [f"c{c}" for c in range(self.n_full_components)]
            names = [f"{n}_{c}" for n in names for c in comps]
        return np.asarray(names, dtype=object)

    def __getstate__(self):
        state = super().__getstate__()
        # the flat index holds nothing but atoms_: rebuilt from them on first use
        state.pop("index_", None)
        return state

    def _get_index(self):
        if getattr(self, "index_", None) is None:
            from .utils import _faiss

            use_gpu = self._torch_device().startswith("cuda")
            self.index_ = _faiss.build_index(self.atoms_, use_gpu=use_gpu)
        return self.index_

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.transformer_tags.preserves_dtype = ["float32"]
        return tags
