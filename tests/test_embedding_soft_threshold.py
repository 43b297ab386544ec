"""encoding='soft_threshold' (Coates & Ng 2011): against a float64 numpy rendering of the formula.

With ``q = (x - mean) W`` the whitened centred patch and ``u_a = a / |a|`` each
atom scaled to unit length in the whitened space, the code of atom ``a`` is
``max(0, q . u_a - alpha)``; both signs add ``max(0, -q . u_a - alpha)`` (the
polarity split) or, for ``'raw'``, the code of the whitened negated input
``(-x - mean) W``. The references below compute that per location in float64
from the fitted ``mean_``, ``whitening_`` and ``atoms_`` and pool it by the
documented cell definitions, written out again here.
"""

import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from numpy.testing import assert_allclose, assert_array_equal
from sklearn.base import clone

from skpatch import PatchDictionaryClassifier, PatchDictionaryEmbedding
from skpatch.datasets import load_digits_images
from skpatch.embedding import _encodings
from skpatch.nn import PatchDictionaryCodes
from skpatch.utils import _kernels

F32 = np.finfo(np.float32).eps


def _images(n=6, height=9, width=None, channels=3, seed=0):
    """Smooth-ish random colour images: correlated pixels, like real patches."""
    width = height if width is None else width
    rng = np.random.default_rng(seed)
    base = rng.random((n, height + 1, width + 1, channels))
    return (base[:, 1:, 1:] + base[:, :-1, :-1] + 0.3 * base[:, 1:, :-1]) / 2.3


def _mirror(X):
    return X[:, :, ::-1]


def _patch_rows(emb, X):
    """Patch rows ``(n, gh, gw, d)`` in float64, ``(ph, pw, C)`` order, normalized as fitted."""
    X = np.asarray(X, dtype=np.float64)
    X = X[..., None] if X.ndim == 3 else X
    (ph, pw), (sh, sw) = emb._patch_size, emb._stride
    rows = np.lib.stride_tricks.sliding_window_view(X, (ph, pw), axis=(1, 2))[:, ::sh, ::sw]
    rows = rows.transpose(0, 1, 2, 4, 5, 3).reshape(*rows.shape[:3], -1)
    if emb.patch_normalize:  # Coates et al.'s brightness and contrast normalization
        rows = rows - rows.mean(axis=-1, keepdims=True)
        rows = rows / np.sqrt(rows.var(axis=-1, keepdims=True) + 10 / 255**2)
    return rows


def _unit_atoms(emb):
    atoms = emb.atoms_.astype(np.float64)
    return atoms / np.linalg.norm(atoms, axis=1, keepdims=True)


def _reference_codes(emb, X):
    """Per-location codes ``(n, gh, gw, n_signs, Q)``, float64, from the formula."""
    rows = _patch_rows(emb, X)
    mean, whitening = emb.mean_.astype(np.float64), emb.whitening_.astype(np.float64)
    unit = _unit_atoms(emb)
    s = ((rows - mean) @ whitening) @ unit.T
    codes = [np.maximum(0.0, s - emb.alpha)]
    if emb.both_signs in (True, "centred"):
        codes.append(np.maximum(0.0, -s - emb.alpha))
    elif emb.both_signs == "raw":
        s_negated_input = ((-rows - mean) @ whitening) @ unit.T
        codes.append(np.maximum(0.0, s_negated_input - emb.alpha))
    return np.stack(codes, axis=-2)


def _score_atol(emb, X):
    """Error bound of a float32 projection against the float64 one.

    The engine computes ``x . w + b`` with ``w = W u^T`` and ``b = -mean w - alpha``
    rounded to float32: a float32 sum of ``d + 1`` terms errs by at most
    ``(d + 1) eps32`` times the sum of their magnitudes ``|x| @ |w| + |b|``
    (the centring cancels most of the sum, not of its magnitude), and rounding
    ``w`` and ``b`` adds ``eps32`` of it each.
    """
    rows = np.abs(_patch_rows(emb, X)).reshape(-1, emb.mean_.size)
    weight = np.abs(emb.whitening_.astype(np.float64)) @ np.abs(_unit_atoms(emb)).T
    magnitude = rows @ weight + np.abs(emb.mean_.astype(np.float64)) @ weight + emb.alpha
    return (emb.mean_.size + 3) * F32 * magnitude.max()


def _window_starts(length, size, stride):
    """torch's ceil-mode windows without padding, written out again."""
    starts = []
    start = 0
    while True:
        starts.append(start)
        if start + size >= length:
            break
        start += stride
    return starts


