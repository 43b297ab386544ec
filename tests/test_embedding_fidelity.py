"""PatchDictionaryEmbedding against the published methods (issue 16).

Each option that rebuilds a paper's convention is compared with an independent
computation: the paper's own formula written in numpy, or torch's pooling
function for the pooling grids.
"""

import pickle

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal
from sklearn.base import clone

import skpatch.embedding._embedding as embedding_module
from skpatch import PatchDictionaryEmbedding
from skpatch.utils import _faiss

F32 = np.finfo(np.float32).eps


def _images(n=6, height=7, width=None, channels=3, seed=0):
    """Smooth-ish random colour images: correlated pixels, like real patches."""
    width = height if width is None else width
    rng = np.random.default_rng(seed)
    base = rng.random((n, height + 1, width + 1, channels))
    images = (base[:, 1:, 1:] + base[:, :-1, :-1] + 0.3 * base[:, 1:, :-1]) / 2.3
    return images.astype(np.float64)


def _patch_rows(images, p):
    """Every p x p patch as (n, gh, gw, p * p * C) rows, by plain loops (reference)."""
    n, height, width, _ = images.shape
    gh, gw = height - p + 1, width - p + 1
    out = np.empty((n, gh, gw, p * p * images.shape[3]))
    for i in range(gh):
        for j in range(gw):
            out[:, i, j] = images[:, i : i + p, j : j + p].reshape(n, -1)
    return out


def _nearest(queries, atoms, k):
    """Indices of the k nearest atoms of each query row, by float64 distances."""
    sq_dist = ((queries[..., None, :] - atoms) ** 2).sum(axis=-1)
    return np.argsort(sq_dist, axis=-1, kind="stable")[..., :k], sq_dist


def _one_hot(nearest, n_atoms):
    codes = np.zeros(nearest.shape[:-1] + (n_atoms,))
    np.put_along_axis(codes, nearest, 1.0, axis=-1)
    return codes


def _whitened(emb, rows):
    return (rows - emb.mean_) @ emb.whitening_.astype(np.float64)


def _matmul_atol(rows, matrix):
    """Error bound of the float32 products ``rows @ matrix``: n * eps32 * (|rows| @ |matrix|)."""
    rows, matrix = np.abs(np.asarray(rows, np.float64)), np.abs(np.asarray(matrix, np.float64))
    return 2 * rows.shape[-1] * F32 * (rows @ matrix).max()


# ---------------------------------------------------------------- per-location maps


@pytest.mark.parametrize("backend, n_neighbors", [("gemm", 4), ("gemm", 1), ("faiss", 3)])
def test_no_pooling_gives_the_code_of_every_position(backend, n_neighbors):
    # a 5 x 7 patch grid: not square, so rows and columns cannot be swapped unseen
    X = _images(n=4, height=7, width=9)
    emb = PatchDictionaryEmbedding(
        patch_size=3, n_atoms=12, n_neighbors=n_neighbors, pooling=None, both_signs=True,
        knn_backend=backend, random_state=0,
    ).fit(X)
    assert emb.pooled_grid_shape_ == emb.patch_grid_shape_ == (5, 7)
    assert emb.n_features_out_ == 2 * 5 * 7 * 12
    rows = _patch_rows(X, 3)
    expected = []
    for sign in (1.0, -1.0):
        nearest, _ = _nearest(sign * _whitened(emb, rows), emb.atoms_.astype(np.float64),
                              n_neighbors)
        expected.append(_one_hot(nearest, 12))  # (n, gh, gw, Q)
    maps = emb.transform_maps(X)
    assert maps.shape == (4, 5, 7, 24)
    assert_array_equal(maps, np.concatenate(expected, axis=-1))
    # the flat rows: (sign, row, col, atom), as the feature names say
    flat = emb.transform(X)
    assert_array_equal(flat, np.stack(expected, axis=1).reshape(4, -1))
    names = emb.get_feature_names_out()
    assert len(names) == flat.shape[1]
    index = 1 * 5 * 7 * 12 + (2 * 7 + 6) * 12 + 11  # neg sign, position (2, 6), atom 11
    assert names[index] == "patchdictionaryembedding_neg_r2_6_a11"
    assert flat[1, index] == maps[1, 2, 6, 12 + 11]


def _torch_avg_pool(maps, size, stride):
    import torch

    nchw = torch.from_numpy(np.ascontiguousarray(maps)).permute(0, 3, 1, 2)
    pooled = torch.nn.functional.avg_pool2d(nchw, size, stride=stride, ceil_mode=True)
    return pooled.permute(0, 2, 3, 1).numpy()


