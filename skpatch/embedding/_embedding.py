"""PatchDictionaryEmbedding: whitened patch dictionary with k-NN encodings.

The unsupervised model of Coates et al. (2011), Thiry et al. (2021) and
Brutzkus et al. (2022): whiten the patches, build a dictionary of atoms, encode
each patch by its nearest atoms, pool the codes over a spatial grid. A linear
classifier on top gives the published patch-based CIFAR-10 models.

This module is the estimator: parameters, checks, sampling and the fitted
arrays. The whitening is in ``_whitening.py``; the engine that encodes
(search, encodings, pooling, threads) in ``_encoder.py``, ``_encodings.py``
and ``_pooling.py``.
"""

import sys
import time
from numbers import Integral, Real

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin, _fit_context
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import _check_feature_names_in, check_is_fitted

from ..utils._dask import is_dask_array, map_row_blocks
from ..utils._device import check_device_param, resolve_device, runtime_device
from ..utils._grid import _gather_patches, patch_grid_shape
from ..utils._validation import (
    _check_float32_range,
    _check_input_scale,
    _dtype_family,
    _peak,
    _reset_fitted_attributes,
    _to_float,
    check_size_pair,
    validate_images,
)
from . import _whitening
from ._pooling import pooling_layout

__all__ = ["PatchDictionaryEmbedding"]


# one output row above 128 MB (float32) is refused: a clear error, not an allocation failure
_MAX_FEATURES_PER_IMAGE = 2**25


def _check_pooling(pooling, grid):
    """``pooling`` resolved: an int, a tuple ``(size, stride)`` of ints, or None."""
    if pooling is None:
        return None
    if isinstance(pooling, (tuple, list)):
        if len(pooling) != 2 or not all(
            isinstance(v, Integral) and not isinstance(v, bool) and v >= 1 for v in pooling
        ):
            raise ValueError(
                f"pooling={pooling!r} must be an int (regions per side), a pair "
                "(window size, window stride) of positive ints, or None (no pooling)."
            )
        size, stride = int(pooling[0]), int(pooling[1])
        if size > min(grid):
            raise ValueError(
                f"pooling={pooling!r}: the {size} x {size} window is larger than the "
                f"{grid[0]} x {grid[1]} patch grid; the window size must be <= {min(grid)}."
            )
        return (size, stride)
    if pooling > min(grid):
        raise ValueError(
            f"pooling={pooling} regions per side but the patch grid is "
            f"only {grid[0]} x {grid[1]}; pooling must be <= {min(grid)}."
        )
    return int(pooling)


