"""Tests of the patch generalization bound against the paper's equations."""

import math
import pickle
import subprocess
import sys

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal
from sklearn.base import clone
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import r2_score

from skpatch import PatchBoundPredictor, generalization_bound
from skpatch.bounds import _formula as _bound_formula
from skpatch.bounds import _predictor as bounds_module
from skpatch.datasets import load_patch_size_results


def reference_bound(n_train, n_classes, height, width, channels, patch_h, patch_w,
                    stride_h=1, stride_w=1, alpha=3.0, c4=0.5, c6=1.0):
    """Eq. (13) for one setting, term by term from Section III of the paper."""
    t_eff = ((height - patch_h) / stride_h + 1) * ((width - patch_w) / stride_w + 1)
    dim = patch_h * patch_w * channels  # D_T
    theta = patch_h * patch_w / (height * width)
    mesh = (1.0 / (n_train * t_eff)) ** (alpha / dim)  # eq. (6) without c3
    m1 = 1.0 / theta ** (1.0 / dim)  # eq. (7), m1(x) = 1/x
    train_error = c4 * math.sqrt(n_classes) * -math.log(theta)  # eq. (8)
    return (c6 * mesh * m1 + train_error) / math.sqrt(t_eff)


def reference_min_bound(n_train, n_classes, size, channels, patch, stride=1, **kw):
    """Figure 3's rule: the minimum of (13) over square patches 3..patch."""
    return min(
        reference_bound(n_train, n_classes, size, size, channels, t, t,
                        stride, stride, **kw)
        for t in range(3, patch + 1)
    )


POINTS = [
    # n_train, n_classes, size, channels, patch, stride
    (50_000, 10, 32, 3, 4, 1),
    (50_000, 100, 32, 3, 8, 1),
    (5_000, 10, 96, 3, 48, 5),
    (1_200_000, 1000, 256, 3, 64, 4),
    (60_000, 10, 28, 1, 7, 2),
]


@pytest.mark.parametrize("n_train, n_classes, size, channels, patch, stride", POINTS)
def test_bound_matches_equation_13(n_train, n_classes, size, channels, patch, stride):
    got = generalization_bound(n_train, n_classes, size, patch, n_channels=channels,
                               stride=stride, min_over_smaller=False)
    want = reference_bound(n_train, n_classes, size, size, channels, patch, patch,
                           stride, stride)
    assert_allclose(got, want, rtol=1e-12)


@pytest.mark.parametrize("n_train, n_classes, size, channels, patch, stride", POINTS)
def test_min_over_smaller_matches_loop(n_train, n_classes, size, channels, patch, stride):
    got = generalization_bound(n_train, n_classes, size, patch, n_channels=channels,
                               stride=stride)
    want = reference_min_bound(n_train, n_classes, size, channels, patch, stride)
    assert_allclose(got, want, rtol=1e-12)


def test_full_image_is_the_mesh_term_alone():
    # T = H: theta = 1 so the noise term is 0, m1 = 1, T_eff = 1
    got = generalization_bound(50_000, 10, 32, 32, min_over_smaller=False)
    assert_allclose(got, 50_000.0 ** (-3.0 / (32 * 32 * 3)), rtol=1e-13)


def test_code_variant_one_point():
    # noise_model.py: (t/h)^(-1/(3 t^2)) and -log(t/h), C = 3, T_eff = ((h-t)/s+1)^2
    n_train, n_classes, h, t, s = 5_000, 10, 96, 16, 5
    t_eff = ((h - t) / s + 1) ** 2
    mesh = (1 / (n_train * t_eff)) ** (3 / (3 * t * t))
    want = (mesh * (t / h) ** (-1 / (3 * t * t))
            + 0.5 * math.sqrt(n_classes) * -math.log(t / h)) / math.sqrt(t_eff)
    got = generalization_bound(n_train, n_classes, h, t, stride=s,
                               min_over_smaller=False, formula="code")
    assert_allclose(got, want, rtol=1e-12)
    assert not np.isclose(got, generalization_bound(
        n_train, n_classes, h, t, stride=s, min_over_smaller=False))