def _pool(codes, pooling):
    """Cell means ``(n, oh, ow, S, Q)`` of per-location codes ``(n, gh, gw, S, Q)``."""
    n, gh, gw = codes.shape[:3]
    if pooling is None:
        return codes
    if isinstance(pooling, tuple):
        size, stride = pooling
        cells_r = [range(r, min(r + size, gh)) for r in _window_starts(gh, size, stride)]
        cells_c = [range(c, min(c + size, gw)) for c in _window_starts(gw, size, stride)]
    else:  # grid row i goes to region floor(i * pooling / gh)
        cells_r = [[i for i in range(gh) if i * pooling // gh == r] for r in range(pooling)]
        cells_c = [[j for j in range(gw) if j * pooling // gw == c] for c in range(pooling)]
    out = np.zeros((n, len(cells_r), len(cells_c)) + codes.shape[3:])
    for a, rows in enumerate(cells_r):
        for b, cols in enumerate(cells_c):
            out[:, a, b] = codes[:, list(rows)][:, :, list(cols)].mean(axis=(1, 2))
    return out


def _as_reference_layout(emb, features):
    """``transform`` output ``(n, S * oh * ow * Q)`` as ``(n, oh, ow, S, Q)``."""
    oh, ow = emb.pooled_grid_shape_
    n_signs = 1 if emb.both_signs is False else 2
    return features.reshape(len(features), n_signs, oh, ow, -1).transpose(0, 2, 3, 1, 4)


# ---- the codes are the formula ----------------------------------------------


@pytest.mark.parametrize("both_signs", [False, True, "raw"])
@pytest.mark.parametrize("settings", [
    dict(), dict(patch_normalize=True), dict(whiten="pca", dictionary="data"),
    dict(whiten=None, dictionary="gaussian"), dict(alpha=0.0), dict(alpha=1.0, stride=(1, 2)),
], ids=["default", "patch_normalize", "pca-data", "nowhiten-gaussian", "alpha0", "alpha1"])
def test_codes_per_location_are_the_formula(both_signs, settings):
    X = _images(n=5, height=8, width=9)
    emb = PatchDictionaryEmbedding(
        patch_size=3, n_atoms=12, encoding="soft_threshold", both_signs=both_signs,
        pooling=None, random_state=0, **settings,
    ).fit(X)
    got = emb.transform_maps(X)
    expected = _reference_codes(emb, X)
    assert got.shape == expected.shape[:3] + (expected.shape[3] * 12,)
    got = got.reshape(expected.shape)
    assert_allclose(got, expected, rtol=0, atol=_score_atol(emb, X))
    # the threshold is exercised: codes at 0 and above it (except for a very large alpha)
    assert (expected == 0).any() and ((expected > 0).mean() > 0.02 or emb.alpha >= 1)
    assert got.min() >= 0


@pytest.mark.parametrize("pooling", [1, 2, 3, (3, 2), (4, 3)])
@pytest.mark.parametrize("both_signs", [False, True, "raw"])
def test_pooled_codes_are_the_region_means_of_the_formula(pooling, both_signs):
    X = _images(n=4, height=11, width=10)  # 3x3 patches: a 9 x 8 grid, unequal regions
    emb = PatchDictionaryEmbedding(
        patch_size=3, n_atoms=16, encoding="soft_threshold", both_signs=both_signs,
        pooling=pooling, random_state=0,
    ).fit(X)
    assert isinstance(emb._get_encoder().search, _encodings.FusedCodes)  # the CPU kernels
    expected = _pool(_reference_codes(emb, X), pooling)
    got = _as_reference_layout(emb, emb.transform(X))
    assert got.shape == expected.shape
    # each code within the projection bound, then float32 sums of up to 72 of them
    atol = _score_atol(emb, X) + 72 * F32 * expected.max()
    assert_allclose(got, expected, rtol=0, atol=atol)


@pytest.mark.parametrize("pooling", [2, (3, 2), None])
def test_flip_invariant_codes_are_the_formula_plus_the_mirror_atoms(pooling):
    X = _images(n=4, height=10, width=11)
    emb = PatchDictionaryEmbedding(
        patch_size=4, n_atoms=16, encoding="soft_threshold", both_signs=True,
        pooling=pooling, flip_invariant=True, random_state=0,
    ).fit(X)
    # each cell: atom a over its positions plus mirror atom a + 8 over the mirrored
    # positions (grid columns reversed), halved; one feature per mirror pair
    codes = _reference_codes(emb, X)
    expected = (_pool(codes, pooling)[..., :8] + _pool(codes[:, :, ::-1], pooling)[..., 8:]) / 2
    oh, ow = emb.pooled_grid_shape_
    got = emb.transform(X).reshape(len(X), 2, oh, ow, 8).transpose(0, 2, 3, 1, 4)
    atol = _score_atol(emb, X) + 2 * 64 * F32 * expected.max()
    assert_allclose(got, expected, rtol=0, atol=atol)
    # the features of the mirror image are those of the image (up to the float32
    # rounding of the mirror-closed dictionary and whitening)
    assert_allclose(emb.transform(_mirror(X)), emb.transform(X), rtol=0,
                    atol=64 * 2 * F32 * max(1.0, expected.max()) + 2 * atol)


def test_power_is_the_signed_power_of_the_pooled_formula():
    X = _images(n=4)
    params = dict(patch_size=3, n_atoms=12, encoding="soft_threshold", both_signs=True,
                  pooling=2, random_state=0)
    rooted = PatchDictionaryEmbedding(power=0.5, **params).fit(X)
    expected = _pool(_reference_codes(rooted, X), 2)
    atol = _score_atol(rooted, X) + 49 * F32 * expected.max()
    # sqrt(x + e) - sqrt(x) <= sqrt(e)
    assert_allclose(_as_reference_layout(rooted, rooted.transform(X)), np.sqrt(expected),
                    rtol=0, atol=np.sqrt(atol))


def test_alpha_is_the_threshold():
    X = _images(n=3)
    params = dict(patch_size=3, n_atoms=12, encoding="soft_threshold", pooling=None,
                  random_state=0)
    relu = PatchDictionaryEmbedding(alpha=0.0, **params).fit(X).transform_maps(X)
    shifted = PatchDictionaryEmbedding(alpha=0.3, **params).fit(X).transform_maps(X)
    # max(0, s - 0.3) = max(0, max(0, s) - 0.3)
    assert_allclose(shifted, np.maximum(0.0, relu - 0.3), rtol=0, atol=4 * F32 * relu.max())
    huge = PatchDictionaryEmbedding(alpha=1e6, **params).fit(X).transform(X)
    assert not huge.any()


def test_n_neighbors_and_knn_backend_are_not_used():
    X = _images(n=3)
    params = dict(patch_size=3, n_atoms=12, encoding="soft_threshold", random_state=0)
    default = PatchDictionaryEmbedding(**params).fit(X)
    assert default.n_neighbors_ == 12
    # a k no selection encoding would accept: no error, the same codes
    other = PatchDictionaryEmbedding(n_neighbors=500, knn_backend="faiss", **params).fit(X)
    assert other.n_neighbors_ == 12
    assert_array_equal(other.transform(X), default.transform(X))
    assert other._get_encoder().backend == "gemm"


@pytest.mark.parametrize("alpha", [-0.1, "0.25", None])
def test_bad_alpha_names_the_parameter(alpha):
    with pytest.raises((ValueError, TypeError), match="alpha"):
        PatchDictionaryEmbedding(patch_size=3, n_atoms=8, encoding="soft_threshold",
                                 alpha=alpha).fit(_images(n=2))


def test_zero_atom_gives_zero_codes_not_nan():
    X = _images(n=3)
    emb = PatchDictionaryEmbedding(patch_size=3, n_atoms=8, encoding="soft_threshold",
                                   alpha=0.0, pooling=None, random_state=0).fit(X)
    emb.atoms_[3] = 0.0
    emb._encoder = None
    maps = emb.transform_maps(X)
    assert np.isfinite(maps).all() and not maps[..., 3].any()


# ---- chunks, threads, blocks --------------------------------------------------


@pytest.mark.parametrize("fused", [True, False], ids=["kernels", "torch"])
@pytest.mark.parametrize("settings", [
    dict(pooling=2), dict(pooling=2, both_signs=True), dict(pooling=(3, 2), both_signs="raw"),
    dict(pooling=3, flip_invariant=True, both_signs=True), dict(pooling=None, both_signs=True),
    dict(pooling=1, power=0.5, patch_normalize=True),
])
def test_transform_identical_whatever_the_chunk_size_and_threads(settings, fused, monkeypatch):
    # at most 45 rows a block: 5 blocks of 40 rows for the 14 x 14 = 196 positions of
    # each image, the last one padded
    monkeypatch.setattr(_encodings, "_FUSED_BLOCK_BYTES", 4 * 16 * 45)
    if not fused:  # the chunk-level GEMM, threshold and RegionPooling.dense (GPU path)
        monkeypatch.setattr(_kernels, "available", lambda: False)
    X = _images(n=9, height=16)
    base = PatchDictionaryEmbedding(
        patch_size=3, n_atoms=16, encoding="soft_threshold", batch_size="auto", n_jobs=1,
        random_state=0, **settings,
    ).fit(X)
    search = base._get_encoder().search
    assert isinstance(search, _encodings.FusedCodes) == fused
    if fused:
        assert search.block_rows == 40
    reference = base.transform(X)
    assert reference.dtype == np.float32
    for batch_size, n_jobs in [(1, 1), (3, 1), (2, 2), ("auto", 2), (9, 1)]:
        other = clone(base).set_params(batch_size=batch_size, n_jobs=n_jobs).fit(X)
        assert_array_equal(other.transform(X), reference)
    # an image encoded alone or among others: the same bits
    assert_array_equal(base.transform(X[4:5]), reference[4:5])


@pytest.mark.parametrize("pooling", [2, (3, 2), None])
def test_kernels_and_torch_paths_agree(pooling, monkeypatch):
    """The CPU kernels equal the chunk-level GEMM + RegionPooling.dense path (the GPU's)."""
    X = _images(n=5, height=12)
    params = dict(patch_size=3, n_atoms=16, encoding="soft_threshold", both_signs="raw",
                  pooling=pooling, flip_invariant=True, random_state=0)
    fused = PatchDictionaryEmbedding(**params).fit(X)
    monkeypatch.setattr(_kernels, "available", lambda: False)
    dense = PatchDictionaryEmbedding(**params).fit(X)
    assert isinstance(fused._get_encoder().search, _encodings.FusedCodes)
    assert isinstance(dense._get_encoder().search, _encodings.SoftThreshold)
    got, expected = fused.transform(X), dense.transform(X)
    assert_allclose(got, expected, rtol=0, atol=_score_atol(fused, X) + 100 * F32 * got.max())


def test_pickle_round_trip_gives_the_same_codes():
    X = _images(n=4)
    emb = PatchDictionaryEmbedding(patch_size=3, n_atoms=12, encoding="soft_threshold",
                                   alpha=0.1, both_signs=True, random_state=0).fit(X)
    loaded = pickle.loads(pickle.dumps(emb))
    assert loaded.alpha == 0.1
    assert_array_equal(loaded.transform(X), emb.transform(X))


# ---- the torch module and the classifier -----------------------------------


@pytest.mark.parametrize("both_signs", [False, True, "raw"])
@pytest.mark.parametrize("patch_normalize", [False, True])
def test_torch_codes_equal_transform_maps(both_signs, patch_normalize):
    X = _images(n=6, height=9, width=10).astype(np.float32)
    emb = PatchDictionaryEmbedding(
        patch_size=3, stride=(1, 2), n_atoms=16, encoding="soft_threshold", alpha=0.2,
        both_signs=both_signs, patch_normalize=patch_normalize, pooling=None, device="cpu",
        random_state=0,
    ).fit(X)
    codes = PatchDictionaryCodes.from_embedding(emb)
    assert codes.alpha == 0.2 and codes.n_codes == (1 if both_signs is False else 2) * 16
    with torch.no_grad():
        maps = codes(torch.from_numpy(np.ascontiguousarray(X.transpose(0, 3, 1, 2))))
    maps = maps.permute(0, 2, 3, 1).numpy()
    expected = emb.transform_maps(X)
    assert maps.shape == expected.shape
    atol = _score_atol(emb, X)
    assert_allclose(maps, _reference_codes(emb, X).reshape(maps.shape), rtol=0, atol=atol)
    assert_allclose(maps, expected, rtol=0, atol=2 * atol)


def test_torch_codes_pooled_equal_transform():
    X = _images(n=5, height=12)
    emb = PatchDictionaryEmbedding(patch_size=3, n_atoms=16, encoding="soft_threshold",
                                   both_signs="raw", pooling=(4, 3), device="cpu",
                                   random_state=0).fit(X)
    codes = PatchDictionaryCodes.from_embedding(emb)
    x = torch.from_numpy(np.ascontiguousarray(X.astype(np.float32).transpose(0, 3, 1, 2)))
    with torch.no_grad():
        pooled = F.avg_pool2d(codes(x), 4, 3, ceil_mode=True).permute(0, 2, 3, 1).numpy()
    expected = emb.transform_maps(X)
    assert pooled.shape == expected.shape
    assert_allclose(pooled, expected, rtol=0, atol=2 * _score_atol(emb, X) + 32 * F32)


def test_classifier_trains_on_soft_threshold_codes():
    X, y = load_digits_images(return_X_y=True)
    X, y = X[:300], y[:300]
    clf = PatchDictionaryClassifier(
        patch_size=3, n_atoms=16, encoding="soft_threshold", alpha=0.1, pooling=(3, 2),
        bottleneck=4, augment=None, max_epochs=3, batch_size=32, lr=0.05,
        lr_schedule="constant", device="cpu", verbose=0, random_state=0,
    ).fit(X, y)
    emb = clf.embeddings_[0]
    assert emb.encoding == "soft_threshold" and emb.alpha == 0.1
    layer_codes = clf.module_.core.layers[0].codes
    assert layer_codes.encoding == "soft_threshold" and layer_codes.alpha == 0.1
    assert clf.score(X, y) > 0.3  # well above 10-class chance after 3 epochs
