import pickle

import numpy as np
import pytest
import torch
from scipy.special import softmax
from scipy.stats import chisquare
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from skorch.callbacks import Callback

from skpatch import PatchCNNClassifier, extract_patches
from skpatch._base_classifier import random_crop

# the shared cores are oversubscribed; torch's spinning threads only slow down
torch.set_num_threads(1)

FAST = dict(module="resnet10", width=4, max_epochs=2, batch_size=16, lr=0.05,
            device="cpu", verbose=0, random_state=0)


def stripes(n, size, rng):
    """Vertical (class 0) or horizontal (class 1) stripes of random phase.

    Every image has the same mean brightness; only the orientation inside a
    small patch tells the classes apart.
    """
    y = rng.integers(0, 2, n)
    r, c = np.mgrid[:size, :size]
    phase = rng.uniform(0, 2 * np.pi, (n, 1, 1))
    coord = np.where(y[:, None, None] == 0, c[None], r[None])
    X = 0.5 + 0.3 * np.sin(2 * np.pi * coord / 4 + phase)
    X = X + 0.15 * rng.standard_normal((n, size, size))
    return X.astype(np.float32), y


@pytest.fixture(scope="module")
def rgb_data():
    rng = np.random.default_rng(0)
    X = rng.integers(0, 256, (24, 9, 8, 3), dtype=np.uint8)
    y = np.array(["cat", "dog", "emu"] * 8)
    return X, y


@pytest.fixture(scope="module")
def fitted(rgb_data):
    X, y = rgb_data
    return PatchCNNClassifier(3, **FAST).fit(X, y)


def reference_patch_logits(clf, X_train, X, patch_size, stride=1, padding=0):
    """Logits of patches cut with extract_patches and normalized here, through the core net."""
    train = np.asarray(X_train, dtype=np.float64) / 255.0
    mean, std = train.mean(axis=(0, 1, 2)), train.std(axis=(0, 1, 2))
    patches = extract_patches(np.asarray(X, dtype=np.float64) / 255.0, patch_size,
                              stride=stride, padding=padding)
    n, gh, gw = patches.shape[:3]
    flat = (patches.reshape(-1, *patches.shape[3:]) - mean) / std
    x = torch.as_tensor(flat.transpose(0, 3, 1, 2), dtype=torch.float32)
    core = clf.net_.module_.core.eval()
    with torch.no_grad():
        logits = core(x).numpy().astype(np.float64)
    return logits.reshape(n, gh, gw, -1).transpose(0, 3, 1, 2)


@pytest.mark.parametrize("stride", [1, 2, (3, 1)])
def test_predict_proba_is_softmax_of_mean_patch_logits(fitted, rgb_data, stride):
    X, y = rgb_data
    ref = reference_patch_logits(fitted, X, X[:6], 3, stride=stride)
    expected = softmax(ref.mean(axis=(2, 3)), axis=1)
    # the inference stride is read at predict time: no refit needed
    fitted.set_params(inference_stride=stride)
    try:
        np.testing.assert_allclose(fitted.patch_logits(X[:6]), ref, atol=1e-4)
        np.testing.assert_allclose(fitted.predict_proba(X[:6]), expected, atol=1e-5)
        np.testing.assert_array_equal(
            fitted.predict(X[:6]), np.array(["cat", "dog", "emu"])[expected.argmax(1)]
        )
    finally:
        fitted.set_params(inference_stride=1)


def test_image_inference_feeds_the_whole_image(fitted, rgb_data):
    X, _ = rgb_data
    ref = reference_patch_logits(fitted, X, X[:5], (9, 8))[:, :, 0, 0]
    fitted.set_params(inference="image")
    try:
        np.testing.assert_allclose(fitted.predict_proba(X[:5]), softmax(ref, axis=1),
                                   atol=1e-5)
    finally:
        fitted.set_params(inference="patches")