def test_rectangular_sizes_and_strides():
    got = generalization_bound(20_000, 5, (32, 48), (8, 12), n_channels=1,
                               stride=(1, 2), min_over_smaller=False, c4=0.3, c6=2.0)
    want = reference_bound(20_000, 5, 32, 48, 1, 8, 12, 1, 2, c4=0.3, c6=2.0)
    assert_allclose(got, want, rtol=1e-12)
    # minimum: both sides shrink together, (8, 12), (7, 11), ..., (3, 7)
    got_min = generalization_bound(20_000, 5, (32, 48), (8, 12), n_channels=1,
                                   stride=(1, 2))
    want_min = min(reference_bound(20_000, 5, 32, 48, 1, 8 - j, 12 - j, 1, 2)
                   for j in range(6))
    assert_allclose(got_min, want_min, rtol=1e-12)


def test_broadcasting_matches_scalar_calls():
    n_classes = np.array([10, 100])[:, None]
    patches = np.array([4, 8, 16, 32])
    got = generalization_bound(50_000, n_classes, 32, patches)
    assert got.shape == (2, 4)
    for i, k in enumerate([10, 100]):
        for j, t in enumerate(patches):
            assert_allclose(got[i, j], reference_min_bound(50_000, k, 32, 3, int(t)),
                            rtol=1e-12)
    pair = generalization_bound(50_000, 10, (np.array([32, 40]), 48), 8,
                                min_over_smaller=False)
    assert_allclose(pair, [reference_bound(50_000, 10, 32, 48, 3, 8, 8),
                           reference_bound(50_000, 10, 40, 48, 3, 8, 8)], rtol=1e-12)


def test_result_independent_of_chunk_size(monkeypatch):
    patches = np.arange(3, 97)
    full = generalization_bound(5_000, 10, 96, patches, stride=5)
    monkeypatch.setattr(_bound_formula, "_GRID_CHUNK_ELEMENTS", 7)
    assert_array_equal(generalization_bound(5_000, 10, 96, patches, stride=5), full)


# Section III.A, around the paper's ImageNet base (256 x 256, K=1000, N=1.2M, S=4)
BASE = dict(n_train=1_200_000, n_classes=1000, image_size=256, stride=4)
PATCHES = np.arange(3, 256)  # below the full image, where the noise term is > 0


def _base_curve(**changes):
    setting = dict(BASE, **changes)
    return generalization_bound(setting["n_train"], setting["n_classes"],
                                setting["image_size"], PATCHES, stride=setting["stride"],
                                min_over_smaller=False)


def test_bound_grows_with_number_of_classes():
    curves = [_base_curve(n_classes=k) for k in (10, 100, 1000, 10_000)]
    assert np.all(np.diff(curves, axis=0) > 0)


def test_bound_grows_with_stride():
    curves = [_base_curve(stride=s) for s in (1, 2, 4, 8)]
    assert np.all(np.diff(curves, axis=0) > 0)


def test_resolution_gain_is_less_than_the_extra_patches_give():
    # at a fixed patch size more pixels mean more patches (1/sqrt(T_eff)) but
    # noisier patch labels (-log theta), so the bound falls more slowly than
    # sqrt(T_eff) grows
    low = generalization_bound(1_200_000, 1000, 256, 64, stride=4, min_over_smaller=False)
    high = generalization_bound(1_200_000, 1000, 512, 64, stride=4, min_over_smaller=False)
    t_eff_ratio = ((512 - 64) / 4 + 1) ** 2 / ((256 - 64) / 4 + 1) ** 2
    assert high < low
    assert low / high < math.sqrt(t_eff_ratio)


def test_number_of_images_has_no_visible_effect():
    # the paper: "this bound does not show any effect of number of training images"
    small, large = _base_curve(n_train=50_000), _base_curve(n_train=14_000_000)
    assert np.all(large < small)
    assert np.max(np.abs(large / small - 1)) < 1e-3


