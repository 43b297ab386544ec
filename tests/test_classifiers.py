import pickle
import re

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
from skpatch.classifiers._base import _NoSingletonBatchSampler, random_crop


FAST = dict(module="resnet10", width=4, max_epochs=2, batch_size=16, lr=0.05,
            device="cpu", verbose=0, random_state=0)


def assert_close_f32(actual, expected, rtol=1e-4, scale=None):
    """Compare float32 network outputs across summation orders.

    Other CPUs and thread counts add float32 terms in another order, so an
    entry near zero carries the rounding of the large terms summed into it:
    the absolute tolerance scales with the largest magnitude compared
    (``scale``, by default that of ``expected``).
    """
    expected = np.asarray(expected, dtype=np.float64)
    if scale is None:
        scale = np.max(np.abs(expected))
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * float(scale))


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
        assert_close_f32(fitted.patch_logits(X[:6]), ref)
        # a logit error d moves a probability by at most d / 2
        assert_close_f32(fitted.predict_proba(X[:6]), expected, scale=np.abs(ref).max())
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
        assert_close_f32(fitted.predict_proba(X[:5]), softmax(ref, axis=1),
                         scale=np.abs(ref).max())
    finally:
        fitted.set_params(inference="patches")


def test_patch_logits_do_not_depend_on_chunk_size(fitted, rgb_data, monkeypatch):
    X, _ = rgb_data
    full = fitted.patch_logits(X, padding="same")
    for budget in (1, 7, 100):
        monkeypatch.setattr(fitted, "_max_patches", lambda budget=budget: budget)
        # float32 kernels may round differently with the batch size
        assert_close_f32(fitted.patch_logits(X, padding="same"), full, rtol=1e-5)


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
    # the same CPU computation: only unpickling differs
    np.testing.assert_array_equal(restored.predict_proba(X), expected)


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
                                   "lr_schedule": "cosine",
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


class RecordBatchSizes(Callback):
    """Sizes of the training batches, per epoch."""

    def initialize(self):
        self.sizes = []
        return self

    def on_epoch_begin(self, net, **kwargs):
        self.sizes.append([])

    def on_batch_begin(self, net, batch=None, training=False, **kwargs):
        if training:
            self.sizes[-1].append(len(batch[0]))


@pytest.mark.parametrize("n, batch_size, expected", [
    (33, 32, [33]),          # a cross-validation fold one image over the batch size
    (34, 32, [32, 2]),
    (49, 16, [16, 16, 17]),
    (2, 1, [1, 1]),          # batch_size=1 without BatchNorm: nothing to merge into
    (1, 4, [1]),
])
def test_batch_sampler_never_leaves_a_one_image_remainder(n, batch_size, expected):
    sampler = _NoSingletonBatchSampler(torch.randperm(n).tolist(), batch_size)
    batches = list(sampler)
    assert [len(b) for b in batches] == expected
    assert len(sampler) == len(expected)
    assert sorted(i for b in batches for i in b) == list(range(n))


def test_fit_merges_a_one_image_last_batch(rgb_data):
    X, y = rgb_data
    # 33 images with batch_size 32 crashed BatchNorm ("Expected more than 1 value
    # per channel"); the lone image now joins the batch before it
    X33, y33 = np.concatenate([X, X[:9]]), np.concatenate([y, y[:9]])
    record = RecordBatchSizes()
    clf = PatchCNNClassifier(3, **{**FAST, "batch_size": 32,
                                   "callbacks": [("sizes", record)]}).fit(X33, y33)
    assert dict(clf.net_.callbacks_)["sizes"].sizes == [[33], [33]]
    # with a validation split the training part (25 of 33) is what is batched
    clf = PatchCNNClassifier(3, **{**FAST, "batch_size": 12, "train_split": 8 / 33,
                                   "callbacks": [("sizes", record)]}).fit(X33, y33)
    assert dict(clf.net_.callbacks_)["sizes"].sizes == [[12, 13], [12, 13]]


def test_batch_size_one_is_a_clear_error_with_batchnorm(rgb_data):
    X, y = rgb_data
    with pytest.raises(ValueError, match=r"batch_size=1 .*BatchNorm.*batch_size >= 2"):
        PatchCNNClassifier(3, **{**FAST, "batch_size": 1}).fit(X, y)

    class NoBatchNorm(torch.nn.Module):
        def __init__(self, n_classes, in_channels):
            super().__init__()
            self.fc = torch.nn.Linear(in_channels, n_classes)

        def forward(self, x):
            return self.fc(x.mean(dim=(2, 3)))

    clf = PatchCNNClassifier(3, **{**FAST, "batch_size": 1, "module": NoBatchNorm,
                                   "max_epochs": 1}).fit(X[:6], y[:6])
    assert clf.history_[-1, "train_batch_count"] == 6


