import pickle
import warnings

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal
from sklearn.base import clone

from skpatch import PatchDictionaryEmbedding
import skpatch.embedding._encoder as encoder_module
import skpatch.embedding._embedding as embedding_module
from skpatch.utils import _faiss
from _helpers import near_ties


def _images(n=12, size=7, channels=3, seed=0):
    """Smooth-ish random colour images: correlated pixels, like real patches."""
    rng = np.random.default_rng(seed)
    base = rng.random((n, size + 1, size + 1, channels))
    images = (base[:, 1:, 1:] + base[:, :-1, :-1] + 0.3 * base[:, 1:, :-1]) / 2.3
    return images.astype(np.float64)


F32 = np.finfo(np.float32).eps


def _whitening_rtol(emb):
    """Whitened variances are 1 up to float32 rounding (patches, ``whitening_``).

    The rounding of the patches perturbs the covariance by about eps32 of its
    largest eigenvalue; whitening divides it by the smallest one.
    """
    eigenvalues = emb.explained_variance_
    condition = eigenvalues[0] / (eigenvalues[-1] + emb.whiten_reg)
    return eigenvalues.size * F32 * condition


def _matmul_atol(rows, matrix):
    """Error bound of the float32 products ``rows @ matrix``: n * eps32 * (|rows| @ |matrix|)."""
    rows, matrix = np.abs(np.asarray(rows, np.float64)), np.abs(np.asarray(matrix, np.float64))
    return 2 * rows.shape[-1] * F32 * (rows @ matrix).max()


def _patches_loop(images, p):
    """Every p x p patch, image-major then row-major, by plain loops (reference)."""
    n, height, width, channels = images.shape
    rows = []
    for k in range(n):
        for i in range(height - p + 1):
            for j in range(width - p + 1):
                rows.append(images[k, i : i + p, j : j + p, :].ravel())
    return np.asarray(rows, dtype=np.float64)


def _per_position(emb, X):
    """Codes reshaped to (n, n_signs, gh * gw, Q[, r]) when pooling equals the grid."""
    codes = emb.transform(X)
    n_signs = 2 if emb.both_signs else 1
    shape = (X.shape[0], n_signs, emb.pooling**2, emb.atoms_.shape[0])
    if emb.encoding == "full":
        shape += (emb.n_full_components,)
    return codes.reshape(shape)


def _brute_neighbours(emb, X, sign=1.0):
    """k nearest atoms of every whitened patch, by float64 distances to all atoms."""
    rows = _patches_loop(np.asarray(X, dtype=np.float64), emb.patch_size)
    whitened = (rows - emb.mean_) @ emb.whitening_.astype(np.float64) * sign
    atoms = emb.atoms_.astype(np.float64)
    sq_dist = ((whitened[:, None, :] - atoms[None, :, :]) ** 2).sum(axis=2)
    order = np.argsort(sq_dist, axis=1, kind="stable")
    return whitened, sq_dist, order[:, : emb.n_neighbors_]


@pytest.mark.parametrize("whiten", ["zca", "pca"])
def test_whitening_makes_covariance_identity(whiten):
    X = _images(n=30)
    emb = PatchDictionaryEmbedding(
        patch_size=3, n_atoms=8, n_neighbors=2, whiten=whiten, whiten_reg=1e-9,
        n_patches_fit=10**6, random_state=0,
    ).fit(X)
    rows = _patches_loop(X, 3)
    # the mean of float32-rounded patches, rounded to float32: within 2 ulp
    assert_allclose(emb.mean_, rows.mean(axis=0), rtol=2 * F32)
    whitened = (rows - rows.mean(axis=0)) @ emb.whitening_.astype(np.float64)
    cov = np.cov(whitened, rowvar=False, bias=True)
    assert_allclose(cov, np.eye(27), rtol=0, atol=_whitening_rtol(emb))
    if whiten == "zca":
        # ZCA is the symmetric whitening matrix, the inverse square root of the covariance
        assert_allclose(emb.whitening_, emb.whitening_.T, rtol=0,
                        atol=4 * F32 * np.abs(emb.whitening_).max())


def test_whitening_regularization_matches_formula():
    X = _images(n=30)
    reg = 1e-2
    emb = PatchDictionaryEmbedding(
        patch_size=3, n_atoms=8, n_neighbors=2, whiten_reg=reg, n_patches_fit=10**6,
        random_state=0,
    ).fit(X)
    rows = _patches_loop(X, 3)
    cov = np.cov(rows, rowvar=False, bias=True)
    eigenvalues = np.linalg.eigvalsh(cov)[::-1]
    # float32 patches perturb the covariance by about eps32 of its largest eigenvalue
    assert_allclose(emb.explained_variance_, eigenvalues, rtol=0,
                    atol=eigenvalues.size * F32 * eigenvalues[0])
    whitened = (rows - rows.mean(axis=0)) @ emb.whitening_.astype(np.float64)
    # whitened covariance has eigenvalues lambda / (lambda + reg), all <= 1
    got = np.sort(np.linalg.eigvalsh(np.cov(whitened, rowvar=False, bias=True)))[::-1]
    assert_allclose(got, eigenvalues / (eigenvalues + reg), rtol=0, atol=_whitening_rtol(emb))