def test_min_over_smaller_never_rises_with_patch_size():
    for setting in POINTS:
        n_train, n_classes, size, channels, _, stride = setting
        curve = generalization_bound(n_train, n_classes, size, np.arange(1, size + 1),
                                     n_channels=channels, stride=stride)
        assert np.all(np.diff(curve) <= 0)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(n_train=0), "n_train must be > 0"),
        (dict(n_classes=0), "n_classes must be >= 1"),
        (dict(n_classes=-3), "n_classes must be >= 1"),
        (dict(stride=0.5), r"stride \(height\) must be >= 1"),
        (dict(stride=(1, 0)), r"stride \(width\) must be >= 1"),
        (dict(patch_size=40), "must not exceed image_size"),
        (dict(patch_size=(8, 33)), r"patch_size \(width\) must not exceed"),
        (dict(patch_size=0), r"patch_size \(height\) must be >= 1"),
        (dict(patch_size=3.5), "must hold integers"),
        (dict(n_channels=0), "n_channels must be >= 1"),
        (dict(n_train=np.nan), "n_train"),
        (dict(n_train=[50_000, np.inf]), "n_train must be finite"),
        (dict(image_size=(32, 32, 3)), r"\(h, w\) with 2 entries"),
        (dict(alpha=0.0), "alpha"),
        (dict(c4=-1.0), "c4"),
        (dict(formula="other"), "formula"),
        (dict(min_patch_size=0), "min_patch_size"),
    ],
)
def test_bound_rejects_out_of_domain_inputs(kwargs, match):
    args = dict(n_train=50_000, n_classes=10, image_size=32, patch_size=8)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        generalization_bound(args.pop("n_train"), args.pop("n_classes"),
                             args.pop("image_size"), args.pop("patch_size"), **args)


def test_bound_rejects_non_numeric():
    with pytest.raises(TypeError, match="n_train must be numeric"):
        generalization_bound(["many"], 10, 32, 8)


# --- PatchBoundPredictor ---------------------------------------------------

def _settings(rng, n):
    size = rng.choice([32, 64, 96], n)
    return np.column_stack([
        rng.choice([5_000, 50_000, 1_000_000], n), rng.choice([10, 100, 1000], n),
        size, size, rng.choice([1, 3], n), np.floor(rng.uniform(0.1, 1, n) * size),
    ]).astype(float).clip(min=3)


def _reference_targets(X, stride=1, min_over_smaller=True, **constants):
    rows = []
    for n_train, k, h, w, c, t in X:
        if min_over_smaller:
            rows.append(reference_min_bound(n_train, k, int(h), int(c), int(t), stride,
                                            **constants))
        else:
            rows.append(reference_bound(n_train, k, h, w, c, t, t, stride, stride,
                                        **constants))
    return np.array(rows)


def test_predict_with_given_constants_matches_reference(rng):
    X = _settings(rng, 12)
    model = PatchBoundPredictor(calibrate=(), c4=0.7, c6=1.5).fit(X)
    assert (model.alpha_, model.c4_, model.c6_) == (3.0, 0.7, 1.5)
    assert_allclose(model.predict(X), _reference_targets(X, c4=0.7, c6=1.5), rtol=1e-12)


@pytest.mark.parametrize("min_over_smaller", [True, False])
def test_calibration_recovers_c4_c6(rng, min_over_smaller):
    X = _settings(rng, 30)
    y = _reference_targets(X, min_over_smaller=min_over_smaller, c4=0.2, c6=3.0)
    model = PatchBoundPredictor(min_over_smaller=min_over_smaller).fit(X, y)
    assert_allclose([model.c4_, model.c6_], [0.2, 3.0], rtol=1e-8)
    assert model.alpha_ == 3.0
    assert_allclose(model.score(X, y), 1.0)


def test_calibration_recovers_alpha(rng):
    X = _settings(rng, 30)
    y = _reference_targets(X, alpha=1.5, c4=0.4, c6=2.0)
    model = PatchBoundPredictor(calibrate=("alpha", "c4", "c6")).fit(X, y)
    assert_allclose([model.alpha_, model.c4_, model.c6_], [1.5, 0.4, 2.0], rtol=1e-5)


def test_calibration_keeps_uncalibrated_constant(rng):
    X = _settings(rng, 20)
    y = _reference_targets(X, c4=0.9, c6=0.8)
    model = PatchBoundPredictor(calibrate=("c4",), c6=0.8).fit(X, y)
    assert model.c6_ == 0.8
    assert_allclose(model.c4_, 0.9, rtol=1e-8)