def test_patch_logits_do_not_depend_on_chunk_size(fitted, rgb_data, monkeypatch):
    X, _ = rgb_data
    full = fitted.patch_logits(X, padding="same")
    for budget in (1, 7, 100):
        monkeypatch.setattr(fitted, "_max_patches", lambda budget=budget: budget)
        np.testing.assert_allclose(fitted.patch_logits(X, padding="same"), full, atol=1e-5)


def test_learns_a_task_carried_by_local_patch_statistics():
    rng = np.random.default_rng(0)
    X, y = stripes(240, 12, rng)
    clf = PatchCNNClassifier(4, **{**FAST, "width": 8, "max_epochs": 6, "batch_size": 32})
    clf.fit(X[:160], y[:160])
    assert clf.score(X[160:], y[160:]) >= 0.9
    # chance level is 0.5: the whole-image mode learned the same local cue
    assert clf.set_params(inference="image").score(X[160:], y[160:]) >= 0.75


def test_fixed_random_state_is_deterministic_and_leaves_global_rng_alone(rgb_data):
    X, y = rgb_data
    state = torch.get_rng_state()
    a = PatchCNNClassifier(3, **FAST).fit(X, y).predict_proba(X)
    b = PatchCNNClassifier(3, **FAST).fit(X, y).predict_proba(X)
    np.testing.assert_array_equal(a, b)
    assert torch.equal(state, torch.get_rng_state())
    c = PatchCNNClassifier(3, **{**FAST, "random_state": 1}).fit(X, y).predict_proba(X)
    assert not np.allclose(a, c)


def test_random_crop_is_uniform_and_exact():
    image = torch.arange(36, dtype=torch.float32).reshape(1, 1, 6, 6)
    batch = image.expand(4000, 1, 6, 6)
    generator_state = torch.get_rng_state()
    torch.manual_seed(0)
    crops = random_crop(batch, (3, 3))
    torch.set_rng_state(generator_state)
    top_left = crops[:, 0, 0, 0].long().numpy()
    rows, cols = top_left // 6, top_left % 6
    assert rows.max() <= 3 and cols.max() <= 3
    for crop, r, c in zip(crops[:50].numpy(), rows, cols):
        np.testing.assert_array_equal(crop[0], image[0, 0, r:r + 3, c:c + 3].numpy())
    counts = np.bincount(rows * 4 + cols, minlength=16)
    assert chisquare(counts).pvalue > 1e-3


def test_clone_and_pickle(fitted, rgb_data):
    X, _ = rgb_data
    twin = clone(fitted)
    assert twin.get_params() == fitted.get_params()
    with pytest.raises(NotFittedError):
        twin.predict(X)
    restored = pickle.loads(pickle.dumps(fitted))
    np.testing.assert_array_equal(restored.predict_proba(X), fitted.predict_proba(X))
    assert restored.device_ == "cpu"
    assert len(restored.history_) == FAST["max_epochs"]


def test_model_fitted_on_a_gpu_loads_on_a_cpu(fitted, rgb_data):
    X, _ = rgb_data
    expected = fitted.predict_proba(X)
    if torch.cuda.is_available():
        pytest.skip("needs a machine without CUDA to exercise the CPU fallback")
    gpu_like = pickle.loads(pickle.dumps(fitted))
    # what a CUDA fit leaves behind: device strings and GPU-only module settings
    gpu_like.net_.device = gpu_like.device_ = "cuda"
    gpu_like.net_.module_.amp = gpu_like.net_.module_.channels_last = True
    with pytest.warns(match="(?i)cuda"):
        restored = pickle.loads(pickle.dumps(gpu_like))
    assert restored.device_ == "cpu" and not restored.net_.module_.amp
    np.testing.assert_allclose(restored.predict_proba(X), expected, atol=1e-6)