@pytest.mark.parametrize(
    "encoding, n_neighbors, backend",
    [("hard", 4, "gemm"), ("hard", 1, "gemm"), ("hard", 3, "faiss"), ("triangle", 4, "gemm"),
     ("full", 4, "gemm"), ("full", 4, "faiss")],
)
@pytest.mark.parametrize("window", [(5, 3), (3, 2), (2, 3), (1, 4)])
def test_window_pooling_equals_torch_avg_pool2d_in_ceil_mode(encoding, n_neighbors, backend,
                                                             window):
    # a 10 x 12 patch grid: (5, 3) gives 3 x 4 windows, the last ones cut short by
    # the grid's end (torch's divisor: the positions they cover); (1, 4) drops a
    # window that would start past the end
    X = _images(n=5, height=12, width=14)
    params = dict(patch_size=3, n_atoms=12, n_neighbors=n_neighbors, encoding=encoding,
                  n_full_components=3, both_signs="raw", knn_backend=backend, random_state=0)
    per_position = PatchDictionaryEmbedding(pooling=None, **params).fit(X).transform_maps(X)
    emb = PatchDictionaryEmbedding(pooling=window, **params).fit(X)
    expected = _torch_avg_pool(per_position, *window)
    assert emb.pooled_grid_shape_ == expected.shape[1:3]
    # float32 means of up to 25 codes, summed in another order
    scale = np.abs(per_position).max()
    assert_allclose(emb.transform_maps(X), expected, rtol=0, atol=2 * 25 * F32 * scale)


def test_thiry_pooling_on_a_cifar_sized_grid():
    # Thiry et al.: 6 x 6 patches of 32 x 32 images, 27 x 27 grid, window 5, stride 3 -> 9 x 9
    X = _images(n=2, height=32, channels=1)
    emb = PatchDictionaryEmbedding(
        patch_size=6, n_atoms=16, n_neighbors=4, pooling=(5, 3), random_state=0,
    ).fit(X)
    assert emb.pooled_grid_shape_ == (9, 9)
    per_position = clone(emb).set_params(pooling=None).fit(X).transform_maps(X)
    assert_allclose(emb.transform_maps(X), _torch_avg_pool(per_position, 5, 3), rtol=0,
                    atol=2 * 25 * F32)


@pytest.mark.parametrize("pooling", [None, (3, 2)])
@pytest.mark.parametrize("encoding", ["hard", "full"])
def test_flip_invariance_holds_for_maps_and_windows(pooling, encoding):
    X = _images(n=4, height=9)
    emb = PatchDictionaryEmbedding(
        patch_size=3, n_atoms=8, n_neighbors=3, encoding=encoding, n_full_components=2,
        pooling=pooling, flip_invariant=True, random_state=0,
    ).fit(X)
    codes = emb.transform(X)
    assert_allclose(emb.transform(np.ascontiguousarray(X[:, :, ::-1])), codes, rtol=0,
                    atol=27 * 2 * F32 * np.abs(codes).max())
    # image plus mirror image: the same atoms without the symmetrization
    plain = pickle.loads(pickle.dumps(emb))
    plain.flip_invariant = False
    plain.n_features_out_ = 2 * emb.n_features_out_
    both = plain.transform_maps(X) + plain.transform_maps(np.ascontiguousarray(X[:, :, ::-1]))
    per_atom = 2 if encoding == "full" else 1
    both = both.reshape(both.shape[:3] + (8, per_atom))[:, :, :, :4] / 2
    assert_allclose(emb.transform_maps(X), both.reshape(emb.transform_maps(X).shape), rtol=0,
                    atol=27 * 2 * F32 * np.abs(codes).max())


@pytest.mark.parametrize("pooling", [None, (3, 2), (5, 3)])
@pytest.mark.parametrize("encoding, backend", [("hard", "gemm"), ("hard", "faiss"),
                                               ("triangle", "gemm"), ("full", "gemm")])
def test_new_poolings_identical_whatever_the_chunk_size(pooling, encoding, backend):
    X = _images(n=7, height=9)
    base = PatchDictionaryEmbedding(
        patch_size=3, n_atoms=10, n_neighbors=3, encoding=encoding, n_full_components=2,
        both_signs="raw", pooling=pooling, knn_backend=backend, random_state=0,
    ).fit(X)
    reference = base.transform(X)
    for batch_size in (1, 3):
        assert_array_equal(clone(base).set_params(batch_size=batch_size).fit(X).transform(X),
                           reference)
    # a pickled model keeps its pooling
    assert_array_equal(pickle.loads(pickle.dumps(base)).transform(X), reference)


