"""Do image patches cluster? Held-out nearest-atom distances against a Gaussian reference.

Brutzkus et al. (2022) prove that the patch-dictionary model learns
efficiently when the patch distribution has a small covering number, and
report that patches sampled from CIFAR-10 and ImageNet are "clustered
together". :func:`patch_covering` measures that: for dictionaries of growing
size it fits the atoms on patches of some images and measures how far the
patches of *other* images are from their nearest atom, and does the same for
Gaussian patches with the real patches' mean and covariance. A distribution
that clusters is covered by fewer atoms than the Gaussian of its covariance,
which has no structure beyond its second moments.

The searches are exact (faiss ``IndexFlatL2``) and chunked, so memory is
bounded by ``_WORKING_MEMORY`` bytes of scores whatever the number of
held-out patches.
"""

from numbers import Integral, Real

import numpy as np
from sklearn.utils import Bunch, check_random_state, gen_batches
from sklearn.utils._param_validation import Interval, StrOptions, validate_params

from ..embedding import _whitening
from ..utils._grid import _extract_view
from ..utils._grid import patch_grid_shape
from ..utils._validation import _to_float, check_images, check_size_pair

__all__ = ["patch_covering"]

_WORKING_MEMORY = 32 * 2**20  # bytes of query-atom scores per search chunk
_SEED_MAX = np.iinfo(np.int32).max


def _check_sizes(n_atoms):
    """``n_atoms`` as a 1-D int64 array of positive sizes, or raise naming it."""
    values = np.atleast_1d(np.asarray(n_atoms))
    if (
        values.ndim != 1
        or values.size == 0
        or values.dtype.kind not in "iu"
        or np.any(values < 1)
    ):
        raise ValueError(
            f"n_atoms must be a positive int or a non-empty sequence of positive "
            f"ints (dictionary sizes), got {n_atoms!r}."
        )
    return values.astype(np.int64)


def _check_quantiles(quantiles):
    values = np.atleast_1d(np.asarray(quantiles, dtype=np.float64))
    if values.ndim != 1 or values.size == 0 or np.any((values < 0) | (values > 1)):
        raise ValueError(
            f"quantiles must be a non-empty sequence of levels in [0, 1], got {quantiles!r}."
        )
    return values


def _split_images(n_images, held_out_fraction, rng):
    """Disjoint image indices (fit, held out), each sorted and non-empty."""
    if n_images < 2:
        raise ValueError(
            f"images holds {n_images} image(s); patch_covering needs at least 2, "
            "so that the held-out patches come from other images than the fit patches."
        )
    n_held = min(n_images - 1, max(1, int(round(held_out_fraction * n_images))))
    order = rng.permutation(n_images)
    return np.sort(order[n_held:]), np.sort(order[:n_held])


def _sample_rows(images, patch_size, n_wanted, rng):
    """Up to ``n_wanted`` distinct patches (stride 1) of ``images`` as float rows."""
    grid = patch_grid_shape(images.shape[1:3], patch_size)
    n_total = images.shape[0] * grid[0] * grid[1]
    if n_wanted >= n_total:
        chosen = np.arange(n_total)
    else:
        chosen = np.sort(rng.choice(n_total, n_wanted, replace=False))
    image, rest = np.divmod(chosen, grid[0] * grid[1])
    row, col = np.divmod(rest, grid[1])
    patches = _extract_view(images, patch_size, (1, 1), ((0, 0), (0, 0)))[image, row, col]
    return _to_float(patches).reshape(len(chosen), -1).astype(np.float32)


def _gaussian_like(mean, covariance, n_rows, rng):
    """``n_rows`` draws of N(mean, covariance) as float32 rows (a PSD ``covariance``)."""
    eigenvalues, eigenvectors = np.linalg.eigh(covariance)
    factor = eigenvectors * np.sqrt(np.clip(eigenvalues, 0.0, None))  # factor @ factor.T = cov
    draws = rng.standard_normal((n_rows, mean.size)) @ factor.T + mean
    return draws.astype(np.float32)


def _dictionary(points, n_atoms, dictionary, n_iter, rng):
    from ..utils import _faiss

    if dictionary == "data":
        return points[np.sort(rng.choice(points.shape[0], n_atoms, replace=False))]
    return _faiss.faiss_kmeans(points, n_atoms, n_iter=n_iter, seed=rng.integers(_SEED_MAX))