class WrongOutputs(torch.nn.Module):
    """Five outputs whatever the number of classes."""

    def __init__(self, n_classes=None, in_channels=3):
        super().__init__()
        self.fc = torch.nn.Linear(in_channels, 5)

    def forward(self, x):
        return self.fc(x.mean(dim=(2, 3)))


class MapOutputs(torch.nn.Module):
    """Per-pixel class maps (B, K, h, w) instead of logits (B, K)."""

    def __init__(self, n_classes, in_channels):
        super().__init__()
        self.conv = torch.nn.Conv2d(in_channels, n_classes, 1)

    def forward(self, x):
        return self.conv(x)


def test_module_returning_maps_fails_at_fit(rgb_data):
    X, y = rgb_data
    with pytest.raises(ValueError, match=r"module \(MapOutputs\) returns shape \(1, 3, 3, 3\)"
                                         r" .*y has 3 classes"):
        PatchCNNClassifier(3, **{**FAST, "module": MapOutputs}).fit(X, y)


@pytest.mark.parametrize("module", [WrongOutputs, WrongOutputs(3, 3)])
def test_module_with_wrong_output_size_fails_at_fit(rgb_data, module):
    X, y = rgb_data
    with pytest.raises(ValueError, match=r"module \(WrongOutputs\) returns 5 outputs .*"
                                         r"y has 3 classes"):
        PatchCNNClassifier(3, **{**FAST, "module": module}).fit(X, y)


def test_onecycle_schedule_steps_per_batch_to_the_end(rgb_data):
    X, y = rgb_data
    # 18 training images after the split: batches of 8, 8 and 2
    clf = PatchCNNClassifier(3, **{**FAST, "max_epochs": 3, "batch_size": 8,
                                   "train_split": 0.25, "lr_schedule": "onecycle"}).fit(X, y)
    recorded = [b["event_lr"] for epoch in clf.history_ for b in epoch["batches"]
                if "event_lr" in b]
    # an independent OneCycleLR over 3 epochs x 2 steps on a dummy parameter
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=0.05, momentum=0.9)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=0.05, epochs=3, steps_per_epoch=3, cycle_momentum=False)
    expected = []
    for _ in range(9):
        expected.append(schedule.get_last_lr()[0])
        optimizer.step()
        schedule.step()
    assert list(clf.history_[:, "train_batch_count"]) == [3, 3, 3]
    np.testing.assert_allclose(recorded, expected, rtol=1e-12)
    assert max(recorded) == pytest.approx(0.05, rel=0.1)
    # the last batch trains at OneCycleLR's final rate, lr / (25 * 1e4)
    assert recorded[-1] == pytest.approx(0.05 / 25 / 1e4, rel=1e-6)
    # momentum is the user's, not cycled
    assert clf.net_.optimizer_.param_groups[0]["momentum"] == 0.9


def test_defaults_suit_small_data_sets():
    params = PatchCNNClassifier().get_params()
    # measured on digits (1,257 training images, ResNet-18, 2 epochs): batch_size
    # 256 gave 5 steps per epoch and 10% test accuracy (chance); 64 with the
    # one-cycle schedule gave 70% (31% with per-epoch cosine annealing)
    assert params["batch_size"] == 64 and params["lr_schedule"] == "onecycle"


# ---- per-fit randomness, devices, fitted module and callbacks --------------------


def _fit_in_threads(make, X, y, seeds):
    """Fit ``make(seed)`` for every seed, each in its own thread, all at once."""
    import threading

    fitted, errors = {}, []
    barrier = threading.Barrier(len(seeds))

    def work(seed):
        try:
            barrier.wait()
            fitted[seed] = make(seed).fit(X, y)
        except Exception as exc:  # re-raised in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(seed,)) for seed in seeds]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return fitted


def test_seeded_fits_in_threads_equal_serial_fits(rgb_data):
    X, y = rgb_data

    def make(seed):
        # crops, flips, shuffling and a validation split all draw random numbers
        return PatchCNNClassifier(3, **{**FAST, "random_state": seed, "train_split": 0.25})

    serial = {seed: make(seed).fit(X, y).predict_proba(X) for seed in (0, 1)}
    threaded = _fit_in_threads(make, X, y, (0, 1))
    for seed in (0, 1):
        # bit for bit: the fits share no generator (0.065 apart before, one global one)
        np.testing.assert_array_equal(threaded[seed].predict_proba(X), serial[seed])
    assert not np.array_equal(serial[0], serial[1])


