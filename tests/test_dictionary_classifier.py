"""PatchDictionaryCodes (the frozen embedding as a torch module) and PatchDictionaryClassifier."""

import pickle
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression

from _helpers import assert_close_to_scale
from skpatch import PatchDictionaryClassifier, PatchDictionaryEmbedding
from skpatch.datasets import load_digits_images
from skpatch.nn import PatchDictionaryCodes

TINY = dict(
    patch_size=3, n_atoms=16, n_neighbors=4, pooling=(3, 2), bottleneck=4, augment=None,
    max_epochs=2, batch_size=32, lr=0.05, lr_schedule="constant", device="cpu", verbose=0,
    random_state=0,
)


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits_images(return_X_y=True)
    return X, y


def _nchw(images):
    return torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))


def _min_margin(embedding, images):
    """Smallest gap, in float64, between the k-th and (k+1)-th squared distance, over
    every patch and sign, relative to the largest distance: how near the data is to a tie."""
    ph, pw = embedding._patch_size
    n, height, width, channels = images.shape
    rows = np.lib.stride_tricks.sliding_window_view(images, (ph, pw), axis=(1, 2))
    rows = rows[:, :: embedding._stride[0], :: embedding._stride[1]]
    rows = rows.transpose(0, 1, 2, 4, 5, 3).reshape(-1, ph * pw * channels).astype(np.float64)
    if embedding.patch_normalize:  # Coates et al.'s brightness and contrast normalization
        rows = rows - rows.mean(axis=1, keepdims=True)
        rows = rows / np.sqrt(rows.var(axis=1, keepdims=True) + 10 / 255**2)
    whitening = embedding.whitening_.astype(np.float64)
    mean = embedding.mean_.astype(np.float64)
    atoms = embedding.atoms_.astype(np.float64)
    queries = [(rows - mean) @ whitening]
    if embedding._sign_convention() == "centred":
        queries.append(-queries[0])
    elif embedding._sign_convention() == "raw":
        queries.append((-rows - mean) @ whitening)
    k = embedding.n_neighbors_
    margins = []
    for q in queries:
        d = ((q[:, None, :] - atoms[None]) ** 2).sum(-1)
        d.sort(axis=1)
        margins.append((d[:, k] - d[:, k - 1]) / d.max())
    return float(np.min(margins))


# ---- the module's codes equal the estimator's -------------------------------


@pytest.mark.parametrize("encoding, both_signs, full_input", [
    ("hard", False, "whitened"), ("hard", True, "whitened"), ("hard", "raw", "whitened"),
    ("full", "raw", "whitened"), ("full", True, "raw"), ("triangle", "raw", "whitened"),
])
@pytest.mark.parametrize("patch_normalize", [False, True])
def test_codes_equal_embedding_transform_maps(encoding, both_signs, full_input, patch_normalize):
    rng = np.random.default_rng(0)
    X = rng.random((8, 9, 10, 3)).astype(np.float32)
    emb = PatchDictionaryEmbedding(
        patch_size=3, stride=(1, 2), n_atoms=16, n_neighbors=5, encoding=encoding,
        both_signs=both_signs, full_input=full_input, patch_normalize=patch_normalize,
        pooling=None, device="cpu", random_state=0,
    ).fit(X)
    codes = PatchDictionaryCodes.from_embedding(emb)
    with torch.no_grad():
        maps = codes(_nchw(X)).permute(0, 2, 3, 1).numpy()
    expected = emb.transform_maps(X)
    assert maps.shape == expected.shape
    # no near tie in these data (checked in float64): the selections agree exactly
    assert _min_margin(emb, X) > 1e-5
    if encoding == "hard":
        np.testing.assert_array_equal(maps, expected)
    else:
        assert_close_to_scale(maps, expected, 1e-5, what=f"{encoding} codes")
        # the same slots are non-zero: the same neighbours
        np.testing.assert_array_equal(maps != 0, expected != 0)