@pytest.mark.parametrize("n_neighbors", [5, 1])
@pytest.mark.parametrize("backend", ["faiss", "gemm"])
@pytest.mark.parametrize("dictionary", ["kmeans", "data", "gaussian"])
def test_hard_codes_are_the_brute_force_neighbours(backend, dictionary, n_neighbors, monkeypatch):
    # k = 1 on the GEMM path scores 7-row blocks: 96 patches end in a partial block
    monkeypatch.setattr(encoder_module, "_NEAREST_BLOCK_BYTES", 7 * 20 * 4)
    X = _images(n=6, size=6)
    emb = PatchDictionaryEmbedding(
        patch_size=3, n_atoms=20, n_neighbors=n_neighbors, dictionary=dictionary, pooling=4,
        both_signs=True, knn_backend=backend, random_state=0,
    ).fit(X)
    codes = _per_position(emb, X)  # pooling 4 on a 4x4 grid: one position per region
    # patches whose k-th and (k+1)-th atoms tie to float32 rounding may pick either
    n_ties = near_ties(emb, X)
    for s, sign in enumerate([1.0, -1.0]):
        got = codes[:, s].reshape(-1, 20)
        assert set(np.unique(got)) == {0.0, 1.0}
        assert_array_equal(got.sum(axis=1), np.full(got.shape[0], float(n_neighbors)))
        _, _, nearest = _brute_neighbours(emb, X, sign)
        expected = np.zeros_like(got)
        np.put_along_axis(expected, nearest, 1.0, axis=1)
        if n_ties == 0:
            assert_array_equal(got, expected)
        else:
            assert (got != expected).any(axis=1).sum() <= n_ties


def test_data_dictionary_atoms_are_whitened_patches():
    X = _images(n=5, size=6)
    emb = PatchDictionaryEmbedding(
        patch_size=3, n_atoms=10, n_neighbors=2, dictionary="data", random_state=1
    ).fit(X)
    rows = _patches_loop(X, 3)
    whitened = (rows - emb.mean_) @ emb.whitening_.astype(np.float64)
    dist = ((emb.atoms_[:, None, :] - whitened[None]) ** 2).sum(axis=2)
    # the atoms were whitened in float32: equal up to that product's rounding
    tolerance = _matmul_atol(rows - emb.mean_, emb.whitening_)
    assert np.all(np.sqrt(dist.min(axis=1)) <= np.sqrt(27) * tolerance)
    assert len(set(dist.argmin(axis=1))) == 10  # drawn without replacement


def test_kmeans_atoms_are_near_cluster_means():
    X = _images(n=20, size=6)
    emb = PatchDictionaryEmbedding(
        patch_size=3, n_atoms=6, n_neighbors=2, random_state=0, n_patches_fit=10**6
    ).fit(X)
    rows = _patches_loop(X, 3)
    whitened = (rows - emb.mean_) @ emb.whitening_.astype(np.float64)
    labels = ((whitened[:, None] - emb.atoms_[None]) ** 2).sum(axis=2).argmin(axis=1)
    means = np.stack([whitened[labels == a].mean(axis=0) for a in range(6)])
    # after 25 Lloyd iterations the centroids are (close to) a fixed point
    assert np.abs(means - emb.atoms_).max() < 0.05 * np.abs(emb.atoms_).max()


@pytest.mark.parametrize("backend", ["faiss", "gemm"])
@pytest.mark.parametrize("n_neighbors", [4, 1.0])
def test_triangle_equals_formula(backend, n_neighbors):
    X = _images(n=5, size=6)
    emb = PatchDictionaryEmbedding(
        patch_size=3, n_atoms=12, n_neighbors=n_neighbors, encoding="triangle",
        pooling=4, knn_backend=backend, random_state=0,
    ).fit(X)
    got = _per_position(emb, X)[:, 0].reshape(-1, 12)
    _, sq_dist, nearest = _brute_neighbours(emb, X)
    dist = np.sqrt(sq_dist)
    expected = np.zeros_like(dist)
    for row in range(dist.shape[0]):
        near = nearest[row]
        mean = dist[row, near].mean()
        expected[row, near] = np.maximum(0.0, mean - dist[row, near])
    # float32 |q|^2 - 2 q.a + |a|^2 errs by a few eps32 (|q|^2 + |a|^2) on squared
    # distances: by the square root of that on distances near 0 (a patch on an
    # atom); a triangle value holds two distances
    sq_scale = (np.sum(_brute_neighbours(emb, X)[0] ** 2, axis=1).max()
                + np.sum(emb.atoms_.astype(np.float64) ** 2, axis=1).max())
    assert_allclose(got, expected, rtol=0, atol=2 * np.sqrt(4 * F32 * sq_scale))