@pytest.mark.parametrize("formula", ["paper", "code"])
def test_calibration_beats_a_grid_on_published_errors(formula):
    X, y = load_patch_size_results(return_X_y=True)
    model = PatchBoundPredictor(formula=formula).fit(X, y)
    fitted = np.sum((model.predict(X) - y) ** 2)
    for c4 in np.linspace(0, 1, 21):
        for c6 in np.linspace(0, 4, 21):
            grid = PatchBoundPredictor(calibrate=(), c4=c4, c6=c6, formula=formula)
            assert fitted <= np.sum((grid.fit(X, y).predict(X) - y) ** 2) + 1e-12


def test_alpha_at_search_edge_warns():
    X, y = load_patch_size_results(return_X_y=True)
    with pytest.warns(ConvergenceWarning, match="edge of the searched range"):
        PatchBoundPredictor(calibrate=("alpha", "c4", "c6")).fit(X, y)


def test_dataframe_columns_by_name_and_stride_column():
    pd = pytest.importorskip("pandas")
    X, y = load_patch_size_results(return_X_y=True)
    frame = pd.DataFrame(X, columns=bounds_module.FEATURE_NAMES)[
        ["patch_size", "stride", "channels", "width", "height", "n_classes", "n_train"]
    ]
    by_name = PatchBoundPredictor(calibrate=()).fit(frame, y)
    assert list(by_name.feature_names_in_) == list(bounds_module.FEATURE_NAMES)
    want = [reference_min_bound(*row[[0, 1, 2, 4]], int(row[5]), row[6])
            for row in X]
    assert_allclose(by_name.predict(frame), want, rtol=1e-12)


def test_stride_parameter_used_without_stride_column(rng):
    X = _settings(rng, 5)
    model = PatchBoundPredictor(calibrate=(), stride=(2, 3), min_over_smaller=False)
    got = model.fit(X, np.zeros(5)).predict(X)
    want = [reference_bound(n, k, h, w, c, t, t, 2, 3) for n, k, h, w, c, t in X]
    assert_allclose(got, want, rtol=1e-12)


def test_sample_weight_is_repetition(rng):
    X = _settings(rng, 10)
    y = _reference_targets(X, c4=0.3, c6=1.0) + rng.normal(0, 0.05, 10)
    weights = rng.integers(0, 4, 10)
    weighted = PatchBoundPredictor().fit(X, y, sample_weight=weights)
    repeated = PatchBoundPredictor().fit(np.repeat(X, weights, 0), np.repeat(y, weights))
    assert_allclose([weighted.c4_, weighted.c6_], [repeated.c4_, repeated.c6_], rtol=1e-6)


def test_score_is_r2(rng):
    X = _settings(rng, 10)
    y = _reference_targets(X) + rng.normal(0, 0.05, 10)
    model = PatchBoundPredictor().fit(X, y)
    assert_allclose(model.score(X, y), r2_score(y, model.predict(X)))


def test_clone_and_pickle(rng):
    X = _settings(rng, 8)
    y = _reference_targets(X, c4=0.3, c6=1.2)
    model = PatchBoundPredictor(stride=(1, 2)).fit(X, y)
    assert clone(model).get_params() == model.get_params()
    restored = pickle.loads(pickle.dumps(model))
    assert_array_equal(restored.predict(X), model.predict(X))


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda X: X[:, :5], "6 columns"),
        (lambda X: np.column_stack([X, X[:, :2]]), "6 columns"),
        (lambda X: X * np.r_[1, 1, 1, 1, 1, -1], "Negative values"),
        (lambda X: X * np.r_[1, 1, 1, 1, 1, 10], "Column 'patch_size'.*min\\(height"),
        (lambda X: X * np.r_[0, 1, 1, 1, 1, 1], "Column 'n_train'"),
        (lambda X: X + np.r_[0, 0, 0, 0, 0.5, 0], "Column 'channels'.*integer"),
        (lambda X: np.column_stack([X, np.full(len(X), 0.5)]), "Column 'stride'"),
        (lambda X: np.where(X == X[0, 0], np.nan, X), "NaN"),
        (lambda X: X[:0], "0 sample"),
    ],
)
def test_estimator_rejects_bad_X(rng, change, match):
    X = _settings(rng, 6)
    with pytest.raises(ValueError, match=match):
        PatchBoundPredictor().fit(change(X), np.zeros(len(change(X))))