def _nearest_distances(atoms, queries):
    """Euclidean distance of every query row to its nearest atom: exact, chunked."""
    from ..utils import _faiss

    index = _faiss.build_index(atoms)
    distances = np.empty(queries.shape[0], dtype=np.float64)
    rows = max(1, _WORKING_MEMORY // (4 * atoms.shape[0]))
    for batch in gen_batches(queries.shape[0], rows):
        squared, _ = _faiss.index_search(index, queries[batch], 1)
        # float32 expansion ||q||^2 + ||a||^2 - 2 q.a can dip below zero at a hit
        distances[batch] = np.sqrt(np.clip(squared[:, 0].astype(np.float64), 0.0, None))
    return distances


@validate_params(
    {
        "images": ["array-like"],
        "patch_size": [Interval(Integral, 1, None, closed="left"), tuple, list],
        "n_atoms": [Interval(Integral, 1, None, closed="left"), "array-like"],
        "n_fit": [Interval(Integral, 1, None, closed="left")],
        "n_held_out": [Interval(Integral, 1, None, closed="left")],
        "held_out_fraction": [Interval(Real, 0, 1, closed="neither")],
        "whiten": [StrOptions({"zca", "pca"}), None],
        "whiten_reg": [Interval(Real, 0, None, closed="left")],
        "whiten_form": [StrOptions({"inside_sqrt", "outside_sqrt"})],
        "patch_normalize": ["boolean"],
        "dictionary": [StrOptions({"kmeans", "data"})],
        "quantiles": ["array-like"],
        "n_iter": [Interval(Integral, 1, None, closed="left")],
        "random_state": ["random_state"],
        "return_samples": ["boolean"],
    },
    prefer_skip_nested_validation=True,
)
def patch_covering(
    images,
    *,
    patch_size=6,
    n_atoms=(1, 16, 64, 256, 1024),
    n_fit=65536,
    n_held_out=10000,
    held_out_fraction=0.2,
    whiten="zca",
    whiten_reg=1e-3,
    whiten_form="inside_sqrt",
    patch_normalize=False,
    dictionary="kmeans",
    quantiles=(0.1, 0.25, 0.5, 0.75, 0.9),
    n_iter=25,
    random_state=None,
    return_samples=False,
):
    """Distance of held-out patches to their nearest atom, real against Gaussian.

    The covering check of Brutzkus et al.'s assumption that image patches are
    clustered. The images are split at random into fit images and held-out
    images (``held_out_fraction`` of them, at least one of each): ``n_fit``
    patches are drawn without replacement from the fit images and
    ``n_held_out`` from the held-out images, so no held-out patch overlaps a
    fit patch or shares its image. The whitening is fitted on the fit patches
    exactly as :class:`~skpatch.PatchDictionaryEmbedding` fits it (uint8
    scaled to [0, 1], optional ``patch_normalize``, then ``whiten``,
    ``whiten_reg``, ``whiten_form``) and applied to every patch. For each size
    in ``n_atoms`` a dictionary is built on the whitened fit patches and each
    held-out patch's Euclidean distance to its nearest atom is measured
    (exact faiss search, in chunks).

    The reference is Gaussian: as many fit and held-out patches drawn from
    the normal distribution with the fit patches' mean and covariance (before
    whitening), whitened by the same whitening, with dictionaries built the
    same way on the Gaussian fit draws. Real and Gaussian patches then have
    the same first and second moments in the measured space; what differs is
    only the structure beyond them.

    Parameters
    ----------
    images : array-like of shape (n, H, W) or (n, H, W, C)
        At least two images, channels last; uint8 is scaled to [0, 1].
    patch_size : int or tuple (ph, pw), default=6
        Patch height and width (stride 1).
    n_atoms : int or sequence of int, default=(1, 16, 64, 256, 1024)
        Dictionary sizes; each at most the number of fit patches drawn. One
        atom (the mean patch) is the baseline: real patches, whose norms
        spread more than a Gaussian's, already have a lower median distance
        to it than Gaussian ones (see Notes).
    n_fit : int, default=65536
        Fit patches drawn (all patches of the fit images when they have fewer).
    n_held_out : int, default=10000
        Held-out patches drawn (all patches of the held-out images when
        they have fewer).
    held_out_fraction : float in (0, 1), default=0.2
        Fraction of the images that the held-out patches come from (rounded,
        at least 1 image, at most ``n - 1``).
    whiten : {'zca', 'pca'} or None, default='zca'
        As in :class:`~skpatch.PatchDictionaryEmbedding`; None measures
        distances between the raw (centred) patches.
    whiten_reg : float, default=1e-3
        The whitening's regularizer, as in the embedding.
    whiten_form : {'inside_sqrt', 'outside_sqrt'}, default='inside_sqrt'
        Where ``whiten_reg`` enters the whitening scale, as in the embedding.
    patch_normalize : bool, default=False
        Remove each patch's brightness and contrast first (Coates et al.),
        as in the embedding; the Gaussian then has the normalized patches'
        moments.
    dictionary : {'kmeans', 'data'}, default='kmeans'
        ``'kmeans'``: faiss k-means centroids of the fit patches (seeded);
        ``'data'``: fit patches drawn without replacement.
    quantiles : sequence of float in [0, 1], default=(0.1, 0.25, 0.5, 0.75, 0.9)
        Quantile levels reported for the distances.
    n_iter : int, default=25
        Number of k-means iterations.
    random_state : int, RandomState instance or None, default=None
        Seeds the image split, the patch draws, the Gaussian draws, the data
        atoms and faiss k-means (seeds derived from it).
    return_samples : bool, default=False
        Also return the whitened patches and the dictionaries (see Returns).

    Returns
    -------
    result : :class:`~sklearn.utils.Bunch`
        With ``S = len(n_atoms)`` and ``Q = len(quantiles)``:

        - ``n_atoms`` : ndarray (S,), the dictionary sizes as given;
        - ``quantiles`` : ndarray (Q,), the levels;
        - ``real_quantiles``, ``gaussian_quantiles`` : ndarray (S, Q), the
          quantiles of the held-out nearest-atom distance over ``scale``;
        - ``real_mean``, ``gaussian_mean`` : ndarray (S,), its mean over
          ``scale``;
        - ``real_distortion``, ``gaussian_distortion`` : ndarray (S,), the
          held-out k-means distortion, the mean squared distance over
          ``scale ** 2`` (near 1 at one atom; one minus it is the fraction
          of the variance the nearest atom explains);
        - ``median_ratio`` : ndarray (S,), real median over Gaussian median;
        - ``scale`` : float, the RMS norm of the centred whitened fit
          patches, ``sqrt(mean ||w - mean(w)||^2)``;
        - ``real_distances``, ``gaussian_distances`` : ndarray (S, m), the
          distances themselves (not divided), one per held-out patch, in
          the order drawn;
        - ``mean``, ``covariance`` : ndarray (d,) and (d, d), float64, the
          moments of the fit patches before whitening (covariance divided
          by the number of patches), which the Gaussian draws follow;
        - ``fit_images``, ``held_out_images`` : ndarray of int, the indices
          of the two groups of images;
        - ``n_fit``, ``n_held_out`` : int, the numbers of patches drawn;
        - with ``return_samples=True`` also ``real_fit``, ``real_held_out``,
          ``gaussian_fit``, ``gaussian_held_out`` (the whitened rows, float32)
          and ``real_atoms``, ``gaussian_atoms`` (lists of S dictionaries).

    See Also
    --------
    skpatch.PatchDictionaryEmbedding : The model whose assumption this checks.
    skpatch.plotting.plot_patch_covering : Draws the result.

    Notes
    -----
    ``scale`` is the distance scale of a one-atom dictionary: the best single
    atom is the mean patch, whose RMS distance to the patches is ``scale``;
    the Gaussian has the same ``scale`` up to sampling error, so both
    distortions start near 1 and the ratio of the two is free of any scale.
    The medians differ already at one atom: a Gaussian's distances to its
    mean concentrate near ``scale`` in high dimension, while real patches
    mix flat patches (near the mean) with edges (far from it). Compare how
    fast each curve falls with the number of atoms, not only their gap. The
    nearest
    atom of a held-out patch is searched in float32 (faiss's
    ``||q||^2 + ||a||^2 - 2 q.a``), so distances far below ``scale`` carry
    an absolute error of about ``1e-3 * scale``.

    References
    ----------
    .. [1] A. Brutzkus, A. Globerson, E. Malach, A. Regev Netser,
       S. Shalev-Shwartz. Efficient learning of CNNs using patch based
       features. ICML 2022.

    Examples
    --------
    >>> import numpy as np
    >>> from skpatch.diagnostics import patch_covering
    >>> rng = np.random.default_rng(0)
    >>> centres = rng.random((4, 3, 3))
    >>> images = centres[rng.integers(0, 4, 40)]  # 4 distinct images, one patch each
    >>> result = patch_covering(images, patch_size=3, n_atoms=(1, 16), whiten=None,
    ...                         random_state=0)
    >>> result.real_quantiles.shape, result.gaussian_quantiles.shape
    ((2, 5), (2, 5))
    >>> bool(result.real_quantiles[1, 2] < 0.01 * result.gaussian_quantiles[1, 2])
    True
    """
    patch_size = check_size_pair(patch_size, "patch_size")
    sizes = _check_sizes(n_atoms)
    levels = _check_quantiles(quantiles)
    images = check_images(images, dtype=None, input_name="images")
    if images.ndim != 4 or images.shape[0] < 1:  # pragma: no cover - check_images ensures it
        raise ValueError(f"images must be (n, H, W[, C]), got shape {images.shape}.")
    patch_grid_shape(images.shape[1:3], patch_size)  # patch larger than the image: error

    random_state = check_random_state(random_state)
    rng = np.random.default_rng(random_state.randint(_SEED_MAX))
    fit_images, held_images = _split_images(images.shape[0], held_out_fraction, rng)
    real_fit = _whitening.normalize_patches(
        _sample_rows(images[fit_images], patch_size, int(n_fit), rng), patch_normalize
    )
    real_held = _whitening.normalize_patches(
        _sample_rows(images[held_images], patch_size, int(n_held_out), rng), patch_normalize
    )
    if sizes.max() > real_fit.shape[0]:
        raise ValueError(
            f"n_atoms={n_atoms!r} asks for {int(sizes.max())} atoms but only "
            f"{real_fit.shape[0]} fit patches were drawn (n_fit={n_fit}, from "
            f"{fit_images.size} fit image(s)); lower n_atoms or pass more images."
        )

    fit64 = real_fit.astype(np.float64)
    mean = fit64.mean(axis=0)
    centred = fit64 - mean
    covariance = centred.T @ centred / fit64.shape[0]
    gauss_fit = _gaussian_like(mean, covariance, real_fit.shape[0], rng)
    gauss_held = _gaussian_like(mean, covariance, real_held.shape[0], rng)

    fitted = _whitening.fit_whitening(
        real_fit, whiten=whiten, whiten_reg=whiten_reg, whiten_form=whiten_form,
        n_full_components=1, patch_normalize=patch_normalize,
    )
    spaces = {}
    for name, (fit, held) in {"real": (real_fit, real_held),
                              "gaussian": (gauss_fit, gauss_held)}.items():
        spaces[name] = tuple(
            np.ascontiguousarray(_whitening.whiten_patches(rows, fitted.mean, fitted.whitening),
                                 dtype=np.float32)
            for rows in (fit, held)
        )
    whitened_fit = spaces["real"][0].astype(np.float64)
    scale = float(np.sqrt(np.mean(np.sum((whitened_fit - whitened_fit.mean(axis=0)) ** 2,
                                         axis=1))))

    result = Bunch(n_atoms=sizes, quantiles=levels, scale=scale, mean=mean,
                   covariance=covariance, fit_images=fit_images,
                   held_out_images=held_images, n_fit=int(real_fit.shape[0]),
                   n_held_out=int(real_held.shape[0]))
    for name, (fit, held) in spaces.items():
        distances = np.empty((sizes.size, held.shape[0]), dtype=np.float64)
        atoms = []
        for i, size in enumerate(sizes):
            atoms.append(_dictionary(fit, int(size), dictionary, int(n_iter), rng))
            distances[i] = _nearest_distances(atoms[-1], held)
        relative = distances / scale if scale > 0 else np.zeros_like(distances)
        result[f"{name}_distances"] = distances
        result[f"{name}_quantiles"] = np.quantile(relative, levels, axis=1).T
        result[f"{name}_mean"] = relative.mean(axis=1)
        result[f"{name}_distortion"] = np.mean(relative**2, axis=1)
        if return_samples:
            result[f"{name}_fit"], result[f"{name}_held_out"] = fit, held
            result[f"{name}_atoms"] = atoms
    real_median = np.median(result.real_distances, axis=1)
    gauss_median = np.median(result.gaussian_distances, axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        result.median_ratio = real_median / gauss_median
    return result