@pytest.mark.parametrize(
    "pooling, match",
    [((5,), r"pooling=\(5,\) must be an int .* a pair"),
     ((0, 3), r"pair \(window size, window stride\) of positive ints"),
     ((3, 1.5), "positive ints"),
     ((6, 1), r"the 6 x 6 window is larger than the 5 x 5 patch grid"),
     ("avg", "pooling"),
     (6, "pooling must be <= 5")],
)
def test_bad_pooling(pooling, match):
    emb = PatchDictionaryEmbedding(patch_size=3, n_atoms=6, n_neighbors=2, pooling=pooling)
    with pytest.raises((ValueError, TypeError), match=match):
        emb.fit(_images(n=3))


def test_output_size_bound_names_the_parameters(monkeypatch):
    monkeypatch.setattr(embedding_module, "_MAX_FEATURES_PER_IMAGE", 10_000)
    X = _images(n=3, height=8)  # 6 x 6 grid of 3 x 3 x 3 patches
    emb = PatchDictionaryEmbedding(patch_size=3, n_atoms=10, n_neighbors=2, encoding="full",
                                   full_input="raw", pooling=None)
    # 36 positions x 10 atoms x 27 values = 9720 fits; both signs do not
    assert emb.fit(X).transform(X).shape == (3, 9720)
    with pytest.raises(ValueError, match=r"19440 features per image .*pooling=None on a 6 x 6 "
                                         r"patch grid.*27 values per atom .*full_input='raw'"):
        emb.set_params(both_signs=True).fit(X)


# ------------------------------------------------------------------ sign conventions


def _thiry_codes(emb, X, k):
    """Thiry et al.'s ``kneighbors.py``: a convolution with bias on the raw input.

    ``out = x W . (W^T p)`` with ``p`` the raw atoms; the codes of ``x`` are the k
    lowest of ``-out + |W^T p|^2 / 2`` and those of the negated input the k
    lowest of ``out + |W^T p|^2 / 2``.
    """
    whitening = emb.whitening_.astype(np.float64)
    # skpatch's atoms are whitened centred patches: the raw atoms are whitened as a + mean W
    kernel = emb.atoms_.astype(np.float64) + emb.mean_ @ whitening
    bias = 0.5 * (kernel**2).sum(axis=1)
    out = (_patch_rows(X, emb.patch_size) @ whitening) @ kernel.T
    codes = []
    for scores in (-out + bias, out + bias):
        codes.append(_one_hot(np.argsort(scores, axis=-1, kind="stable")[..., :k],
                              kernel.shape[0]))
    return codes


@pytest.mark.parametrize("backend, n_neighbors", [("gemm", 5), ("gemm", 1), ("faiss", 3)])
@pytest.mark.parametrize("whiten", ["zca", "pca"])
def test_raw_sign_convention_is_thirys(backend, n_neighbors, whiten):
    X = _images(n=5, height=7)
    emb = PatchDictionaryEmbedding(
        patch_size=3, n_atoms=16, n_neighbors=n_neighbors, whiten=whiten, pooling=None,
        both_signs="raw", knn_backend=backend, random_state=0,
    ).fit(X)
    positive, negative = _thiry_codes(emb, X, n_neighbors)
    maps = emb.transform_maps(X)
    assert_array_equal(maps[..., :16], positive)
    assert_array_equal(maps[..., 16:], negative)
    # the same as encoding the negated images with one sign
    one_sign = pickle.loads(pickle.dumps(emb))
    one_sign.both_signs = False
    one_sign.n_features_out_ //= 2
    assert_array_equal(one_sign.transform_maps(-X), negative)


@pytest.mark.parametrize("backend, n_neighbors", [("gemm", 5), ("gemm", 1), ("faiss", 3)])
def test_centred_sign_convention_negates_the_whitened_patch(backend, n_neighbors):
    X = _images(n=5, height=7)
    params = dict(patch_size=3, n_atoms=16, n_neighbors=n_neighbors, pooling=None,
                  knn_backend=backend, random_state=0)
    emb = PatchDictionaryEmbedding(both_signs="centred", **params).fit(X)
    nearest, _ = _nearest(-_whitened(emb, _patch_rows(X, 3)), emb.atoms_.astype(np.float64),
                          n_neighbors)
    maps = emb.transform_maps(X)
    assert_array_equal(maps[..., 16:], _one_hot(nearest, 16))
    # True is the centred convention
    assert_array_equal(PatchDictionaryEmbedding(both_signs=True, **params).fit(X).transform(X),
                       emb.transform(X))
    # and it differs from Thiry's, whose -x codes are not those of -q
    raw = PatchDictionaryEmbedding(both_signs="raw", **params).fit(X).transform_maps(X)
    assert_array_equal(raw[..., :16], maps[..., :16])
    assert not np.array_equal(raw[..., 16:], maps[..., 16:])


