"""Patch preprocessing of PatchDictionaryEmbedding: normalization and whitening.

One preprocessing serves the dictionary (``fit``) and the encoding
(``transform``): :func:`normalize_patches`, then :func:`whiten_patches` with
the arrays :func:`fit_whitening` returns. numpy only; :func:`whiten_patches`
also takes torch tensors (the engine applies it on the device).
"""

from typing import NamedTuple

import numpy as np

__all__ = [
    "Whitening",
    "whitening_scale",
    "fit_whitening",
    "whiten_patches",
    "normalize_patches",
    "mirror_dims",
    "whitened_mirror",
]

# Coates et al.'s brightness/contrast regularizer 10 on 0-255 pixels, on [0, 1]
_CONTRAST_REG = 10.0 / 255.0**2


class Whitening(NamedTuple):
    """The fitted whitening: ``q = (x - mean) @ whitening``."""

    mean: np.ndarray  # (d,), float32
    whitening: np.ndarray  # (d, d), float32
    explained_variance: np.ndarray  # (d,), float64, decreasing
    full_projection: np.ndarray  # (d, r), float32: whitened row -> leading PCA components


def normalize_patches(patches, patch_normalize):
    """Each patch row minus its mean, over ``sqrt(var + 10 / 255**2)`` (Coates et al.)."""
    if not patch_normalize:
        return patches
    centred = patches - patches.mean(axis=1, keepdims=True)
    scale = np.sqrt(centred.var(axis=1, keepdims=True) + _CONTRAST_REG)
    return centred / scale


def whiten_patches(patches, mean, whitening):
    """``(patches - mean) @ whitening``, for numpy arrays or torch tensors alike."""
    return (patches - mean) @ whitening


def whitening_scale(eigenvalues, whiten_reg, whiten_form="inside_sqrt"):
    """The whitening's scale of each eigendirection.

    ``'inside_sqrt'``: ``1 / sqrt(lambda + whiten_reg)`` (Thiry et al.'s code;
    a whitened variance ``lambda / (lambda + whiten_reg)``);
    ``'outside_sqrt'``: ``1 / (sqrt(lambda) + whiten_reg)`` (Brutzkus et al.'s
    code; a whitened variance ``lambda / (sqrt(lambda) + whiten_reg)**2``).
    """
    if whiten_form == "outside_sqrt":
        return 1.0 / (np.sqrt(eigenvalues) + whiten_reg)
    return 1.0 / np.sqrt(eigenvalues + whiten_reg)


def fit_whitening(patches, *, whiten, whiten_reg, n_full_components, patch_normalize,
                  whiten_form="inside_sqrt"):
    """Fit the mean, the whitening matrix and the 'full' projection on patch rows.

    Parameters
    ----------
    patches : ndarray of shape (m, d), float32
        Sampled (and normalized) patch rows.
    whiten : {'zca', 'pca'} or None
        ``'zca'``: ``W = U diag(s) U^T``; ``'pca'``: ``W = U diag(s)``; None:
        ``W = I``; ``s`` from :func:`whitening_scale`.
    whiten_reg : float
        The regularizer of :func:`whitening_scale`; 0 needs a full-rank covariance.
    n_full_components : int
        Columns of the projection of a whitened row onto its leading PCA components.
    patch_normalize : bool
        Only named in the error raised for a singular covariance.
    whiten_form : {'inside_sqrt', 'outside_sqrt'}, default='inside_sqrt'
        Where ``whiten_reg`` enters the scale (:func:`whitening_scale`).

    Returns
    -------
    whitening : Whitening
    """
    patches64 = patches.astype(np.float64)
    mean = patches64.mean(axis=0)
    centred = patches64 - mean
    cov = centred.T @ centred / patches64.shape[0]
    eigenvalues, eigenvectors = np.linalg.eigh(cov)
    order = np.argsort(eigenvalues)[::-1]
    eigenvalues = np.clip(eigenvalues[order], 0.0, None)
    eigenvectors = eigenvectors[:, order]
    dim = patches.shape[1]
    if whiten is None:
        whitening = np.eye(dim)
        full_projection = eigenvectors
    else:
        if whiten_reg == 0:
            _check_full_rank(eigenvalues, whiten, patch_normalize)
        scale = whitening_scale(eigenvalues, whiten_reg, whiten_form)
        if whiten == "zca":
            whitening = (eigenvectors * scale) @ eigenvectors.T
            full_projection = eigenvectors
        else:
            whitening = eigenvectors * scale
            full_projection = np.eye(dim)
    return Whitening(
        mean=mean.astype(np.float32),
        whitening=whitening.astype(np.float32),
        explained_variance=eigenvalues,
        full_projection=np.ascontiguousarray(
            full_projection[:, :n_full_components], dtype=np.float32
        ),
    )


def _check_full_rank(eigenvalues, whiten, patch_normalize):
    """Raise when whitening with ``whiten_reg=0`` would divide by a zero eigenvalue."""
    # float32 patches leave about eps32 of each value as residue: eps64**0.5 sits between
    tolerance = np.sqrt(np.finfo(np.float64).eps) * eigenvalues[0]
    n_zero = int(np.sum(eigenvalues <= tolerance))
    if n_zero:
        reason = (
            "patch_normalize=True removes each patch's mean"
            if patch_normalize
            else "constant or linearly dependent pixels"
        )
        raise ValueError(
            f"whiten_reg=0 cannot whiten these patches: {n_zero} of the "
            f"{eigenvalues.size} eigenvalues of the patch covariance are zero "
            f"(to float precision; {reason}), and whiten={whiten!r} "
            "divides by sqrt(eigenvalue + whiten_reg) (or sqrt(eigenvalue) + "
            "whiten_reg with whiten_form='outside_sqrt'). Pass whiten_reg > 0 "
            "(default 1e-3) or whiten=None."
        )


def mirror_dims(patch_size, channels):
    """Permutation of a patch row's ``(ph, pw, C)`` entries that mirrors it left-right."""
    ph, pw = patch_size
    return np.arange(ph * pw * channels).reshape(ph, pw, channels)[:, ::-1].ravel()


def whitened_mirror(whitening, dims):
    """``M`` with ``mirror(x) -> q M`` for whitened rows ``q = (x - mean) W``.

    ``M = W^-1 P W`` with ``P`` the mirror permutation ``dims``; ``P`` itself
    for ZCA (and no whitening), whose ``W`` commutes with ``P`` once the
    covariance is flip-symmetric.
    """
    whitening = whitening.astype(np.float64)
    permutation = np.eye(whitening.shape[0])[dims].T
    return np.linalg.solve(whitening, permutation @ whitening)