@pytest.mark.parametrize("pooling", [(3, 2), (4, 4), (5, 3)])
def test_codes_pooled_equal_embedding_transform(digits, pooling):
    X = digits[0][:150]
    emb = PatchDictionaryEmbedding(
        patch_size=3, n_atoms=32, n_neighbors=8, both_signs="raw", pooling=pooling,
        device="cpu", random_state=0,
    ).fit(X)
    codes = PatchDictionaryCodes.from_embedding(emb)
    x = torch.from_numpy(X.astype(np.float32)[:, None] / np.float32(255))
    with torch.no_grad():
        per_location = codes(x)
        pooled = F.avg_pool2d(per_location, pooling[0], pooling[1], ceil_mode=True)
    expected = emb.transform_maps(X)
    assert pooled.shape[2:] == emb.pooled_grid_shape_
    actual = pooled.permute(0, 2, 3, 1).numpy()
    # digits have exact ties (flat patches): counts may differ there, nowhere else
    equal = np.isclose(actual, expected, rtol=0, atol=1e-6).mean()
    assert equal > 0.999, equal
    # per location: the hard codes hold exactly k ones per sign
    sums = per_location.reshape(len(X), 2, 32, -1).sum(dim=2)
    assert torch.all(sums == 8)


def test_from_embedding_refuses_flip_invariant():
    X = np.random.default_rng(0).random((6, 8, 8)).astype(np.float32)
    emb = PatchDictionaryEmbedding(patch_size=3, n_atoms=8, n_neighbors=2, flip_invariant=True,
                                   device="cpu", random_state=0).fit(X)
    with pytest.raises(ValueError, match="flip_invariant"):
        PatchDictionaryCodes.from_embedding(emb)


@pytest.mark.gpu
def test_codes_on_cuda_equal_cpu():
    rng = np.random.default_rng(0)
    X = rng.random((16, 12, 12, 3)).astype(np.float32)
    emb = PatchDictionaryEmbedding(patch_size=3, n_atoms=64, n_neighbors=16, both_signs="raw",
                                   pooling=None, device="cpu", random_state=0).fit(X)
    codes = PatchDictionaryCodes.from_embedding(emb)
    with torch.no_grad():
        cpu = codes(_nchw(X))
        gpu = codes.to("cuda")(_nchw(X).cuda()).cpu()
    assert (cpu == gpu).float().mean() > 0.999
    np.testing.assert_array_equal(gpu.permute(0, 2, 3, 1).numpy() != 0,
                                  emb.transform_maps(X) != 0)


# ---- the classifier ---------------------------------------------------------


def _standardize(clf, X):
    x = X.astype(np.float32) / np.float32(255)
    x = x[..., None] if x.ndim == 3 else x
    mean = clf.channel_mean_.astype(np.float32)
    std = clf.channel_std_.astype(np.float32)
    return (x - mean) / std


def test_layer_codes_are_the_fitted_embedding(digits):
    X, y = digits[0][:200], digits[1][:200]
    clf = PatchDictionaryClassifier(**TINY).fit(X, y)
    core = clf.module_.core
    z = _standardize(clf, X)
    with torch.no_grad():
        normalized = clf.module_.normalize(torch.from_numpy(X[:, None].astype(np.float32) / 255))
        pooled = core.layers[0].pooled(normalized).permute(0, 2, 3, 1).numpy()
    # the module normalizes as the test does, and its pooled codes are the embedding's
    assert_close_to_scale(normalized.permute(0, 2, 3, 1).numpy(), z, 1e-6)
    expected = clf.embeddings_[0].transform_maps(z)
    assert np.isclose(pooled, expected, rtol=0, atol=1e-6).mean() > 0.999
    assert not any(p.requires_grad for p in core.layers[0].codes.buffers())
    assert not list(core.layers[0].codes.parameters())


def test_linear_head_matches_logistic_regression(digits):
    X, y = digits
    train, test = slice(0, 1200), slice(1200, None)
    weight_decay = 1e-3
    clf = PatchDictionaryClassifier(
        patch_size=3, n_atoms=32, n_neighbors=8, pooling=(3, 2), bottleneck=None,
        batchnorm=False, augment=None, weight_decay=weight_decay, max_epochs=40,
        batch_size=64, lr=1.0, lr_schedule="cosine", device="cpu", verbose=0, random_state=0,
    ).fit(X[train], y[train])
    emb = clf.embeddings_[0]
    features_train = emb.transform(_standardize(clf, X[train]))
    features_test = emb.transform(_standardize(clf, X[test]))
    # the same L2 penalty: SGD's weight_decay on the mean loss is 1 / (C n) in sklearn's terms
    reference = LogisticRegression(C=1 / (weight_decay * 1200), max_iter=5000)
    reference.fit(features_train, y[train])
    head_accuracy = clf.score(X[test], y[test])
    reference_accuracy = reference.score(features_test, y[test])
    assert abs(head_accuracy - reference_accuracy) <= 0.01, (head_accuracy, reference_accuracy)
    assert reference_accuracy > 0.9
    agreement = np.mean(clf.predict(X[test]) == reference.predict(features_test))
    assert agreement > 0.97