@pytest.mark.parametrize(
    "params, match",
    [
        (dict(calibrate=("c5",)), "calibrate must name constants"),
        (dict(stride=(1, 0.5)), "stride must be a number >= 1 or a pair"),
        (dict(calibrate="c4"), "calibrate"),
        (dict(formula="exact"), "formula"),
    ],
)
def test_estimator_rejects_bad_params(rng, params, match):
    X = _settings(rng, 6)
    with pytest.raises(ValueError, match=match):
        PatchBoundPredictor(**params).fit(X, np.zeros(6))


def test_predict_checks_feature_count(rng):
    X = _settings(rng, 6)
    model = PatchBoundPredictor().fit(X, np.linspace(0.1, 0.5, 6))
    for bad in (X[:, :5], np.column_stack([X, np.ones(6), np.ones(6)])):
        with pytest.raises(ValueError, match=f"X has {bad.shape[1]} features, but "
                           "PatchBoundPredictor is expecting 6 features"):
            model.predict(bad)


def _hand_eq13(n_train, n_classes, size, channels, patch, stride, c4, c6, alpha=3.0):
    """Eq. (13) for one square setting, written out once more by hand."""
    t_eff = ((size - patch) / stride + 1) ** 2
    theta = patch**2 / size**2
    dim = patch**2 * channels
    mesh_term = c6 * (n_train * t_eff) ** (-alpha / dim) * theta ** (-1 / dim)
    noise_term = c4 * math.sqrt(n_classes) * math.log(1 / theta)
    return (mesh_term + noise_term) / math.sqrt(t_eff)


def test_hand_computed_values():
    # CIFAR-10 at T = 8: T_eff = 25**2, D_T = 192, theta = 1/16
    want = (0.5 * math.sqrt(10) * math.log(16)
            + (50_000 * 625) ** (-3 / 192) * 16 ** (1 / 192)) / 25
    assert abs(want - 0.2063) < 5e-5  # the docstring's value, to its 4 decimals
    assert_allclose(generalization_bound(50_000, 10, 32, 8, min_over_smaller=False),
                    want, rtol=1e-12)
    # STL-10 at T = 48, stride 5: T_eff = (48 / 5 + 1)**2
    assert_allclose(
        generalization_bound(5_000, 10, 96, 48, stride=5, c4=0.3, c6=2.0,
                             min_over_smaller=False),
        _hand_eq13(5_000, 10, 96, 3, 48, 5, c4=0.3, c6=2.0), rtol=1e-12)


def test_fit_without_y_evaluates_the_given_constants(rng):
    X = _settings(rng, 7)
    model = PatchBoundPredictor(calibrate=(), c4=0.3, c6=2.0, min_over_smaller=False)
    assert model.fit(X) is model
    assert (model.alpha_, model.c4_, model.c6_) == (3.0, 0.3, 2.0)
    want = [_hand_eq13(n, k, int(h), int(c), int(t), 1, c4=0.3, c6=2.0)
            for n, k, h, _, c, t in X]
    assert_allclose(model.predict(X), want, rtol=1e-12)
    # the same as fitting with any y, and as the function with the same constants
    with_y = clone(model).fit(X, rng.random(7))
    assert_array_equal(with_y.predict(X), model.predict(X))
    assert_allclose(
        model.predict(X),
        generalization_bound(X[:, 0], X[:, 1], X[:, 2], X[:, 5], n_channels=X[:, 4],
                             c4=0.3, c6=2.0, min_over_smaller=False),
        rtol=1e-12)
    # settings are still checked
    with pytest.raises(ValueError, match="Column 'patch_size'"):
        clone(model).fit(X * np.r_[1, 1, 1, 1, 1, 10])
    # with constants to calibrate, y is required
    for calibrate in [("c4", "c6"), ("c4",), ("alpha", "c4", "c6")]:
        with pytest.raises(ValueError, match=r"requires y to be passed.*calibrate=\(\)"):
            PatchBoundPredictor(calibrate=calibrate).fit(X)