@pytest.mark.parametrize("backend", ["faiss", "gemm"])
def test_full_scatters_leading_components(backend):
    X = _images(n=4, size=5)
    emb = PatchDictionaryEmbedding(
        patch_size=3, n_atoms=10, n_neighbors=3, encoding="full", whiten="pca",
        n_full_components=4, pooling=3, both_signs=True, knn_backend=backend,
        random_state=0,
    ).fit(X)
    codes = _per_position(emb, X)
    for s, sign in enumerate([1.0, -1.0]):
        whitened, _, nearest = _brute_neighbours(emb, X, sign)
        expected = np.zeros((whitened.shape[0], 10, 4))
        for row in range(whitened.shape[0]):
            expected[row, nearest[row]] = whitened[row, :4]
        # float32 whitening of the patches against the float64 reference
        atol = _matmul_atol(_patches_loop(X, 3) - emb.mean_, emb.whitening_)
        assert_allclose(codes[:, s].reshape(-1, 10, 4), expected, rtol=0, atol=atol)


def test_pooling_averages_regions():
    X = _images(n=3, size=7)  # 3x3 patches: 5x5 grid, regions of rows {0,1,2},{3,4}
    params = dict(patch_size=3, n_atoms=8, n_neighbors=3, random_state=0)
    fine = PatchDictionaryEmbedding(pooling=5, **params).fit(X)
    coarse = PatchDictionaryEmbedding(pooling=2, **params).fit(X)
    per_position = _per_position(fine, X)[:, 0].reshape(3, 5, 5, 8)
    blocks = [(slice(0, 3), slice(0, 3)), (slice(0, 3), slice(3, 5)),
              (slice(3, 5), slice(0, 3)), (slice(3, 5), slice(3, 5))]
    expected = np.stack([per_position[:, r, c].mean(axis=(1, 2)) for r, c in blocks], 1)
    # float32 means of up to 9 (then 25) codes, summed in any order
    assert_allclose(coarse.transform(X).reshape(3, 4, 8), expected, rtol=2 * 9 * F32)
    glob = PatchDictionaryEmbedding(pooling=1, **params).fit(X).transform(X)
    assert_allclose(glob, per_position.mean(axis=(1, 2)), rtol=2 * 25 * F32)


@pytest.mark.parametrize("encoding", ["hard", "full", "triangle"])
@pytest.mark.parametrize("backend", ["faiss", "gemm"])
def test_transform_identical_whatever_the_chunk_size(encoding, backend):
    X = _images(n=9, size=7)
    base = PatchDictionaryEmbedding(
        patch_size=3, n_atoms=16, n_neighbors=5, encoding=encoding, both_signs=True,
        knn_backend=backend, random_state=0, batch_size="auto",
    ).fit(X)
    reference = base.transform(X)
    assert reference.dtype == np.float32
    for batch_size in (1, 2, 4):
        other = clone(base).set_params(batch_size=batch_size).fit(X)
        assert_array_equal(other.transform(X), reference)


@pytest.mark.parametrize("n_neighbors", [1, 5])
def test_chunks_in_threads_equal_one_thread(n_neighbors):
    import torch

    X = _images(n=9, size=7)
    emb = PatchDictionaryEmbedding(
        patch_size=3, n_atoms=16, n_neighbors=n_neighbors, both_signs=True,
        knn_backend="gemm", batch_size=2, random_state=0,
    ).fit(X)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        sequential = emb.set_params(n_jobs=1).transform(X)
        torch.set_num_threads(3)
        threaded = emb.set_params(n_jobs=3).transform(X)  # five chunks over three threads
        assert torch.get_num_threads() == 3  # the caller's setting is left alone
    finally:
        torch.set_num_threads(threads)
    assert_array_equal(threaded, sequential)