def test_fit_leaves_global_generators_alone(rgb_data):
    X, y = rgb_data
    torch_state, numpy_state = torch.get_rng_state(), np.random.get_state()
    clf = PatchCNNClassifier(3, **{**FAST, "train_split": 0.25}).fit(X, y)
    clf.predict_proba(X)
    assert torch.equal(torch.get_rng_state(), torch_state)
    after = np.random.get_state()
    assert after[0] == numpy_state[0] and after[2:] == numpy_state[2:]
    np.testing.assert_array_equal(after[1], numpy_state[1])
    # and the global generators do not feed the fit: reseeding them changes nothing
    torch.manual_seed(123)
    again = PatchCNNClassifier(3, **{**FAST, "train_split": 0.25}).fit(X, y)
    torch.set_rng_state(torch_state)
    np.testing.assert_array_equal(again.predict_proba(X), clf.predict_proba(X))


def test_grid_search_in_threads_equals_serial_search():
    from joblib import parallel_config

    rng = np.random.default_rng(1)
    X, y = stripes(48, 8, rng)
    cv = StratifiedKFold(2, shuffle=True, random_state=0)
    params = {**FAST, "max_epochs": 1}
    grid = {"patch_size": [2, 4]}
    serial = GridSearchCV(PatchCNNClassifier(**params), grid, cv=cv, n_jobs=1).fit(X, y)
    with parallel_config(backend="threading"):
        threaded = GridSearchCV(PatchCNNClassifier(**params), grid, cv=cv, n_jobs=2).fit(X, y)
    np.testing.assert_array_equal(threaded.cv_results_["mean_test_score"],
                                  serial.cv_results_["mean_test_score"])
    np.testing.assert_array_equal(threaded.best_estimator_.predict_proba(X),
                                  serial.best_estimator_.predict_proba(X))


def test_random_crop_draws_from_the_given_generator():
    x = torch.arange(64, dtype=torch.float32).reshape(1, 1, 8, 8).expand(50, 1, 8, 8)
    state = torch.get_rng_state()
    a = random_crop(x, (3, 4), generator=torch.Generator().manual_seed(5))
    b = random_crop(x, (3, 4), generator=torch.Generator().manual_seed(5))
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a, b)
    # the same draws as torch's global generator seeded alike: the generator is used
    with torch.random.fork_rng():
        torch.manual_seed(5)
        expected = random_crop(x, (3, 4))
    assert torch.equal(a, expected)
    assert not torch.equal(a, random_crop(x, (3, 4), generator=torch.Generator().manual_seed(6)))