@pytest.mark.parametrize("backend", ["gemm", "faiss"])
def test_raw_sign_convention_triangle_and_full(backend):
    X = _images(n=4, height=6)
    params = dict(patch_size=3, n_atoms=10, n_neighbors=4, pooling=None, both_signs="raw",
                  knn_backend=backend, whiten="pca", random_state=0)
    rows = _patch_rows(X, 3)
    tri = PatchDictionaryEmbedding(encoding="triangle", **params).fit(X)
    negated = _whitened(tri, -rows)  # Thiry's -x, whitened: (-x - mean) W
    nearest, sq_dist = _nearest(negated, tri.atoms_.astype(np.float64), 4)
    dist = np.take_along_axis(np.sqrt(sq_dist), nearest, axis=-1)
    expected = np.zeros(sq_dist.shape)
    np.put_along_axis(expected, nearest,
                      np.maximum(0.0, dist.mean(axis=-1, keepdims=True) - dist), axis=-1)
    # squared distances from |q|^2 - 2 q.a + |a|^2 in float32: sqrt of a few eps of the scale
    scale = (negated**2).sum(axis=-1).max() + (tri.atoms_.astype(np.float64) ** 2).sum(1).max()
    assert_allclose(tri.transform_maps(X)[..., 10:], expected, rtol=0,
                    atol=2 * np.sqrt(8 * F32 * scale))
    full = PatchDictionaryEmbedding(encoding="full", n_full_components=3, **params).fit(X)
    expected = _one_hot(nearest, 10)[..., None] * negated[..., None, :3]
    got = full.transform_maps(X)[..., 30:].reshape(expected.shape)
    assert_allclose(got, expected, rtol=0, atol=_matmul_atol(rows + full.mean_, full.whitening_))


# ------------------------------------------------------------------ whitening forms


@pytest.mark.parametrize("whiten", ["zca", "pca"])
@pytest.mark.parametrize("reg", [1e-2, 0.3])
def test_outside_sqrt_whitening_is_brutzkus_formula(whiten, reg):
    X = _images(n=30)
    emb = PatchDictionaryEmbedding(
        patch_size=3, n_atoms=8, n_neighbors=2, whiten=whiten, whiten_reg=reg,
        whiten_form="outside_sqrt", n_patches_fit=10**6, random_state=0,
    ).fit(X)
    rows = _patch_rows(X, 3).reshape(-1, 27)
    centred = rows - rows.mean(axis=0)
    covariance = centred.T @ centred / rows.shape[0]
    # Brutzkus et al.'s get_whitening_matrix_from_covariance_matrix: an SVD and
    # 1 / (sqrt(s) + eps), times U^T on the right for ZCA
    u, s, _ = np.linalg.svd(covariance, hermitian=True)
    brutzkus = u @ np.diag(1.0 / (np.sqrt(s) + reg))
    if whiten == "zca":
        brutzkus = brutzkus @ u.T
    whitening = emb.whitening_.astype(np.float64)
    # PCA columns are eigenvectors up to sign: compare W W^T (ZCA is unique: W itself)
    got, want = (whitening, brutzkus) if whiten == "zca" else (whitening @ whitening.T,
                                                                 brutzkus @ brutzkus.T)
    assert_allclose(got, want, rtol=0, atol=1e-4 * np.abs(want).max())
    # the whitened covariance: lambda / (sqrt(lambda) + eps)^2
    lam = np.sort(np.linalg.eigvalsh(covariance))[::-1]
    whitened = centred @ whitening
    got = np.sort(np.linalg.eigvalsh(whitened.T @ whitened / rows.shape[0]))[::-1]
    assert_allclose(got, lam / (np.sqrt(lam) + reg) ** 2, rtol=0, atol=1e-4)