def test_fitted_predictor_takes_rows_with_or_without_stride():
    X, y = load_patch_size_results(return_X_y=True)  # 7 columns
    model = PatchBoundPredictor().fit(X, y)
    assert model.n_features_in_ == 7
    # without the stride column the stride parameter (1) is used
    six = X[:, :6]
    want = [reference_min_bound(*row[[0, 1, 2, 4]], int(row[5]), 1,
                                c4=model.c4_, c6=model.c6_) for row in X]
    assert_allclose(model.predict(six), want, rtol=1e-12)
    assert_array_equal(model.predict(six), model.predict(np.column_stack([six, np.ones(21)])))
    # fitted on 6 columns with a stride parameter, predicting with a stride column
    wide = PatchBoundPredictor(calibrate=(), stride=(2, 3), min_over_smaller=False).fit(six)
    assert wide.n_features_in_ == 6
    got = wide.predict(X)
    want = [reference_bound(*row[[0, 1, 2, 3, 4, 5, 5, 6, 6]]) for row in X]
    assert_allclose(got, want, rtol=1e-12)
    assert_allclose(wide.predict(six), [reference_bound(*row[[0, 1, 2, 3, 4, 5, 5]], 2, 3)
                                        for row in X], rtol=1e-12)
    with pytest.raises(ValueError, match="Column 'stride'"):
        wide.predict(np.column_stack([six, np.full(21, 0.5)]))


def test_dataframe_with_or_without_stride_column():
    pd = pytest.importorskip("pandas")
    X, y = load_patch_size_results(as_frame=True, return_X_y=True)
    model = PatchBoundPredictor().fit(X, y)
    six = X.drop(columns="stride")
    with pytest.warns(UserWarning, match="does not have valid feature names"):
        plain = model.predict(six.to_numpy())
    assert_array_equal(model.predict(six[six.columns[::-1]]), plain)
    assert_array_equal(model.predict(six), model.predict(X.assign(stride=1.0)))
    # a settings column missing under its name: not silently taken by position
    with pytest.raises(ValueError, match="columns"):
        model.predict(six.rename(columns={"channels": "C"}))


# --- published results and plots -------------------------------------------

def test_published_results():
    data = load_patch_size_results()
    assert data.data.shape == (21, 7)
    by_key = {(d, int(t)): (tr, te) for d, t, tr, te in zip(
        data.dataset, data.data[:, 5], data.train_accuracy, data.test_accuracy)}
    # Table 1 and Section IV.B of the paper
    assert by_key[("CIFAR-10", 4)] == (84.8, 66.7)
    assert by_key[("CIFAR-100", 24)] == (99.9, 75.0)
    assert by_key[("STL-10", 48)] == (100.0, 83.0)
    assert by_key[("STL-10", 4)] == (62.5, 46.3)
    assert by_key[("ImageNet-1k", 96)][1] == 72.4
    assert np.isnan(by_key[("ImageNet-1k", 224)][0])
    assert_allclose(data.target, 1 - data.test_accuracy / 100)
    stl = data.data[data.dataset == "STL-10"][0]
    assert_array_equal(stl[[0, 1, 2, 3, 4, 6]], [5_000, 10, 96, 96, 3, 5])


def test_published_results_as_frame():
    pytest.importorskip("pandas")
    X, y = load_patch_size_results(as_frame=True, return_X_y=True)
    assert list(X.columns) == list(bounds_module.FEATURE_NAMES)
    frame = load_patch_size_results(as_frame=True).frame
    assert list(frame.columns[:8]) == ["dataset", "N", "K", "H", "W", "C",
                                       "patch_size", "stride"]
    assert_allclose(frame["test_accuracy"], 100 * (1 - y))