def test_network_initialization_equals_default_construction_with_that_seed():
    from skpatch.nn import build_initialized, init_parameters, resnet10

    net = build_initialized(lambda: resnet10(n_classes=3, in_channels=2, width=4),
                            torch.Generator().manual_seed(7))
    with torch.random.fork_rng():
        torch.manual_seed(7)
        expected = resnet10(n_classes=3, in_channels=2, width=4)
    assert net.state_dict().keys() == expected.state_dict().keys()
    for key, value in expected.state_dict().items():
        assert torch.equal(net.state_dict()[key], value), key

    class OwnParameter(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = torch.nn.Parameter(torch.ones(1))

    with pytest.raises(TypeError, match="OwnParameter holds parameters .* instance"):
        init_parameters(OwnParameter(), torch.Generator())


class _CountEpochs(Callback):
    """Epochs seen; at module level so that a fitted classifier holding it pickles."""

    def initialize(self):
        self.n_epochs = 0
        return self

    def on_epoch_end(self, net, **kwargs):
        self.n_epochs += 1


def test_fitted_module_is_hook_ready_and_callbacks_are_reachable(rgb_data):
    X, y = rgb_data
    given = _CountEpochs()
    clf = PatchCNNClassifier(3, **{**FAST, "callbacks": [given]}).fit(X, y)
    assert clf.module_ is clf.net_.module_ and not clf.module_.training
    # the user's object is copied; the copy that ran is in callbacks_
    assert not hasattr(given, "n_epochs")
    assert clf.callbacks_["user_0"].n_epochs == FAST["max_epochs"]
    assert clf.callbacks_["user_0"] is dict(clf.net_.callbacks_)["user_0"]
    assert "lr_schedule" in clf.callbacks_
    # a forward hook on module_ sees the inference passes and changes nothing
    seen = []
    handle = clf.module_.core.fc.register_forward_hook(lambda m, i, o: seen.append(o.shape))
    try:
        logits = clf.patch_logits(X[:2])
    finally:
        handle.remove()
    assert sum(shape[0] for shape in seen) == 2 * 7 * 6  # every 3x3 patch of 9x8 images
    restored = pickle.loads(pickle.dumps(clf))
    assert restored.module_ is restored.net_.module_
    assert restored.callbacks_["user_0"].n_epochs == FAST["max_epochs"]
    np.testing.assert_array_equal(restored.patch_logits(X[:2]), logits)


@pytest.mark.parametrize("fitted_device", ["cuda", "cuda:1"])
def test_gpu_fitted_device_runs_on_the_cpu_with_a_warning(fitted, rgb_data, fitted_device):
    X, _ = rgb_data
    if torch.cuda.device_count() > 1:
        pytest.skip("needs a machine without that GPU")
    expected = fitted.predict(X), fitted.predict_proba(X)
    gpu_like = pickle.loads(pickle.dumps(fitted))
    gpu_like.device_ = fitted_device  # what a fit on that GPU records
    with pytest.warns(UserWarning, match=rf"PatchCNNClassifier .*'{fitted_device}'"):
        restored = pickle.loads(pickle.dumps(gpu_like))
    assert restored.device_ == "cpu" and str(restored.net_.device) == "cpu"
    np.testing.assert_array_equal(restored.predict(X), expected[0])
    np.testing.assert_array_equal(restored.predict_proba(X), expected[1])


def test_absent_explicit_device_is_an_error_at_fit(rgb_data):
    X, y = rgb_data
    if torch.cuda.is_available():
        pytest.skip("needs a machine without CUDA")
    for device in ("cuda", "cuda:0"):
        with pytest.raises(ValueError, match=f"device='{device}'"):
            PatchCNNClassifier(3, **{**FAST, "device": device}).fit(X, y)


def test_torch_pieces_are_public_in_skpatch_nn():
    import skpatch.classifiers._base as base
    import skpatch.nn as nn

    for name in ("PatchNetModule", "random_crop", "sliding_window_logits"):
        assert name in nn.__all__
        # the old private names still work, and are the same objects
        assert getattr(base, name) is getattr(nn, name)


class _ZeroInitHead(torch.nn.Module):
    """A user network whose constructor sets its own initial values."""

    def __init__(self, n_classes, in_channels):
        super().__init__()
        self.conv = torch.nn.Conv2d(in_channels, 6, 3, padding=1)
        self.scale = torch.nn.Parameter(torch.full((1,), 0.5))
        self.head = torch.nn.Linear(6, n_classes)
        torch.nn.init.zeros_(self.head.weight)

    def forward(self, x):
        x = torch.relu(self.conv(x)).mean(dim=(2, 3))
        return self.head(x * self.scale)


def test_a_module_class_keeps_its_own_initialization_seeded_by_the_fit():
    from skpatch.nn import build_seeded

    def build(seed):
        return build_seeded(lambda: _ZeroInitHead(3, 2), torch.Generator().manual_seed(seed))

    before = torch.random.get_rng_state()
    net = build(7)
    assert torch.equal(torch.random.get_rng_state(), before)  # global generator restored
    # the constructor ran as written: its zeros and its 0.5 are kept
    assert torch.count_nonzero(net.head.weight) == 0 and net.scale.item() == 0.5
    # the random layers are drawn from the seed: the same seed, the same weights
    again, other = build(7), build(8)
    assert torch.equal(net.conv.weight, again.conv.weight)
    assert not torch.equal(net.conv.weight, other.conv.weight)
    # and the same in threads as serially
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(2) as pool:
        threaded = list(pool.map(build, [7, 8, 7, 8]))
    for got, expected in zip(threaded, [net, other, net, other]):
        assert torch.equal(got.conv.weight, expected.conv.weight)


def test_diverging_training_is_an_error_naming_lr_and_epoch(rgb_data):
    X, y = rgb_data
    clf = PatchCNNClassifier(3, **FAST).fit(X, y)
    # a nan or inf loss in some batch, or overflowed weights at an epoch's end
    with pytest.raises(ValueError, match=r"non-finite|loss is .*nan|loss is .*inf") as raised:
        clf.set_params(lr=1e6).fit(X, y)
    message = str(raised.value)
    assert "PatchCNNClassifier" in message and re.search(r"at epoch \d of 2", message)
    assert "lr=1000000.0" in message and "lower learning rate, e.g. lr=100000" in message
    # no mix of the first fit and the failed one: the estimator is unfitted
    assert not hasattr(clf, "net_") and not hasattr(clf, "classes_")
    with pytest.raises(NotFittedError):
        clf.predict(X)


class _PoisonLastStep(Callback):
    """Turns one weight into nan after the last batch of the first epoch (its loss was finite)."""

    def on_batch_end(self, net, training=None, **kwargs):
        history = net.history
        if training and len(history) == 1 and len(history[-1]["batches"]) == 2:
            with torch.no_grad():
                net.module_.core.fc.bias[0] = float("nan")


def test_non_finite_weights_after_a_finite_loss_are_an_error(rgb_data):
    X, y = rgb_data  # 24 images in batches of 16 + 8: two batches per epoch
    clf = PatchCNNClassifier(3, **{**FAST, "callbacks": [_PoisonLastStep()]})
    with pytest.raises(ValueError, match=r"weights became non-finite .* at epoch 1 of 2 with "
                                         r"lr=0\.05.* e\.g\. lr=0\.005"):
        clf.fit(X, y)


def test_set_params_after_fit_leaves_inference_unchanged(fitted, rgb_data):
    X, y = rgb_data
    clf = pickle.loads(pickle.dumps(fitted))
    before = (clf.patch_logits(X), clf.patch_logits(X, stride=2, padding="same"),
              clf.predict_proba(X), clf.predict(X), clf.score(X, y))
    # parameters that shape the network or describe rows take effect at the next fit only
    clf.set_params(patch_size=5, module="resnet18", width=8, image_shape=(2, 2))
    after = (clf.patch_logits(X), clf.patch_logits(X, stride=2, padding="same"),
             clf.predict_proba(X), clf.predict(X), clf.score(X, y))
    for old, new in zip(before, after):
        np.testing.assert_array_equal(new, old)
    # rows are read with the fitted image_shape_, not the changed parameter
    np.testing.assert_array_equal(clf.predict_proba(X.reshape(len(X), -1)), before[2])
    # a bad inference mode set after fit is an error, not a silent fallback
    with pytest.raises(ValueError, match="inference must be"):
        clf.set_params(inference="patch").predict(X)


def test_refit_forgets_the_earlier_fit(rgb_data):
    X, y = rgb_data
    clf = PatchCNNClassifier(3, **{**FAST, "train_split": 0.25,
                                   "callbacks": [("epochs", _CountEpochs())]}).fit(X, y)
    assert "valid_loss" in clf.history_[-1] and "epochs" in clf.callbacks_
    clf.stale_ = "an attribute only the first fit wrote"
    clf.set_params(train_split=None, callbacks=None).fit(X[:, :, :, :1], y)
    assert not hasattr(clf, "stale_")
    assert "valid_loss" not in clf.history_[-1] and "epochs" not in clf.callbacks_
    assert clf.image_shape_ == (9, 8, 1) and clf.channel_mean_.shape == (1,)


def _default_verbosity_classifiers():
    from skpatch import BagNetClassifier, PatchDictionaryClassifier

    # every setting but verbose, which keeps its default
    return [
        PatchCNNClassifier(3, **{k: v for k, v in FAST.items() if k != "verbose"}),
        BagNetClassifier(9, width=2, layers=(1, 1, 1, 1), max_epochs=1, batch_size=8,
                         device="cpu", random_state=0),
        PatchDictionaryClassifier(patch_size=3, n_atoms=8, n_neighbors=2, pooling=(3, 3),
                                  bottleneck=4, max_epochs=1, batch_size=8, device="cpu",
                                  random_state=0),
    ]


@pytest.mark.parametrize("clf", _default_verbosity_classifiers(),
                         ids=lambda clf: type(clf).__name__)
def test_prediction_is_silent_by_default(clf, capsys):
    # predict and score run in every fold of a cross-validation: no output unless asked
    rng = np.random.default_rng(0)
    X = rng.random((16, 9, 9, 3)).astype(np.float32)
    y = np.arange(16) % 2
    clf.fit(X, y)
    out, _ = capsys.readouterr()
    assert "train_loss" in out  # verbose=1 keeps skorch's epoch table in fit
    clf.predict(X)
    clf.predict_proba(X)
    clf.score(X, y)
    if hasattr(clf, "patch_logits"):
        clf.patch_logits(X)
    assert capsys.readouterr() == ("", "")
    clf.set_params(verbose=2).predict(X)  # opt-in progress bar on stderr
    out, err = capsys.readouterr()
    assert out == "" and "100%" in err