def test_overlapping_transforms_restore_the_callers_threads():
    import threading

    import torch

    X = _images(n=9, size=7)
    emb = PatchDictionaryEmbedding(
        patch_size=3, n_atoms=16, n_neighbors=5, both_signs=True,
        knn_backend="gemm", batch_size=1, random_state=0,
    ).fit(X)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        expected = emb.set_params(n_jobs=1).transform(X)
        torch.set_num_threads(3)
        emb.set_params(n_jobs=3)
        results = [None] * 4

        def run(i):
            results[i] = emb.transform(X)

        workers = [threading.Thread(target=run, args=(i,)) for i in range(4)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(threads)
    for result in results:
        assert_array_equal(result, expected)


def test_backends_agree():
    X = _images(n=8, size=7)
    params = dict(patch_size=3, n_atoms=32, n_neighbors=8, random_state=0)
    fitted = PatchDictionaryEmbedding(knn_backend="faiss", **params).fit(X)
    a = fitted.transform(X)
    b = PatchDictionaryEmbedding(knn_backend="gemm", **params).fit(X).transform(X)
    n_ties = near_ties(fitted, X)
    if n_ties == 0:  # the same neighbour sets on any CPU: the same bits
        assert_array_equal(a, b)
    else:  # a swapped neighbour moves one count between two slots: L1 <= 2 per tie
        assert np.abs(a - b).sum() <= 2 * n_ties
        assert np.mean(a == b) > 0.99


@pytest.mark.parametrize("dictionary", ["kmeans", "data", "gaussian"])
def test_deterministic_for_a_seed(dictionary):
    X = _images(n=8, size=7)
    params = dict(patch_size=3, n_atoms=10, n_neighbors=3, dictionary=dictionary,
                  n_patches_fit=100)
    a = PatchDictionaryEmbedding(random_state=3, **params).fit(X)
    b = PatchDictionaryEmbedding(random_state=3, **params).fit(X)
    c = PatchDictionaryEmbedding(random_state=4, **params).fit(X)
    assert_array_equal(a.atoms_, b.atoms_)
    assert_array_equal(a.transform(X), b.transform(X))
    assert not np.array_equal(a.atoms_, c.atoms_)


def test_uint8_is_scaled_like_floats():
    X = (_images(n=6) * 255).astype(np.uint8)
    params = dict(patch_size=3, n_atoms=10, n_neighbors=3, random_state=0)
    a = PatchDictionaryEmbedding(**params).fit_transform(X)
    b = PatchDictionaryEmbedding(**params).fit_transform(X.astype(np.float32) / 255)
    # the same float32 division as the validation's: the same numbers throughout
    assert_array_equal(a, b)


def test_patch_normalize_removes_brightness_and_contrast():
    X = _images(n=6)
    params = dict(patch_size=3, n_atoms=10, n_neighbors=3, patch_normalize=True,
                  random_state=0)
    emb = PatchDictionaryEmbedding(**params).fit(X)
    # contrast-normalized patches of 0.5 + 3 x are those of x up to the small regularizer
    shifted = PatchDictionaryEmbedding(**params).fit(0.5 + 20 * X)
    assert_allclose(emb.mean_, shifted.mean_, atol=2e-2)
    assert_array_equal(emb.transform(X), emb.transform(X))


def test_pickle_round_trip_rebuilds_the_index():
    X = _images(n=6)
    emb = PatchDictionaryEmbedding(
        patch_size=3, n_atoms=10, n_neighbors=3, knn_backend="faiss", random_state=0
    ).fit(X)
    expected = emb.transform(X)
    data = pickle.dumps(emb)
    loaded = pickle.loads(data)
    assert not hasattr(loaded, "index_")
    assert_array_equal(loaded.transform(X), expected)
    assert loaded.index_.ntotal == 10


def test_index_serialization_round_trip():
    atoms = np.random.default_rng(0).standard_normal((7, 5)).astype(np.float32)
    index = _faiss.build_index(atoms)
    restored = _faiss.deserialize_index(_faiss.serialize_index(index))
    queries = np.random.default_rng(1).standard_normal((4, 5)).astype(np.float32)
    assert_array_equal(index.search(queries, 3)[1], restored.search(queries, 3)[1])


def test_select_mask_breaks_ties_to_exactly_k():
    import torch

    scores = torch.tensor([[1.0, 2.0, 2.0, 2.0, 0.0], [5.0, 4.0, 3.0, 2.0, 1.0]])
    mask = _faiss.select_mask(scores, 2).numpy()
    assert_array_equal(mask.sum(axis=1), [2, 2])
    assert mask[0, [1, 2, 3]].sum() == 2 and mask[0, [0, 4]].sum() == 0
    assert_array_equal(mask[1], [1, 1, 0, 0, 0])


def test_feature_names_and_count():
    X = _images(n=5)
    emb = PatchDictionaryEmbedding(
        patch_size=3, n_atoms=6, n_neighbors=2, both_signs=True, pooling=2,
        random_state=0,
    ).fit(X)
    names = emb.get_feature_names_out()
    assert len(names) == emb.n_features_out_ == 2 * 4 * 6 == emb.transform(X).shape[1]
    assert names[0] == "patchdictionaryembedding_pos_r0_0_a0"
    assert names[-1] == "patchdictionaryembedding_neg_r1_1_a5"


def test_verbose_reports_progress(capsys):
    X = _images(n=4)
    PatchDictionaryEmbedding(
        patch_size=3, n_atoms=6, n_neighbors=2, verbose=1, batch_size=2, random_state=0
    ).fit_transform(X)
    err = capsys.readouterr().err
    assert "encoded 2/4 images" in err and "encoded 4/4 images" in err


def test_beats_raw_pixels_on_digits():
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    digits = load_digits()
    X_train, X_test, y_train, y_test = train_test_split(
        digits.images, digits.target, test_size=0.5, random_state=0
    )
    raw = make_pipeline(StandardScaler(), LogisticRegression(C=0.01, max_iter=500))
    raw_acc = raw.fit(X_train.reshape(len(X_train), -1), y_train).score(
        X_test.reshape(len(X_test), -1), y_test
    )
    model = make_pipeline(
        PatchDictionaryEmbedding(patch_size=3, n_atoms=64, n_neighbors=16, pooling=2,
                                 both_signs=True, random_state=0),
        StandardScaler(),
        LogisticRegression(C=0.01, max_iter=500),
    )
    acc = model.fit(X_train, y_train).score(X_test, y_test)
    assert acc > raw_acc + 0.01, (acc, raw_acc)


def _mirror(X):
    return np.ascontiguousarray(np.asarray(X)[:, :, ::-1])


@pytest.mark.parametrize(
    "encoding, n_neighbors, extra",
    [
        ("hard", 5, {}),
        ("hard", 1, {}),  # argmax path
        ("hard", 3, {"knn_backend": "faiss"}),
        ("triangle", 5, {}),
        ("full", 5, {"n_full_components": 3}),
        ("hard", 5, {"whiten": "pca"}),
        ("hard", 5, {"whiten": None, "patch_normalize": True}),
    ],
)
@pytest.mark.parametrize("pooling", [1, 2, 3])
def test_flip_invariant_codes_are_image_plus_mirror_image(encoding, n_neighbors, extra, pooling):
    # 8 x 9 patch grid: with pooling 2 the column regions {0..4}, {5..8} are not
    # mirror images of each other, which the mirrored pooling must handle
    X = _images(n=6, size=12)[:, :11]
    emb = PatchDictionaryEmbedding(
        patch_size=4, n_atoms=16, n_neighbors=n_neighbors, encoding=encoding,
        both_signs=True, pooling=pooling, flip_invariant=True, random_state=0, **extra,
    ).fit(X)
    codes = emb.transform(X)
    assert codes.shape[1] == emb.n_features_out_ == 2 * pooling**2 * 8 * (
        3 if encoding == "full" else 1
    )
    # a mirrored patch sums its float32 products in another order
    atol = 48 * 2 * F32 * np.abs(codes).max()
    assert_allclose(emb.transform(_mirror(X)), codes, rtol=0, atol=atol)
    # the same atoms without the symmetrization, on the image and on its mirror
    plain = pickle.loads(pickle.dumps(emb))
    plain.flip_invariant = False
    plain.n_features_out_ = 2 * emb.n_features_out_
    shape = (X.shape[0], 2, pooling**2, 16, -1)
    both = (plain.transform(X).reshape(shape) + plain.transform(_mirror(X)).reshape(shape)) / 2
    assert_allclose(codes, both[:, :, :, :8].reshape(X.shape[0], -1), rtol=0, atol=atol)


def test_flip_invariant_with_stride():
    # 9-wide images, 3-wide patches, stride 2: positions 0, 2, 4, 6 mirror onto themselves
    X = _images(n=6, size=9)
    emb = PatchDictionaryEmbedding(
        patch_size=3, stride=2, n_atoms=8, n_neighbors=3, pooling=2,
        flip_invariant=True, random_state=0,
    ).fit(X)
    codes = emb.transform(X)
    assert_allclose(emb.transform(_mirror(X)), codes, rtol=0,
                    atol=27 * 2 * F32 * np.abs(codes).max())


@pytest.mark.parametrize("whiten", ["zca", "pca"])
def test_flip_invariant_dictionary_is_mirror_closed(whiten):
    X = _images(n=10, size=8)
    emb = PatchDictionaryEmbedding(
        patch_size=3, n_atoms=12, n_neighbors=3, whiten=whiten, flip_invariant=True,
        random_state=0,
    ).fit(X)
    whitening = emb.whitening_.astype(np.float64)
    # back to pixel space, mirror each 3 x 3 x 3 patch, whiten again
    pixels = emb.atoms_.astype(np.float64) @ np.linalg.inv(whitening) + emb.mean_
    mirrored = pixels.reshape(-1, 3, 3, 3)[:, :, ::-1].reshape(12, -1)
    rewhitened = (mirrored - emb.mean_) @ whitening
    # float32 atoms through W^-1 and W: rounding amplified by the condition number of W
    condition = np.linalg.cond(whitening)
    assert_allclose(rewhitened, emb.atoms_[emb.mirror_atoms_], rtol=0,
                    atol=27 * F32 * condition * np.abs(emb.atoms_).max())
    assert_array_equal(emb.mirror_atoms_[emb.mirror_atoms_], np.arange(12))
    # the whitening was fitted on a flip-symmetric sample: the mean is symmetric
    mean = emb.mean_.reshape(3, 3, 3)
    assert_allclose(mean, mean[:, ::-1], rtol=2 * F32)


def test_flip_invariant_feature_names():
    X = _images(n=5)
    emb = PatchDictionaryEmbedding(
        patch_size=3, n_atoms=6, n_neighbors=2, pooling=2, flip_invariant=True,
        random_state=0,
    ).fit(X)
    names = emb.get_feature_names_out()
    assert len(names) == emb.n_features_out_ == 4 * 3 == emb.transform(X).shape[1]
    assert names[-1] == "patchdictionaryembedding_pos_r1_1_a2"


@pytest.mark.parametrize("encoding", ["hard", "full"])
def test_power_is_signed_power_of_the_pooled_codes(encoding):
    X = _images(n=5)
    params = dict(patch_size=3, n_atoms=8, n_neighbors=3, encoding=encoding,
                  n_full_components=2, pooling=2, random_state=0)
    linear = PatchDictionaryEmbedding(**params).fit(X).transform(X)
    rooted = PatchDictionaryEmbedding(power=0.5, **params).fit(X).transform(X)
    if encoding == "full":
        assert (linear < 0).any()  # the signed case is exercised
    # the same float32 pooled codes, then a float32 square root: within a few ulp
    assert_allclose(rooted, np.sign(linear) * np.sqrt(np.abs(linear)), rtol=4 * F32)


@pytest.mark.parametrize(
    "params, match",
    [
        (dict(n_atoms=500), "n_atoms=500 is larger than the"),
        (dict(n_atoms=10, n_neighbors=10), "k <= 9"),
        (dict(n_atoms=10, n_neighbors=11, encoding="triangle"), "k <= 10"),
        (dict(patch_size=8), r"patch_size \(8, 8\) is larger than the images: patch height 8"),
        (dict(pooling=6), "pooling must be <= 5"),
        (dict(encoding="full", n_full_components=30), "n_full_components=30 exceeds"),
        (dict(device="gpu"), "device must be"),
        (dict(n_neighbors=1.5), "n_neighbors"),
        (dict(dictionary="random"), "dictionary"),
        (dict(n_atoms=9, flip_invariant=True), "n_atoms=9 must be even"),
        (dict(n_atoms=120, flip_invariant=True), r"n_atoms / 2 = 60 \(flip_invariant"),
        (dict(power=0), "power"),
        (dict(stride=3, flip_invariant=True), "multiple of the horizontal stride 3"),
    ],
)
def test_bad_parameters(params, match):
    X = _images(n=2)  # 7x7 images, 3x3 patches: 2 * 25 = 50 patches
    settings = dict(patch_size=3, n_atoms=10, n_neighbors=2, random_state=0)
    settings.update(params)
    with pytest.raises(ValueError, match=match):
        PatchDictionaryEmbedding(**settings).fit(X)


@pytest.mark.parametrize("whiten", ["zca", "pca"])
def test_zero_whiten_reg_on_singular_covariance_raises(whiten):
    constant = np.full((4, 7, 7, 3), 0.25)
    settings = dict(patch_size=3, n_atoms=6, n_neighbors=2, whiten=whiten, random_state=0)
    with pytest.raises(ValueError, match=r"whiten_reg=0 .* eigenvalues of the patch covariance are zero.*whiten_reg > 0"):
        PatchDictionaryEmbedding(whiten_reg=0, **settings).fit(constant)
    # normalized patches sum to zero: one zero eigenvalue, on any images
    with pytest.raises(ValueError, match=r"whiten_reg=0 .* 1 of the 27 eigenvalues.*patch_normalize"):
        PatchDictionaryEmbedding(whiten_reg=0, patch_normalize=True, **settings).fit(_images(n=4))
    # a positive whiten_reg, or no whitening, keeps constant images finite
    for params in (dict(whiten_reg=1e-3, **settings), dict(settings, whiten=None, whiten_reg=0)):
        codes = PatchDictionaryEmbedding(**params).fit(constant).transform(constant)
        assert np.all(np.isfinite(codes))
    # a full-rank covariance whitens with whiten_reg=0: unit whitened variances
    X = _images(n=30)
    emb = PatchDictionaryEmbedding(whiten_reg=0, n_patches_fit=10**6, **settings).fit(X)
    rows = _patches_loop(X, 3)
    whitened = (rows - rows.mean(axis=0)) @ emb.whitening_.astype(np.float64)
    variances = np.linalg.eigvalsh(np.cov(whitened, rowvar=False, bias=True))
    assert_allclose(variances, 1.0, rtol=_whitening_rtol(emb))


def test_transform_rejects_images_of_another_shape():
    emb = PatchDictionaryEmbedding(patch_size=3, n_atoms=6, n_neighbors=2).fit(_images(n=3))
    with pytest.raises(ValueError, match="shape"):
        emb.transform(_images(n=3, size=8))
    with pytest.raises(ValueError, match="features"):
        emb.transform(np.zeros((2, 10)))


def test_unfitted_transform_raises():
    from sklearn.exceptions import NotFittedError

    with pytest.raises(NotFittedError):
        PatchDictionaryEmbedding().transform(_images(n=2))


@pytest.mark.parametrize("knn_backend", ["faiss", "gemm"])
def test_gpu_setting_loads_and_runs_on_cpu(knn_backend):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this checks the CPU-only fallback")
    X = _images(n=4)
    emb = PatchDictionaryEmbedding(patch_size=3, n_atoms=6, n_neighbors=2,
                                   knn_backend=knn_backend, random_state=0)
    expected = emb.fit_transform(X)
    assert emb.device_ == "cpu"
    emb.device = emb.device_ = "cuda"  # as if fitted on a GPU machine
    loaded = pickle.loads(pickle.dumps(emb))
    assert not hasattr(loaded, "index_") and getattr(loaded, "_encoder", None) is None
    with pytest.warns(UserWarning, match="fitted on device 'cuda'.*running on the CPU"):
        assert_array_equal(loaded.transform(X), expected)


@pytest.mark.parametrize("device", ["cuda", "cuda:7"])
def test_absent_device_is_an_error_at_fit(device):
    import torch

    if torch.cuda.device_count() > 7:
        pytest.skip("needs a machine without that GPU")
    emb = PatchDictionaryEmbedding(patch_size=3, n_atoms=6, n_neighbors=2, device=device)
    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("needs a machine without CUDA")
    with pytest.raises(ValueError, match=f"device='{device}'"):
        emb.fit(_images(n=3))
    assert not hasattr(emb, "device_")


def test_kmeans_seed_is_derived_from_random_state(monkeypatch):
    import torch

    seeds = []
    kmeans = _faiss.faiss_kmeans

    def recording(*args, seed, **kwargs):
        seeds.append(seed)
        return kmeans(*args, seed=seed, **kwargs)

    monkeypatch.setattr(_faiss, "faiss_kmeans", recording)
    numpy_state, torch_state = np.random.get_state()[1].copy(), torch.random.get_rng_state()
    X = _images(n=5)
    PatchDictionaryEmbedding(patch_size=3, n_atoms=6, n_neighbors=2, random_state=7).fit(X)
    # the second draw of the estimator's RandomState (the first seeds the patch sampling)
    draws = np.random.RandomState(7).randint(np.iinfo(np.int32).max, size=2)
    assert seeds == [draws[1]]
    rng = np.random.RandomState(11)
    PatchDictionaryEmbedding(patch_size=3, n_atoms=6, n_neighbors=2, random_state=rng).fit(X)
    assert seeds[1] == np.random.RandomState(11).randint(np.iinfo(np.int32).max, size=2)[1]
    # global generators untouched
    assert_array_equal(np.random.get_state()[1], numpy_state)
    assert torch.equal(torch.random.get_rng_state(), torch_state)


@pytest.mark.parametrize("dtype", [np.uint8, np.float64])
def test_fit_transform_validates_once_and_equals_fit_then_transform(dtype, monkeypatch):
    X = _images(n=6)
    X = (X * 255).astype(np.uint8) if dtype == np.uint8 else X
    params = dict(patch_size=3, n_atoms=10, n_neighbors=3, random_state=0)
    expected = PatchDictionaryEmbedding(**params).fit(X).transform(X)
    calls = []
    validate = embedding_module.validate_images

    def counting(*args, **kwargs):
        calls.append(kwargs.get("reset"))
        return validate(*args, **kwargs)

    monkeypatch.setattr(embedding_module, "validate_images", counting)
    got = PatchDictionaryEmbedding(**params).fit_transform(X)
    assert calls == [True]
    assert got.dtype == np.float32
    assert_array_equal(got, expected)


def test_uint8_transform_memory_does_not_grow_with_n():
    import tracemalloc

    rng = np.random.default_rng(0)
    X = rng.integers(0, 256, size=(128, 24, 24, 3), dtype=np.uint8)
    emb = PatchDictionaryEmbedding(
        patch_size=3, n_atoms=16, n_neighbors=4, knn_backend="gemm", batch_size=4,
        n_jobs=1, random_state=0,
    ).fit(X[:16])

    def peak(images):
        emb.transform(images[:4])  # engine built, buffers warmed up
        tracemalloc.start()
        try:
            emb.transform(images)
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    small, large = peak(X[:32]), peak(X)
    output_growth = (128 - 32) * emb.n_features_out_ * 4
    # converting all of X to float32 first would add 96 * 24 * 24 * 3 * 4 = 663 KB
    assert large - small <= output_growth + 64 * 1024, (small, large, output_growth)
    # and the chunked conversion is the one of the validation: the same numbers
    assert_array_equal(emb.transform(X[:8]), emb.transform(X[:8].astype(np.float32) / 255))


@pytest.mark.parametrize("knn_backend, n_neighbors", [("gemm", 5), ("gemm", 1), ("faiss", 3)])
def test_n_jobs_does_not_change_the_output(knn_backend, n_neighbors):
    X = _images(n=9, size=7)
    emb = PatchDictionaryEmbedding(
        patch_size=3, n_atoms=16, n_neighbors=n_neighbors, both_signs=True,
        knn_backend=knn_backend, batch_size=2, n_jobs=1, random_state=0,
    ).fit(X)
    expected = emb.transform(X)
    for n_jobs in (2, -1, None):
        assert_array_equal(emb.set_params(n_jobs=n_jobs).transform(X), expected)


def test_n_jobs_follows_joblib_parallel_config(monkeypatch):
    from joblib import parallel_config

    X = _images(n=9, size=7)
    emb = PatchDictionaryEmbedding(
        patch_size=3, n_atoms=16, n_neighbors=5, knn_backend="gemm", batch_size=1,
        random_state=0,
    ).fit(X)
    workers = []
    pool_type = encoder_module.ThreadPoolExecutor

    def recording(n_workers, **kwargs):
        workers.append(n_workers)
        return pool_type(n_workers, **kwargs)

    monkeypatch.setattr(encoder_module, "ThreadPoolExecutor", recording)
    with parallel_config(n_jobs=3):
        emb.transform(X)
    emb.set_params(n_jobs=2).transform(X)
    emb.set_params(n_jobs=50).transform(X)  # capped at the 9 chunks
    assert workers == [3, 2, 9]


def test_transform_threads_leave_other_threads_alone(monkeypatch):
    import threading

    import torch
    from threadpoolctl import threadpool_info

    X = _images(n=8, size=7)
    emb = PatchDictionaryEmbedding(
        patch_size=3, n_atoms=16, n_neighbors=5, knn_backend="gemm", batch_size=2,
        n_jobs=2, random_state=0,
    ).fit(X)
    seen = {"worker": set(), "fresh": set(), "running": set()}
    ask, answer = threading.Event(), threading.Event()
    stop = threading.Event()

    def running_thread():  # a torch user working since before the transform
        torch.get_num_threads()
        while not stop.is_set():
            if ask.wait(0.01):
                ask.clear()
                seen["running"].add(torch.get_num_threads())
                answer.set()

    encode = encoder_module.PatchEncoder.encode

    def observing(self, images):
        seen["worker"].add(torch.get_num_threads())
        ask.set()
        answer.wait(5)
        fresh = threading.Thread(target=lambda: seen["fresh"].add(torch.get_num_threads()))
        fresh.start()
        fresh.join()
        return encode(self, images)

    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # the caller's setting: two intra-op threads
    try:
        expected = emb.transform(X)
        info = [(lib["filepath"], lib["num_threads"]) for lib in threadpool_info()]
        monkeypatch.setattr(encoder_module.PatchEncoder, "encode", observing)
        runner = threading.Thread(target=running_thread)
        runner.start()
        got = emb.transform(X)  # each chunk asks the running thread (see observing)
        assert answer.is_set()
        stop.set()
        runner.join()
        assert seen["worker"] == {1}  # the chunk workers run single-threaded torch
        assert seen["fresh"] == {2}  # a thread started during the transform: the caller's count
        assert seen["running"] == {2}
        assert torch.get_num_threads() == 2
        after = []
        fresh = threading.Thread(target=lambda: after.append(torch.get_num_threads()))
        fresh.start()
        fresh.join()
        assert after == [2]
        assert [(lib["filepath"], lib["num_threads"]) for lib in threadpool_info()] == info
    finally:
        stop.set()
        torch.set_num_threads(threads)
    assert_array_equal(got, expected)


def test_import_does_not_load_torch_or_faiss():
    import subprocess
    import sys

    code = (
        "import sys, skpatch; skpatch.PatchDictionaryEmbedding; "
        "print('torch' in sys.modules, 'faiss' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.split() == ["False", "False"]


def _fitted_attributes(est):
    return sorted(name for name in vars(est) if name.endswith("_") and not name.startswith("_"))


@pytest.mark.parametrize("method", ["fit", "fit_transform"])
def test_refit_without_flip_invariant_forgets_mirror_atoms(method):
    X = _images(n=6, size=7)
    params = dict(patch_size=3, n_atoms=8, n_neighbors=2, pooling=2, random_state=0)
    emb = PatchDictionaryEmbedding(flip_invariant=True, **params).fit(X)
    assert hasattr(emb, "mirror_atoms_")

    emb.set_params(flip_invariant=False)
    getattr(emb, method)(X)
    assert not hasattr(emb, "mirror_atoms_")
    fresh = PatchDictionaryEmbedding(flip_invariant=False, **params).fit(X)
    assert _fitted_attributes(emb) == _fitted_attributes(fresh)
    assert_array_equal(emb.atoms_, fresh.atoms_)
    assert emb.n_features_out_ == fresh.n_features_out_ == 4 * 8
    assert_array_equal(emb.transform(X), fresh.transform(X))
    assert emb.get_feature_names_out().tolist() == fresh.get_feature_names_out().tolist()


def test_refit_on_images_drops_the_feature_names_of_a_dataframe_fit():
    pd = pytest.importorskip("pandas")
    X = _images(n=6, size=5, channels=1)
    frame = pd.DataFrame(X.reshape(6, -1), columns=[f"px{i}" for i in range(25)])
    emb = PatchDictionaryEmbedding(
        patch_size=3, n_atoms=6, n_neighbors=2, pooling=1, image_shape=(5, 5), random_state=0
    ).fit(frame)
    assert hasattr(emb, "feature_names_in_")
    emb.fit(X[..., 0])
    assert not hasattr(emb, "feature_names_in_")


def test_channels_first_images_warn_at_fit():
    X = np.moveaxis(_images(n=6, size=6), -1, 1)  # (n, 3, 6, 6): channels first
    emb = PatchDictionaryEmbedding(patch_size=2, n_atoms=4, n_neighbors=2, pooling=1)
    with pytest.warns(UserWarning, match=r"X of shape \(6, 3, 6, 6\) .*np\.moveaxis\(X, 1, -1\)"):
        emb.fit(X)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        emb.fit(np.moveaxis(X, 1, -1))