def test_plot_bound_curves_draws_equation_13():
    pytest.importorskip("matplotlib")
    from skpatch.plotting import plot_bound_curves

    axes = plot_bound_curves()
    assert [ax.get_title() for ax in axes] == [
        "varying K", "varying S", "varying H = W", "varying N"]
    line = axes[0].lines[0]  # K = 10 around the ImageNet base
    t = line.get_xdata()
    assert t[0] == 3 and t[-1] == 256
    want = [reference_bound(1_200_000, 10, 256, 256, 3, s, s, 4, 4) for s in t[::50]]
    assert_allclose(line.get_ydata()[::50], want, rtol=1e-12)
    with pytest.raises(ValueError, match="vary keys"):
        plot_bound_curves(vary={"classes": [10]})


def test_plot_bound_vs_observed_draws_observed_and_bound():
    pytest.importorskip("matplotlib")
    from skpatch.plotting import plot_bound_vs_observed

    axes = plot_bound_vs_observed()
    cifar = axes[0]
    observed, bound = cifar.lines
    assert_allclose(observed.get_xdata(), [4, 8, 16, 24, 32])
    assert_allclose(observed.get_ydata(), [0.333, 0.158, 0.067, 0.054, 0.065], atol=1e-9)
    assert_allclose(bound.get_ydata()[-1], reference_min_bound(50_000, 10, 32, 3, 32))
    # a calibrated predictor's line, STL-10 at T = 48 (stride 5)
    X, y = load_patch_size_results(return_X_y=True)
    fitted = PatchBoundPredictor().fit(X, y)
    stl = plot_bound_vs_observed(predictors={"calibrated": fitted})[2]
    sizes, bound = stl.lines[1].get_data()
    assert_allclose(bound[sizes == 48], reference_min_bound(
        5_000, 10, 96, 3, 48, 5, c4=fitted.c4_, c6=fitted.c6_), rtol=1e-12)
    with pytest.raises(ValueError, match="7 columns"):
        data = load_patch_size_results()
        data.data = data.data[:, :6]
        plot_bound_vs_observed(data)


def test_import_does_not_load_torch_or_faiss():
    code = ("import sys, skpatch.bounds, skpatch.datasets; "
            "print('torch' in sys.modules or 'faiss' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False"


def test_dataframe_with_extra_columns_is_an_error_not_silently_dropped():
    pd = pytest.importorskip("pandas")
    from skpatch.bounds import FEATURE_NAMES

    frame = pd.DataFrame(
        [[50000, 10, 32, 32, 3, 8]], columns=list(FEATURE_NAMES[:6])
    ).assign(dataset="CIFAR-10")
    with pytest.raises(ValueError, match=r"columns \['dataset'\] besides"):
        PatchBoundPredictor().fit(frame, [0.2])
    # the settings alone are accepted, and equal the plain-array prediction
    settings = frame[list(FEATURE_NAMES[:6])]
    by_name = PatchBoundPredictor(calibrate=()).fit(settings, [0.2])
    plain = PatchBoundPredictor(calibrate=()).fit(settings.to_numpy(float), [0.2])
    np.testing.assert_allclose(
        by_name.predict(settings), plain.predict(settings.to_numpy(float))
    )


def test_refit_forgets_the_previous_fit(rng):
    pd = pytest.importorskip("pandas")
    X = _settings(rng, 20)
    y = _reference_targets(X, c4=0.2, c6=3.0)
    frame = pd.DataFrame(X, columns=bounds_module.FEATURE_NAMES[:6])
    model = PatchBoundPredictor().fit(frame, y)
    assert hasattr(model, "feature_names_in_")
    model.stale_ = "left by an older fit"  # as an attribute set only under some settings
    model.set_params(calibrate=(), c4=0.7)
    model.fit(X)
    fresh = PatchBoundPredictor(calibrate=(), c4=0.7).fit(X)
    fitted = sorted(n for n in vars(model) if n.endswith("_") and not n.startswith("_"))
    assert fitted == sorted(n for n in vars(fresh) if n.endswith("_") and not n.startswith("_"))
    assert not hasattr(model, "stale_") and not hasattr(model, "feature_names_in_")
    assert (model.alpha_, model.c4_, model.c6_) == (fresh.alpha_, fresh.c4_, fresh.c6_)
    assert_array_equal(model.predict(X), fresh.predict(X))