class PatchDictionaryEmbedding(TransformerMixin, BaseEstimator):
    """Embed images by the nearest dictionary atoms of their whitened patches.

    ``fit`` samples patches without replacement, fits the whitening, builds a
    dictionary of ``n_atoms`` atoms in the whitened space and an exact L2
    faiss index. ``transform`` finds the ``k`` nearest atoms of every patch
    (stride ``stride``), encodes each patch, averages the codes over the cells
    of ``pooling`` (a ``pooling x pooling`` grid of regions, overlapping
    windows, or none) and flattens, one row per image; ``transform_maps``
    gives the same codes as a map over the pooled grid.

    Parameters
    ----------
    patch_size : int or tuple (ph, pw), default=6
        Patch height and width.
    stride : int or tuple (sh, sw), default=1
        Step between encoded patches (fitting samples from the same grid).
    n_atoms : int, default=1024
        Dictionary size ``Q``.
    dictionary : {'kmeans', 'data', 'gaussian', 'standard_normal'}, default='kmeans'
        ``'kmeans'``: faiss k-means centroids of the whitened sampled patches
        (seeded); ``'data'``: whitened sampled patches drawn without
        replacement (Thiry et al.); ``'gaussian'``: Brutzkus et al.'s "random
        patches" baseline, the k-means centroids of as many standard normal
        noise patches as were sampled from the data, whitened by the noise's
        own mean and covariance (same ``whiten``, ``whiten_reg`` and
        ``whiten_form``); ``'standard_normal'``: standard normal atoms (what
        ``'gaussian'`` was before; their norm is about ``sqrt(d)``, larger
        than that of the whitened patches, whose covariance has eigenvalues
        ``lambda / (lambda + whiten_reg)`` below 1).
    n_neighbors : int or float, default=0.25
        Number ``k`` of nearest atoms per patch; a float in (0, 1] is a
        fraction of ``n_atoms`` (rounded, at least 1). Unused by
        ``'soft_threshold'``, which selects no atoms (every atom gets a code;
        ``n_neighbors_`` is then ``n_atoms``).
    encoding : {'hard', 'full', 'triangle', 'soft_threshold'}, default='hard'
        ``'hard'``: 1 for each of the k nearest atoms, 0 elsewhere
        (Phi_hard); ``'full'``: a vector of the patch written into the slots
        of its k nearest atoms, zeros elsewhere (Phi_full; see
        ``full_input``); ``'triangle'``: ``max(0, mean_j d_j - d_a)`` for each of
        the k nearest atoms ``a`` with ``d`` the Euclidean distances to these
        k atoms (Coates et al. with ``k = n_atoms``); ``'soft_threshold'``:
        ``max(0, s_a - alpha)`` for every atom ``a``, with
        ``s_a = q . a / |a|`` the projection of the whitened centred patch
        ``q = (x - mean) W`` on the atom scaled to unit length (Coates & Ng
        2011): one GEMM and a threshold, no selection.
    alpha : float, default=0.25
        The threshold of ``'soft_threshold'`` (Coates & Ng's and KeystoneML's
        0.25); ignored by the other encodings.
    both_signs : bool or {'centred', 'raw'}, default=False
        Also encode a negated patch and concatenate both codes (Thiry et
        al.); costs no second GEMM. ``True`` or ``'centred'``: the negated
        whitened patch ``-q = -(x - mean) W``; ``'raw'``: the whitened
        negated input ``(-x - mean) W = -q - 2 mean W``, as Thiry et al.'s
        code does (a convolution on the raw input, no centring), which gives
        other codes for -x wherever ``mean W`` is not negligible. For
        ``'soft_threshold'``, ``True`` is Coates & Ng's polarity split
        ``[max(0, s - alpha), max(0, -s - alpha)]``; ``'raw'`` thresholds the
        projections of ``(-x - mean) W`` instead of those of ``-q``.
    whiten : {'zca', 'pca'} or None, default='zca'
        ``'zca'``: ``W = U diag(s) U^T``; ``'pca'``: ``W = U diag(s)``
        (rotated coordinates: same distances, hence the same neighbours as
        ZCA); None: only the mean patch is subtracted. ``s`` per
        ``whiten_form``.
    whiten_reg : float, default=1e-3
        The whitening's regularizer ``eps``, for pixel values as given
        (uint8 images are scaled to [0, 1]): squared pixel units with
        ``whiten_form='inside_sqrt'``, pixel units with ``'outside_sqrt'``.
        0 needs a full-rank patch covariance: ``fit`` raises a ValueError
        when an eigenvalue is zero to float precision (constant images,
        ``patch_normalize=True``).
    whiten_form : {'inside_sqrt', 'outside_sqrt'}, default='inside_sqrt'
        ``'inside_sqrt'``: ``s = 1 / sqrt(lambda + whiten_reg)`` (Thiry et
        al.), whitened variances ``lambda / (lambda + whiten_reg)``;
        ``'outside_sqrt'``: ``s = 1 / (sqrt(lambda) + whiten_reg)`` (Brutzkus
        et al.'s code), whitened variances
        ``lambda / (sqrt(lambda) + whiten_reg)**2``. No ``whiten_reg`` of one
        form gives the other's for all eigenvalues.
    n_full_components : int, default=8
        Leading whitened (PCA) components kept per patch by ``'full'`` with
        ``full_input='whitened'``.
    full_input : {'whitened', 'raw'}, default='whitened'
        What ``'full'`` writes into the atom slots. ``'whitened'``: the
        ``n_full_components`` leading PCA components of the encoded whitened
        patch, ``q U[:, :r]`` for ZCA and ``q[:, :r]`` for PCA, where
        ``q = (x - mean) W``: this is Brutzkus et al.'s scatter of ``x W``
        minus an offset, the hard code times ``mean W`` (on those
        components). ``'raw'``: the encoded patch itself, all
        ``ph * pw * C`` values, as given to ``transform`` (after uint8
        scaling and ``patch_normalize``; no centring, no whitening), which is
        Brutzkus et al.'s Phi_full; the negated code of ``both_signs``
        scatters the negated input, ``-x`` ('raw') or ``2 mean - x``
        ('centred'). Costs ``n_atoms * ph * pw * C`` values per pooled cell.
    patch_normalize : bool, default=False
        Subtract each patch's mean and divide by ``sqrt(var + 10 / 255**2)``
        before whitening (Coates et al.'s normalization for [0, 1] pixels).
    pooling : int, tuple (size, stride) or None, default=2
        An int: average the codes over ``pooling x pooling`` disjoint regions
        of near-equal size of the patch grid (1 = global average). A pair
        ``(size, stride)``: average over ``size x size`` windows at
        ``stride``, in ceil mode, exactly
        ``torch.nn.functional.avg_pool2d(kernel_size=size, stride=stride,
        ceil_mode=True)`` on the per-location code map (no padding, so a
        window cut short by the grid's end averages the positions it covers,
        torch's divisor there); Thiry et al. use ``(5, 3)``. None: no
        pooling, the code of every patch position. Mean rather than sum: a
        sum is the mean times the region size, which a following
        ``StandardScaler`` removes, but the mean keeps features comparable
        when regions differ in size. An output of more than 2**25 features
        per image is refused at ``fit``.
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
        and a per-row selection (an argmax for ``k = 1``; on CPU, a compiled
        exact top-k kernel for ``'hard'`` codes, :func:`numpy.partition`
        for the others; ``torch.topk`` on CUDA). ``'auto'`` uses
        faiss for ``2 <= k <= 4`` on CPU and the GEMM path otherwise (much
        faster at large k, where faiss's heap selection dominates). Same
        neighbour sets up to ties.
    batch_size : int or 'auto', default='auto'
        Images encoded per chunk; ``'auto'`` bounds each chunk's buffers
        (about 8 MB of scores, or 32-64 MB of patches where no dense score
        buffer is needed). Each chunk is converted to float on its own, so
        the working memory does not grow with the number of images. The
        output does not depend on the chunk size.
    n_jobs : int or None, default=None
        Threads of ``transform`` on CPU. With the GEMM backend, chunks are
        encoded in parallel, one per thread, each running torch
        single-threaded (the working memory is that many chunks); with faiss,
        its search runs on that many threads. None: the process's limit
        (``joblib.parallel_config``, ``OMP_NUM_THREADS`` and threadpoolctl
        limits); -1: all CPUs. The limits are set in the worker threads only:
        no process-wide setting (``torch.get_num_threads()`` included)
        changes. The output does not depend on it.
    device : {'auto', 'cpu', 'cuda'} or 'cuda:N', default='auto'
        Where the GEMMs, k-means and faiss index run; ``'auto'`` uses a CUDA
        GPU when one is visible. An explicit device that is not there is an
        error at ``fit``; a model fitted on a GPU and loaded where there is
        none runs on the CPU, with a warning.
    index_gpus : {'device', 'all'}, default='device'
        On a GPU ``device``: ``'device'`` keeps the faiss index on that GPU
        (``'cuda'``: the current one, GPU 0 of a one-GPU Dask worker);
        ``'all'`` shards one large dictionary over every visible GPU (faiss's
        ``index_cpu_to_all_gpus``; exact, merged results). Ignored on the CPU.
    random_state : int, RandomState instance or None, default=None
        Seeds the patch sampling, the data atoms, the Gaussian atoms and
        faiss k-means (a seed derived from it; no global generator is used).
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
        Exact L2 index over ``atoms_``, on ``device_`` (not pickled; rebuilt
        from the atoms on first use by the faiss search after unpickling).
    device_ : str
        The torch device ``fit`` ran on (``'cpu'``, ``'cuda'``, ``'cuda:N'``).
    n_neighbors_ : int
        The resolved ``k`` (``n_atoms`` for ``'soft_threshold'``: every atom).
    patch_grid_shape_ : tuple (gh, gw)
        Patch positions per image.
    pooled_grid_shape_ : tuple (oh, ow)
        Cells of the pooled grid: ``(pooling, pooling)``, the windows of
        ``(size, stride)``, or ``patch_grid_shape_`` for ``pooling=None``.
    n_features_out_ : int
        ``(2 if both_signs else 1) * oh * ow * n_atoms``, times
        ``n_full_components`` (or ``ph * pw * C`` with ``full_input='raw'``)
        for ``'full'``, halved by ``flip_invariant``.
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
    order, float32, with regions the cells of the pooled grid (patch positions
    for ``pooling=None``); ``transform_maps`` returns them as
    ``(n, oh, ow, (sign, atom[, component]))``. The nearest atoms come from a
    GEMM, so neighbours that are exactly tied may differ between backends and
    devices.

    The fitted state is numpy arrays. What runs them (the device tensors,
    the chosen search and the faiss index) is a private engine,
    ``skpatch.embedding._encoder.PatchEncoder``, built by ``fit``, cached, dropped
    when pickled and rebuilt on first use after unpickling, on the device
    present.

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
    .. [4] A. Coates, A. Y. Ng. The importance of encoding versus training
       with sparse coding and vector quantization. ICML 2011.

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
        "dictionary": [StrOptions({"kmeans", "data", "gaussian", "standard_normal"})],
        "n_neighbors": [
            Interval(Integral, 1, None, closed="left"),
            Interval(Real, 0, 1, closed="right"),
        ],
        "encoding": [StrOptions({"hard", "full", "triangle", "soft_threshold"})],
        "alpha": [Interval(Real, 0, None, closed="left")],
        "both_signs": ["boolean", StrOptions({"centred", "raw"})],
        "whiten": [StrOptions({"zca", "pca"}), None],
        "whiten_reg": [Interval(Real, 0, None, closed="left")],
        "whiten_form": [StrOptions({"inside_sqrt", "outside_sqrt"})],
        "n_full_components": [Interval(Integral, 1, None, closed="left")],
        "full_input": [StrOptions({"whitened", "raw"})],
        "patch_normalize": ["boolean"],
        "pooling": [Interval(Integral, 1, None, closed="left"), tuple, list, None],
        "power": [Interval(Real, 0, None, closed="neither")],
        "flip_invariant": ["boolean"],
        "n_patches_fit": [Interval(Integral, 1, None, closed="left")],
        "knn_backend": [StrOptions({"auto", "faiss", "gemm"})],
        "batch_size": [Interval(Integral, 1, None, closed="left"), StrOptions({"auto"})],
        "n_jobs": [Integral, None],
        "device": [str],
        "index_gpus": [StrOptions({"device", "all"})],
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
        alpha=0.25,
        both_signs=False,
        whiten="zca",
        whiten_reg=1e-3,
        whiten_form="inside_sqrt",
        n_full_components=8,
        full_input="whitened",
        patch_normalize=False,
        pooling=2,
        power=1.0,
        flip_invariant=False,
        n_patches_fit=262144,
        knn_backend="auto",
        batch_size="auto",
        n_jobs=None,
        device="auto",
        index_gpus="device",
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
        self.alpha = alpha
        self.both_signs = both_signs
        self.whiten = whiten
        self.whiten_reg = whiten_reg
        self.whiten_form = whiten_form
        self.n_full_components = n_full_components
        self.full_input = full_input
        self.patch_normalize = patch_normalize
        self.pooling = pooling
        self.power = power
        self.flip_invariant = flip_invariant
        self.n_patches_fit = n_patches_fit
        self.knn_backend = knn_backend
        self.batch_size = batch_size
        self.n_jobs = n_jobs
        self.device = device
        self.index_gpus = index_gpus
        self.random_state = random_state
        self.verbose = verbose
        self.image_shape = image_shape

    # ----------------------------------------------------------- validation
    def _validate_images(self, X, *, reset):
        """Validated ``(n, H, W, C)`` images in their own dtype (uint8 stays uint8).

        The checks of ``validate_images(..., dtype='float')`` without its
        conversion of all of X: chunks are scaled to float as they are encoded.
        """
        images = validate_images(self, X, reset=reset, dtype=None)
        _check_float32_range(images, "X")
        if reset:
            self._fit_input_scale = None
        peak = _peak(images)
        if images.dtype == np.uint8:  # the peak of the scaled pixels (same float32 division)
            peak = float(_to_float(np.asarray([peak], dtype=np.uint8))[0])
        peak = _check_input_scale(self, _dtype_family(images.dtype), np.asarray([peak]))
        if reset:
            self._fit_input_scale = (_dtype_family(images.dtype), peak)
        return images

    # ------------------------------------------------------------------ fit
    def _check_params_vs_input(self, images):
        """Resolve the data-dependent settings into private attributes."""
        check_device_param(self.device)
        self._patch_size = check_size_pair(self.patch_size, "patch_size")
        self._stride = check_size_pair(self.stride, "stride")
        height, width, channels = images.shape[1:]
        grid = patch_grid_shape((height, width), self._patch_size, self._stride)
        if self.flip_invariant and (width - self._patch_size[1]) % self._stride[1]:
            raise ValueError(
                f"flip_invariant=True needs a patch grid that mirrors onto itself: "
                f"(width - patch width) = {width - self._patch_size[1]} must be a "
                f"multiple of the horizontal stride {self._stride[1]}; change "
                "stride or patch_size."
            )
        self._pooling = _check_pooling(self.pooling, grid)
        n_total = images.shape[0] * grid[0] * grid[1]
        self._n_sampled = min(int(self.n_patches_fit), n_total)
        if self.flip_invariant and self.n_atoms % 2:
            raise ValueError(
                f"n_atoms={self.n_atoms} must be even with flip_invariant=True "
                "(n_atoms / 2 atoms and their mirror images)."
            )
        n_base = self.n_atoms // 2 if self.flip_invariant else self.n_atoms
        if self.dictionary != "standard_normal" and n_base > self._n_sampled:
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
        if self.encoding == "soft_threshold":
            k = int(self.n_atoms)  # no selection: n_neighbors is not used
        elif isinstance(self.n_neighbors, Integral):
            k = int(self.n_neighbors)
        else:
            k = max(1, int(round(float(self.n_neighbors) * self.n_atoms)))
        # triangle over all atoms is Coates et al.'s encoding; hard/full would be constant/redundant
        k_max = self.n_atoms if self.encoding in ("triangle", "soft_threshold") else self.n_atoms - 1
        if k > k_max:
            raise ValueError(
                f"n_neighbors={self.n_neighbors} gives k={k} nearest atoms but "
                f"encoding={self.encoding!r} with n_atoms={self.n_atoms} needs "
                f"k <= {k_max}."
            )
        patch_dim = self._patch_size[0] * self._patch_size[1] * channels
        raw_full = self.full_input == "raw"
        if self.encoding == "full" and not raw_full and self.n_full_components > patch_dim:
            raise ValueError(
                f"n_full_components={self.n_full_components} exceeds the patch "
                f"dimension ph * pw * C = {patch_dim}."
            )
        self._grid = grid
        self._per_atom = 1
        if self.encoding == "full":
            self._per_atom = patch_dim if raw_full else int(self.n_full_components)
        n_cells = int(np.prod(pooling_layout(grid, self._pooling).shape))
        n_kept = self.n_atoms // 2 if self.flip_invariant else self.n_atoms
        n_signs = 1 if self._sign_convention() is None else 2
        n_features = n_signs * n_cells * n_kept * self._per_atom
        if n_features > _MAX_FEATURES_PER_IMAGE:
            per_atom = ""
            if self.encoding == "full":
                per_atom = (f" x {patch_dim} values per atom (encoding='full', "
                            f"full_input={self.full_input!r})" if raw_full else
                            f" x n_full_components={self.n_full_components}")
            raise ValueError(
                f"the output would hold {n_features} features per image "
                f"({n_features * 4 / 2**20:.0f} MB): {n_signs} sign(s) x {n_cells} pooled "
                f"cells (pooling={self.pooling!r} on a {grid[0]} x {grid[1]} patch grid) x "
                f"{n_kept} atoms{per_atom}, above the {_MAX_FEATURES_PER_IMAGE} features "
                "per image allowed; pool more coarsely, lower n_atoms"
                + (" or use full_input='whitened' with a few n_full_components."
                   if raw_full and self.encoding == "full" else ".")
            )
        return k

    def _sign_convention(self):
        """None (one sign), 'centred' (``both_signs=True``) or 'raw'."""
        if isinstance(self.both_signs, str):
            return self.both_signs
        return "centred" if self.both_signs else None

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
        self._forget_previous_fit()
        if is_dask_array(X):  # the one door of a stream: validated by reductions,
            # and only the sampled patches gathered, block by block on the workers
            from ..utils._dask import gather_patches, validate_image_stream

            return self._fit(validate_image_stream(self, X), gather=gather_patches)
        return self._fit(self._validate_images(X, reset=True))

    @_fit_context(prefer_skip_nested_validation=True)
    def fit_transform(self, X, y=None):
        """Fit to ``X`` and encode it, validating ``X`` once.

        Equal to ``fit(X).transform(X)``.

        Parameters
        ----------
        X : array-like of shape (n, H, W), (n, H, W, C) or (n, H*W*C)
            Training images; uint8 is scaled to [0, 1].
        y : None
            Ignored.

        Returns
        -------
        X_new : ndarray of shape (n, n_features_out), float32
        """
        if is_dask_array(X):
            return self.fit(X).transform(X)
        self._forget_previous_fit()
        images = self._validate_images(X, reset=True)
        return self._fit(images)._transform(images)

    def _forget_previous_fit(self):
        """Drop the fitted attributes and the encoder that a previous fit left."""
        _reset_fitted_attributes(self)
        self._encoder = None

    def _fit(self, images, gather=_gather_patches):
        """Fit on validated images; ``gather(images, patch_size, stride, chosen)`` reads the sample."""
        from ..utils import _faiss

        random_state = check_random_state(self.random_state)
        k = self._check_params_vs_input(images)
        self.device_ = resolve_device(self.device)
        use_gpu = self.device_.startswith("cuda")
        start = time.perf_counter()

        patches = _whitening.normalize_patches(
            self._sample_patches(images, random_state, gather), self.patch_normalize
        )
        mirror_dims = _whitening.mirror_dims(self._patch_size, images.shape[3])
        # a flip-symmetric mean and covariance: the whitening commutes with the mirror
        sample = np.concatenate([patches, patches[:, mirror_dims]]) if self.flip_invariant else patches
        fitted = _whitening.fit_whitening(
            sample, whiten=self.whiten, whiten_reg=self.whiten_reg, whiten_form=self.whiten_form,
            n_full_components=self._full_components(sample.shape[1]),
            patch_normalize=self.patch_normalize,
        )
        self.mean_, self.whitening_ = fitted.mean, fitted.whitening
        self.explained_variance_ = fitted.explained_variance
        self._full_projection = fitted.full_projection
        whitened = _whitening.whiten_patches(patches, self.mean_, self.whitening_)
        self._log(f"whitened {patches.shape[0]} patches", start)

        n_atoms = int(self.n_atoms) // 2 if self.flip_invariant else int(self.n_atoms)
        if self.dictionary == "kmeans":
            atoms = _faiss.faiss_kmeans(
                whitened, n_atoms, seed=random_state.randint(np.iinfo(np.int32).max),
                use_gpu=use_gpu,
            )
        elif self.dictionary == "data":
            chosen = random_state.choice(whitened.shape[0], n_atoms, replace=False)
            atoms = whitened[np.sort(chosen)]
        elif self.dictionary == "gaussian":
            atoms = self._gaussian_atoms(whitened.shape, n_atoms, random_state, use_gpu)
        else:
            atoms = random_state.standard_normal((n_atoms, whitened.shape[1]))
        if self.flip_invariant:
            # atom i + n_atoms/2 is the mirror image of atom i, in the whitened space
            atoms = np.concatenate([atoms, atoms @ self._whitened_mirror()])
            self.mirror_atoms_ = np.roll(np.arange(2 * n_atoms), n_atoms)
            n_atoms *= 2
        self.atoms_ = np.ascontiguousarray(atoms, dtype=np.float32)
        self.index_ = _faiss.build_index(
            self.atoms_, use_gpu=use_gpu, device=self.device_, all_gpus=self.index_gpus == "all"
        )
        self._log(f"built a {self.dictionary!r} dictionary of {n_atoms} atoms", start)

        self.n_neighbors_ = k
        self.patch_grid_shape_ = self._grid
        self.pooled_grid_shape_ = pooling_layout(self._grid, self._pooling).shape
        n_signs = 1 if self._sign_convention() is None else 2
        kept = n_atoms // 2 if self.flip_invariant else n_atoms
        self.n_features_out_ = (n_signs * int(np.prod(self.pooled_grid_shape_)) * kept
                                * self._per_atom)
        self._get_encoder()  # built now: transform leaves the estimator as it is
        return self

    def _full_components(self, patch_dim):
        """Columns of the whitened 'full' projection (all of them for ``full_input='raw'``, unused)."""
        return patch_dim if self.full_input == "raw" else int(self.n_full_components)

    def _gaussian_atoms(self, shape, n_atoms, random_state, use_gpu):
        """Brutzkus et al.'s random-patches dictionary: k-means of whitened Gaussian noise.

        As many standard normal patches as were sampled from the data, whitened
        by their own mean and covariance (the same ``whiten``, ``whiten_reg`` and
        ``whiten_form``), then clustered by faiss k-means into ``n_atoms``
        centroids; these are the atoms, in the data's whitened space.
        """
        from ..utils import _faiss

        rng = np.random.default_rng(random_state.randint(np.iinfo(np.int32).max))
        noise = rng.standard_normal(shape, dtype=np.float32)
        own = _whitening.fit_whitening(
            noise, whiten=self.whiten, whiten_reg=self.whiten_reg, whiten_form=self.whiten_form,
            n_full_components=1, patch_normalize=False,
        )
        whitened_noise = _whitening.whiten_patches(noise, own.mean, own.whitening)
        return _faiss.faiss_kmeans(
            whitened_noise, n_atoms, seed=random_state.randint(np.iinfo(np.int32).max),
            use_gpu=use_gpu,
        )

    def _whitened_mirror(self):
        """``M`` with ``mirror(x) -> q M`` for whitened rows (see ``_whitening.whitened_mirror``)."""
        dims = _whitening.mirror_dims(self._patch_size, self.image_shape_[2])
        return _whitening.whitened_mirror(self.whitening_, dims)

    def _sample_patches(self, images, random_state, gather):
        """``n_patches_fit`` patches drawn without replacement, as float32 rows.

        Drawn from the images in their own dtype and scaled afterwards (uint8
        to [0, 1]): the same numbers as scaling all images first.
        """
        grid = self._grid
        n_total = images.shape[0] * grid[0] * grid[1]
        rng = np.random.default_rng(random_state.randint(np.iinfo(np.int32).max))
        chosen = np.sort(rng.choice(n_total, self._n_sampled, replace=False))
        patches = _to_float(gather(images, self._patch_size, self._stride, chosen))
        return patches.reshape(patches.shape[0], -1).astype(np.float32)

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
            ``n_features_out_`` features per image. A dask array ``X`` gives a
            dask array with its row chunks.
        """
        check_is_fitted(self)
        if is_dask_array(X):
            return map_row_blocks(self, "transform", X)
        return self._transform(self._validate_images(X, reset=False))

    def _transform(self, images):
        log = self._log if self.verbose else None
        return self._get_encoder().transform(
            images, batch_size=self.batch_size, n_jobs=self.n_jobs, log=log
        )

    def _get_encoder(self):
        """The cached engine: built by ``fit``, or after unpickling on the device present."""
        if getattr(self, "_encoder", None) is None:
            from ._encoder import PatchEncoder

            device = runtime_device(self.device_, type(self).__name__)
            mirror_projection = None
            if self.flip_invariant and self.full_input == "whitened":
                projection = self._whitened_mirror() @ self._full_projection.astype(np.float64)
                mirror_projection = projection.astype(np.float32)
            index = getattr(self, "index_", None)
            if index is not None and device != self.device_:  # pragma: no cover - GPU only
                index = None
            settings = dict(
                patch_size=self._patch_size, stride=self._stride,
                grid_shape=self.patch_grid_shape_, pooling=self._pooling,
                encoding=self.encoding, n_neighbors=self.n_neighbors_,
                alpha=float(getattr(self, "alpha", 0.25)),
                sign_convention=self._sign_convention(), full_input=self.full_input,
                flip_invariant=self.flip_invariant,
                patch_normalize=self.patch_normalize, power=self.power,
                knn_backend=self.knn_backend,
                index_gpus=getattr(self, "index_gpus", "device"),
            )
            self._encoder = PatchEncoder(
                mean=self.mean_, whitening=self.whitening_, atoms=self.atoms_,
                full_projection=self._full_projection, mirror_projection=mirror_projection,
                settings=settings, device=device, index=index,
            )
            if self._encoder.index is not None:
                self.index_ = self._encoder.index
        return self._encoder

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
        signs = ["pos", "neg"] if self._sign_convention() is not None else ["pos"]
        oh, ow = self.pooled_grid_shape_
        regions = [f"r{i}_{j}" for i in range(oh) for j in range(ow)]
        n_kept = self.atoms_.shape[0] // 2 if self.flip_invariant else self.atoms_.shape[0]
        atoms = [f"a{a}" for a in range(n_kept)]
        names = [f"{prefix}_{s}_{r}_{a}" for s in signs for r in regions for a in atoms]
        if self.encoding == "full":
            comps = [f"c{c}" for c in range(self._per_atom)]
            names = [f"{n}_{c}" for n in names for c in comps]
        return np.asarray(names, dtype=object)

    def transform_maps(self, X):
        """The codes of each image as a map over the pooled grid.

        ``transform(X)`` rearranged: with ``pooling=None`` one code vector per
        patch position, the per-location code map on which the published
        convolutional heads are built (Thiry et al.; Brutzkus et al.).

        Parameters
        ----------
        X : array-like of shape (n, H, W), (n, H, W, C) or (n, H*W*C)
            Images of the shape seen in ``fit``.

        Returns
        -------
        maps : ndarray of shape (n, oh, ow, n_codes), float32
            ``(oh, ow) = pooled_grid_shape_``; the codes of a cell in the
            order ``(sign, atom[, component])``, so that
            ``maps[:, i, j]`` holds the features named ``*_r{i}_{j}_*``.
            Always an array (a dask array for a dask ``X``), whatever
            ``set_output`` or the global ``transform_output`` say: a map
            is not a table.
        """
        check_is_fitted(self)
        if is_dask_array(X):
            return map_row_blocks(self, "transform_maps", X)
        # the private path: the set_output wrapper of transform would give a DataFrame
        features = self._transform(self._validate_images(X, reset=False))
        oh, ow = self.pooled_grid_shape_
        n_signs = 1 if self._sign_convention() is None else 2
        maps = features.reshape(features.shape[0], n_signs, oh, ow, -1)
        return maps.transpose(0, 2, 3, 1, 4).reshape(features.shape[0], oh, ow, -1)

    def __getstate__(self):
        state = super().__getstate__()
        # the engine and the flat index hold nothing but the fitted arrays (and
        # may live on a GPU): rebuilt from them on first use after unpickling
        state.pop("index_", None)
        state.pop("_encoder", None)
        return state

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.transformer_tags.preserves_dtype = ["float32"]
        return tags