def test_grid_search_over_patch_size_matches_sequential_fits():
    rng = np.random.default_rng(1)
    X, y = stripes(48, 8, rng)
    cv = StratifiedKFold(2, shuffle=True, random_state=0)
    grid = GridSearchCV(PatchCNNClassifier(**FAST), {"patch_size": [2, 4]}, cv=cv, n_jobs=2)
    grid.fit(X, y)
    for index, patch_size in enumerate([2, 4]):
        scores = [
            PatchCNNClassifier(patch_size, **FAST).fit(X[tr], y[tr]).score(X[te], y[te])
            for tr, te in cv.split(X, y)
        ]
        assert grid.cv_results_["mean_test_score"][index] == pytest.approx(np.mean(scores))
    assert grid.best_estimator_.patch_size == grid.best_params_["patch_size"]


def test_train_split_and_callbacks_are_passed_to_skorch(rgb_data):
    X, y = rgb_data

    class CountEpochs(Callback):
        def initialize(self):
            self.n_epochs = 0
            return self

        def on_epoch_end(self, net, **kwargs):
            self.n_epochs += 1

    clf = PatchCNNClassifier(3, **{**FAST, "max_epochs": 3, "train_split": 0.25,
                                   "callbacks": [("count", CountEpochs())]}).fit(X, y)
    assert dict(clf.net_.callbacks_)["count"].n_epochs == 3
    assert all("valid_loss" in row for row in clf.history_)
    # cosine schedule from lr to 0 over max_epochs, per epoch
    expected = [0.05 * (1 + np.cos(np.pi * e / 3)) / 2 for e in range(3)]
    np.testing.assert_allclose(clf.history_[:, "event_lr"], expected)
    optimizer_lr = clf.net_.optimizer_.param_groups[0]["lr"]
    assert optimizer_lr == pytest.approx(0.05 * (1 + np.cos(np.pi * 3 / 3)) / 2, abs=1e-12)


def test_module_may_be_a_class_or_an_instance(rgb_data):
    X, y = rgb_data

    class Linear(torch.nn.Module):
        def __init__(self, n_classes, in_channels):
            super().__init__()
            self.fc = torch.nn.Linear(in_channels, n_classes)

        def forward(self, x):
            return self.fc(x.mean(dim=(2, 3)))

    by_class = PatchCNNClassifier(3, **{**FAST, "module": Linear}).fit(X, y)
    instance = Linear(3, 3)
    by_instance = PatchCNNClassifier(3, **{**FAST, "module": instance}).fit(X, y)
    # the user's instance is copied, not trained in place
    assert not torch.equal(instance.fc.weight, by_instance.net_.module_.core.fc.weight)
    assert by_class.predict_proba(X).shape == (24, 3)


@pytest.mark.parametrize(
    "params, match",
    [
        ({"patch_size": 10}, "patch_size .* larger than the images"),
        ({"module": "resnet50"}, "'module' parameter"),
        ({"inference_stride": 0}, "'inference_stride' parameter"),
        ({"augment": ("rotate",)}, "augment must hold"),
        ({"device": "tpu"}, "device must be"),
        ({"inference": "mean"}, "'inference' parameter"),
    ],
)
def test_bad_parameters(rgb_data, params, match):
    X, y = rgb_data
    with pytest.raises(ValueError, match=match):
        PatchCNNClassifier(**{**FAST, "patch_size": 3, **params}).fit(X, y)


def test_bad_inputs(fitted, rgb_data):
    X, y = rgb_data
    with pytest.raises(ValueError, match="1 class"):
        PatchCNNClassifier(3, **FAST).fit(X, np.zeros(len(X)))
    with pytest.raises(ValueError, match="stride must be >= 1"):
        fitted.patch_logits(X, stride=0)
    with pytest.raises(ValueError, match=r"fitted on images of shape \(9, 8, 3\)"):
        fitted.predict(X[..., :2])
    with pytest.raises(ValueError, match="NaN|infinity"):
        fitted.predict(np.full((2, 9, 8, 3), np.nan))
    with pytest.raises(ValueError, match="inconsistent numbers of samples"):
        PatchCNNClassifier(3, **FAST).fit(X, y[:-1])