def test_depth_two_fits_layer_two_on_frozen_layer_one(digits):
    X, y = digits[0][:300], digits[1][:300]
    layers = [{}, {"patch_size": 2, "pooling": (2, 1), "n_atoms": 8, "n_neighbors": 2}]
    deep = PatchDictionaryClassifier(**dict(TINY, layers=layers, dictionary="data")).fit(X, y)
    shallow = PatchDictionaryClassifier(**dict(TINY, dictionary="data")).fit(X, y)
    assert deep.n_layers_ == 2 and len(deep.embeddings_) == 2
    assert len(deep.layer_histories_) == 2
    assert set(deep.predict(X)) <= set(deep.classes_)
    assert deep.score(X, y) > 0.2  # above 10-class chance after 2 epochs
    # layer 1 trained once, at the first stage, then frozen: the shallow model's layer
    first = deep.module_.core.layers[0].state_dict()
    for key, value in shallow.module_.core.layers[0].state_dict().items():
        torch.testing.assert_close(first[key], value, rtol=0, atol=0, msg=key)
    assert not any(p.requires_grad for p in deep.module_.core.layers[0].parameters())

    # layer 1's output map recomputed in numpy: codes, pooling, BatchNorm (eval), 1x1 conv
    z = _standardize(deep, X)
    pooled = deep.embeddings_[0].transform_maps(z).astype(np.float64)
    layer = deep.module_.core.layers[0]
    bn = {k: v.double().numpy() for k, v in layer.norm.state_dict().items() if v.ndim}
    normed = (pooled - bn["running_mean"]) / np.sqrt(bn["running_var"] + layer.norm.eps)
    normed = normed * bn["weight"] + bn["bias"]
    weight = layer.bottleneck.weight.detach().double().numpy()[:, :, 0, 0]
    maps = normed @ weight.T + layer.bottleneck.bias.detach().double().numpy()
    # the same dictionary fitted on them: layer 2 saw these maps
    refit = clone(deep.embeddings_[1]).fit(maps.astype(np.float32))
    assert_close_to_scale(refit.mean_, deep.embeddings_[1].mean_, 1e-4, what="mean patch")
    assert_close_to_scale(refit.atoms_, deep.embeddings_[1].atoms_, 1e-3, what="atoms")
    assert deep.embeddings_[1].image_shape_ == maps.shape[1:]


def test_seeded_fits_are_reproducible_and_pickle_round_trips(digits):
    X, y = digits[0][:200], digits[1][:200]
    params = dict(TINY, augment=("crop", "flip"), crop_padding=2)
    first = PatchDictionaryClassifier(**params).fit(X, y)
    second = PatchDictionaryClassifier(**params).fit(X, y)
    proba = first.predict_proba(X)
    np.testing.assert_array_equal(proba, second.predict_proba(X))
    loaded = pickle.loads(pickle.dumps(first))
    np.testing.assert_array_equal(loaded.predict_proba(X), proba)
    np.testing.assert_array_equal(loaded.predict(X), first.predict(X))
    # probabilities are the softmax of the net's logits
    with torch.no_grad():
        logits = first.module_(torch.from_numpy(X[:, None].astype(np.float32) / 255)).numpy()
    expected = np.exp(logits - logits.max(1, keepdims=True))
    assert_close_to_scale(proba, expected / expected.sum(1, keepdims=True), 1e-5)


def test_crop_augmentation_pads_black_pixels():
    from skpatch.nn import PatchDictionaryNet

    X = np.random.default_rng(0).random((4, 8, 8)).astype(np.float32)
    emb = PatchDictionaryEmbedding(patch_size=3, n_atoms=8, n_neighbors=2, pooling=None,
                                   device="cpu", random_state=0).fit(X)
    from skpatch.nn import PatchDictionaryLayer

    layer = PatchDictionaryLayer(PatchDictionaryCodes.from_embedding(emb), batchnorm=False)
    net = PatchDictionaryNet([layer], torch.nn.Linear(8 * 36, 2), crop_padding=8,
                             pad_value=[-2.0], generator=torch.Generator().manual_seed(0))
    crops = net.augment(torch.zeros(4096, 1, 8, 8))
    assert set(torch.unique(crops).tolist()) <= {0.0, -2.0}
    # offsets uniform in -8..8 per axis: E[image pixels] = (sum_d (8 - |d|) / 17)**2 = (64/17)**2
    kept = (crops == 0).flatten(1).sum(dim=1).double().mean().item()
    assert abs(kept - (64 / 17) ** 2) < 0.05 * (64 / 17) ** 2