def test_no_whiten_reg_maps_one_form_onto_the_other():
    # lambda / (sqrt(lambda) + e)^2 = lambda / (lambda + r) for every lambda needs
    # r = 2 e sqrt(lambda) + e^2: a different r for each eigenvalue
    X = _images(n=30)
    params = dict(patch_size=3, n_atoms=8, n_neighbors=2, n_patches_fit=10**6, random_state=0)
    outside = PatchDictionaryEmbedding(whiten_reg=1e-2, whiten_form="outside_sqrt",
                                       **params).fit(X)
    lam = outside.explained_variance_
    needed = 2 * 1e-2 * np.sqrt(lam) + 1e-4
    assert needed.max() / needed.min() > 2


# ---------------------------------------------------------------- the Gaussian baseline


def test_gaussian_dictionary_is_kmeans_of_self_whitened_noise(monkeypatch):
    calls = []
    kmeans = _faiss.faiss_kmeans

    def recording(points, n_clusters, **kwargs):
        calls.append((np.array(points, copy=True), kwargs["seed"]))
        return kmeans(points, n_clusters, **kwargs)

    monkeypatch.setattr(_faiss, "faiss_kmeans", recording)
    X = _images(n=20, height=7)
    emb = PatchDictionaryEmbedding(
        patch_size=3, n_atoms=6, n_neighbors=2, dictionary="gaussian", n_patches_fit=400,
        random_state=5,
    ).fit(X)
    (points, seed), = calls
    # the draws of the estimator's RandomState: patch sampling, noise, k-means seed
    draws = np.random.RandomState(5).randint(np.iinfo(np.int32).max, size=3)
    assert seed == draws[2]
    noise = np.random.default_rng(draws[1]).standard_normal((400, 27), dtype=np.float32)
    # whitened by the noise's own mean and covariance: ZCA, 1 / sqrt(lambda + 1e-3)
    noise64 = noise.astype(np.float64)
    centred = noise64 - noise64.mean(axis=0)
    lam, vectors = np.linalg.eigh(centred.T @ centred / 400)
    expected = centred @ (vectors / np.sqrt(lam + 1e-3)) @ vectors.T
    assert_allclose(points, expected, rtol=0, atol=1e-4 * np.abs(expected).max())
    # white: unit covariance up to the regularizer, unlike the data's whitened patches
    got = np.linalg.eigvalsh(np.cov(points, rowvar=False, bias=True))
    assert_allclose(got, lam / (lam + 1e-3), rtol=0, atol=1e-4)
    # the atoms are k-means centroids of those points: a fixed point of Lloyd's step
    labels = ((points[:, None] - emb.atoms_[None]) ** 2).sum(axis=2).argmin(axis=1)
    means = np.stack([points[labels == a].mean(axis=0) for a in range(6)])
    assert np.abs(means - emb.atoms_).max() < 0.05 * np.abs(emb.atoms_).max()
    # and the encoding is the usual one, against these atoms
    codes = clone(emb).set_params(pooling=None).fit(X).transform_maps(X)
    nearest, _ = _nearest(_whitened(emb, _patch_rows(X, 3)), emb.atoms_.astype(np.float64), 2)
    assert_array_equal(codes, _one_hot(nearest, 6))


def test_standard_normal_dictionary_is_the_former_gaussian():
    X = _images(n=4)
    emb = PatchDictionaryEmbedding(patch_size=3, n_atoms=10, n_neighbors=3,
                                   dictionary="standard_normal", random_state=3).fit(X)
    state = np.random.RandomState(3)
    state.randint(np.iinfo(np.int32).max)  # the patch sampling's seed
    assert_array_equal(emb.atoms_, state.standard_normal((10, 27)).astype(np.float32))
    # no patches are clustered: more atoms than sampled patches is fine
    PatchDictionaryEmbedding(patch_size=3, n_atoms=60, n_neighbors=3,
                             dictionary="standard_normal", n_patches_fit=20).fit(X)
    with pytest.raises(ValueError, match="n_atoms=60 is larger than the 20 patches"):
        PatchDictionaryEmbedding(patch_size=3, n_atoms=60, n_neighbors=3,
                                 dictionary="gaussian", n_patches_fit=20).fit(X)


# ------------------------------------------------------------------------ Phi_full