def test_patch_logits_do_not_apply(digits):
    clf = PatchDictionaryClassifier(**TINY).fit(digits[0][:100], digits[1][:100])
    assert not hasattr(clf, "patch_logits")
    with pytest.raises(AttributeError, match="patch_logits") as raised:
        clf.patch_logits(digits[0][:2])
    assert "spans the whole pooled map" in str(raised.value.__context__)


@pytest.mark.parametrize("params, name", [
    (dict(n_atoms=0), "n_atoms"),
    (dict(pooling=(0, 1)), "pooling"),
    (dict(pooling=3), "pooling"),
    (dict(bottleneck=0), "bottleneck"),
    (dict(final_pooling=20), "final_pooling"),
    (dict(augment=("rotate",)), "augment"),
    (dict(layers=[{"colour": 1}]), "layers"),
    (dict(layers=[{}, {}], depth=3), "depth"),
    (dict(layers=[{"bottleneck": None}, {}]), "bottleneck"),
    (dict(layers=[{}, {"n_atoms": -1}]), "n_atoms"),
    (dict(patch_size=9), "patch_size"),
    (dict(lr_schedule="linear"), "lr_schedule"),
])
def test_bad_parameters_name_the_parameter(digits, params, name):
    clf = PatchDictionaryClassifier(**dict(TINY, **params))
    with pytest.raises(ValueError, match=name):
        clf.fit(digits[0][:60], digits[1][:60])


# a second layer that fits the 3 x 3 output map of the first on 8 x 8 digits
TWO_LAYERS = [{}, {"patch_size": 2, "pooling": (2, 1), "n_atoms": 8, "n_neighbors": 2}]


def test_diverging_training_is_an_error_naming_lr_epoch_and_layer(digits):
    X, y = digits[0][:100], digits[1][:100]
    clf = PatchDictionaryClassifier(**dict(TINY, layers=TWO_LAYERS, lr=1e6))
    with pytest.raises(ValueError, match=r"non-finite|loss is .*nan|loss is .*inf") as raised:
        clf.fit(X, y)
    message = str(raised.value)
    assert "PatchDictionaryClassifier" in message
    assert re.search(r"at epoch \d of 2(, batch \d+)? \(layer 1 of 2\)", message)
    assert "lr=1000000.0" in message and "lower learning rate, e.g. lr=100000" in message
    assert not hasattr(clf, "embeddings_") and not hasattr(clf, "net_")


def test_set_params_after_fit_leaves_predictions_unchanged(digits):
    X, y = digits[0][:100], digits[1][:100]
    clf = PatchDictionaryClassifier(**TINY).fit(X, y)
    before = clf.predict_proba(X), clf.predict(X), clf.score(X, y)
    clf.set_params(patch_size=2, n_atoms=8, n_neighbors=2, pooling=(2, 2), bottleneck=2,
                   final_pooling=1, batchnorm=False, depth=3, crop_padding=1,
                   image_shape=(4, 4))
    after = clf.predict_proba(X), clf.predict(X), clf.score(X, y)
    for old, new in zip(before, after):
        np.testing.assert_array_equal(new, old)
    np.testing.assert_array_equal(clf.predict_proba(X.reshape(len(X), -1)), before[0])


def test_refit_with_fewer_layers_forgets_the_deeper_fit(digits):
    X, y = digits[0][:100], digits[1][:100]
    clf = PatchDictionaryClassifier(**dict(TINY, layers=TWO_LAYERS)).fit(X, y)
    assert len(clf.embeddings_) == len(clf.layer_histories_) == 2
    clf.set_params(layers=None).fit(X, y)
    assert clf.n_layers_ == 1 and len(clf.module_.core.layers) == 1
    assert len(clf.embeddings_) == len(clf.layer_histories_) == 1
    assert clf.layer_histories_[0] is clf.history_
    # a refit that fails leaves nothing of the earlier fit
    with pytest.raises(ValueError, match="lr="):
        clf.set_params(lr=1e6).fit(X, y)
    assert not any(name.endswith("_") and not name.startswith("__") for name in vars(clf))