@pytest.mark.parametrize("both_signs", [False, "centred", "raw"])
@pytest.mark.parametrize("backend", ["gemm", "faiss"])
def test_raw_full_scatters_the_raw_patch(both_signs, backend):
    # Brutzkus et al.'s get_full_embedding: the unfolded input patch repeated per
    # atom, times the 0/1 code
    X = _images(n=4, height=6)
    emb = PatchDictionaryEmbedding(
        patch_size=3, n_atoms=8, n_neighbors=3, encoding="full", full_input="raw",
        pooling=None, both_signs=both_signs, knn_backend=backend, random_state=0,
    ).fit(X)
    assert emb.n_features_out_ == (1 if both_signs is False else 2) * 16 * 8 * 27
    rows = _patch_rows(X, 3)
    atoms = emb.atoms_.astype(np.float64)
    maps = emb.transform_maps(X).reshape(4, 4, 4, -1, 8, 27)
    encoded = [rows]
    if both_signs == "raw":
        encoded.append(-rows)
    elif both_signs == "centred":
        encoded.append(2 * emb.mean_ - rows)  # the input whose whitened row is -q
    for s, patch in enumerate(encoded):
        nearest, _ = _nearest(_whitened(emb, patch), atoms, 3)
        expected = _one_hot(nearest, 8)[..., None] * patch[..., None, :]
        assert_allclose(maps[:, :, :, s], expected, rtol=2 * F32, atol=2 * F32)
    # pooled: the region means of the same codes
    pooled = clone(emb).set_params(pooling=2).fit(X).transform_maps(X)
    regions = maps.reshape(4, 2, 2, 2, 2, -1).mean(axis=(2, 4))
    assert_allclose(pooled, regions.reshape(pooled.shape), rtol=0, atol=8 * F32)


def test_whitened_full_is_the_paper_scatter_of_xW_minus_the_mean_offset():
    # documented: Phi_full(q) with q = (x - mean) W is Phi_full(x W) minus
    # Phi_hard times mean W, on the leading PCA components
    X = _images(n=3, height=6)
    params = dict(patch_size=3, n_atoms=8, n_neighbors=3, pooling=None, whiten="pca",
                  random_state=0)
    full = PatchDictionaryEmbedding(encoding="full", n_full_components=4, **params).fit(X)
    hard = PatchDictionaryEmbedding(encoding="hard", **params).fit(X).transform_maps(X)
    rows = _patch_rows(X, 3)
    whitening = full.whitening_.astype(np.float64)
    scatter = hard[..., None] * (rows @ whitening)[..., None, :4]
    offset = hard[..., None] * (full.mean_ @ whitening)[:4]
    got = full.transform_maps(X).reshape(scatter.shape)
    assert_allclose(got, scatter - offset, rtol=0,
                    atol=_matmul_atol(rows - full.mean_, full.whitening_))


def test_raw_full_with_flip_invariance_and_feature_names():
    X = _images(n=4, height=7)
    emb = PatchDictionaryEmbedding(
        patch_size=3, n_atoms=8, n_neighbors=3, encoding="full", full_input="raw",
        pooling=(3, 2), flip_invariant=True, random_state=0,
    ).fit(X)
    codes = emb.transform(X)
    assert codes.shape[1] == emb.n_features_out_ == 2 * 2 * 4 * 27
    assert_allclose(emb.transform(np.ascontiguousarray(X[:, :, ::-1])), codes, rtol=0,
                    atol=27 * 4 * F32 * np.abs(codes).max())
    names = emb.get_feature_names_out()
    assert len(names) == codes.shape[1]
    assert names[-1] == "patchdictionaryembedding_pos_r1_1_a3_c26"


# ------------------------------------------------------------------- selection


@pytest.mark.parametrize("n_cols, k", [(1024, 256), (1024, 1), (1000, 7), (2048, 512), (16, 3)])
def test_engine_selection_is_the_top_k_of_each_row(n_cols, k):
    import torch

    from skpatch.embedding._encoder import select_mask

    rng = np.random.default_rng(n_cols + k)
    scores = rng.standard_normal((300, n_cols)).astype(np.float32)
    scores[:5, : n_cols // 2] = 1.0  # ties across the threshold: exactly k kept, among them
    mask = select_mask(torch.from_numpy(scores), k).numpy()
    assert_array_equal(mask.sum(axis=1), np.full(300, k))
    order = np.argsort(-scores[5:], axis=1, kind="stable")[:, :k]
    assert_array_equal(mask[5:], _one_hot(order, n_cols))
    kept = np.where(mask[:5] > 0, scores[:5], np.inf).min(axis=1)
    dropped = np.where(mask[:5] > 0, -np.inf, scores[:5]).max(axis=1)
    assert np.all(kept >= dropped)
    assert_array_equal(mask, _faiss.select_mask(torch.from_numpy(scores), k).numpy())
