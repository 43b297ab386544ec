import doctest
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from sklearn.base import BaseEstimator
from sklearn.exceptions import NotFittedError
from sklearn.metrics import log_loss

from skpatch import PatchCNNClassifier, blackout_scores, class_heatmap
from skpatch.inspection import _blackout_masks
from skpatch.plotting import plot_blackout, plot_heatmap

FAST = dict(module="resnet10", width=4, max_epochs=2, batch_size=16, lr=0.05,
            device="cpu", verbose=0, random_state=0)
DOCS = Path(__file__).resolve().parents[1] / "docs" / "user_guide"


def _assert_close(actual, expected):
    """float32 logits computed in another summation order (batch shape, CPU, threads).

    Rounding errors scale with the magnitudes summed, so the tolerance is
    relative to the largest logit compared, not a fixed absolute one.
    """
    actual, expected = np.asarray(actual), np.asarray(expected)
    scale = max(np.abs(actual).max(), np.abs(expected).max())
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5 * scale)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    X = rng.random((18, 7, 6, 2)).astype(np.float32)
    y = np.array([3, 5, 9] * 6)
    return X, y


def _fit(data, patch_size):
    X, y = data
    return PatchCNNClassifier(patch_size, **FAST).fit(X, y)


@pytest.fixture(scope="module")
def odd(data):
    return _fit(data, 3)


@pytest.fixture(scope="module")
def even(data):
    return _fit(data, 4)


def _logit_of_patch_centred_at(clf, X_train, image, r, c, T, raw_zero_border=False):
    """Slow reference: pad by hand, cut the TxT patch centred at (r, c), run the core net.

    By default the authors' convention (BagNet ``generate_heatmap_pytorch``):
    normalize the image with the training statistics, then pad the normalized
    image with zeros. ``raw_zero_border`` pads the raw image with zeros first
    (a black border), the old default, still ``pad_value=0``.
    """
    before = (T - 1) // 2  # the centre of an even patch is its upper-left middle pixel
    pads = ((before, T - 1 - before), (before, T - 1 - before), (0, 0))
    mean = X_train.mean(axis=(0, 1, 2), dtype=np.float64)
    std = X_train.std(axis=(0, 1, 2), dtype=np.float64)
    if raw_zero_border:
        padded = (np.pad(image, pads) - mean) / std
    else:
        padded = np.pad((image - mean) / std, pads)
    patch = padded[r:r + T, c:c + T]
    x = torch.as_tensor(patch.transpose(2, 0, 1)[None], dtype=torch.float32)
    with torch.no_grad():
        return clf.net_.module_.core.eval()(x)[0].numpy()


PIXELS = [(0, 0, 0), (0, 3, 2), (1, 6, 5), (1, 2, 5), (0, 6, 0)]  # borders and inside


@pytest.mark.parametrize("which, T", [("odd", 3), ("even", 4)])
def test_heatmap_pixel_is_the_logit_of_the_patch_centred_there(data, which, T, request):
    clf = request.getfixturevalue(which)
    X, _ = data
    maps = class_heatmap(clf, X[:2])
    assert maps.shape == (2, 3, 7, 6)
    for i, r, c in PIXELS:
        expected = _logit_of_patch_centred_at(clf, X, X[i], r, c, T)
        _assert_close(maps[i, :, r, c], expected)


@pytest.mark.parametrize("which, T", [("odd", 3), ("even", 4)])
def test_heatmap_pad_value_zero_keeps_the_black_border(data, which, T, request):
    clf = request.getfixturevalue(which)
    X, _ = data
    black = class_heatmap(clf, X[:2], pad_value=0.0)
    for i, r, c in PIXELS:
        expected = _logit_of_patch_centred_at(clf, X, X[i], r, c, T, raw_zero_border=True)
        _assert_close(black[i, :, r, c], expected)
    # the old default equals patch_logits' own zero padding
    _assert_close(black, clf.patch_logits(X[:2], stride=1, padding="same"))
    # the two conventions differ on the border only (the data's mean is far from 0)
    default = class_heatmap(clf, X[:2])
    inner = (slice(None), slice(None), slice(T // 2, 7 - T // 2), slice(T // 2, 6 - T // 2))
    _assert_close(default[inner], black[inner])
    assert np.abs(default[:, :, 0, 0] - black[:, :, 0, 0]).max() > 1e-3
    # another constant: the raw image padded with it by hand, then unpadded patches
    before = (T - 1) // 2
    pads = ((0, 0), (before, T - 1 - before), (before, T - 1 - before), (0, 0))
    padded = np.pad(X[:2], pads, constant_values=0.25)
    by_hand = np.stack([
        np.stack([_logit_of_patch_centred_at(clf, X, padded[i], r + before, c + before, T,
                                             raw_zero_border=True)
                  for r, c in [(0, 0), (6, 5)]])
        for i in range(2)
    ])
    quarter = class_heatmap(clf, X[:2], pad_value=0.25)
    _assert_close(quarter[:, :, [0, 6], [0, 5]], by_hand.transpose(0, 2, 1))


def test_heatmap_class_selection_and_unpadded_grid(odd, data):
    X, _ = data
    full = class_heatmap(odd, X[:3])
    # labels of classes_ of any integer type, or as an array
    for classes in ([9, 3], np.array([9, 3]), [np.int64(9), 3]):
        np.testing.assert_array_equal(class_heatmap(odd, X[:3], classes=classes),
                                      full[:, [2, 0]])
    valid = class_heatmap(odd, X[:3], padding=0)
    # unpadded patch (r, c) is the 'same' patch centred at (r + 1, c + 1) for T = 3
    _assert_close(valid, full[:, :, 1:-1, 1:-1])


def test_heatmap_classes_not_among_classes_name_the_parameter(odd, data):
    X, _ = data
    for bad, shown in [([4], r"\[4\]"), (["cat", "dog"], r"\['cat', 'dog'\]"),
                       ([3, "cat"], r"\['cat'\]")]:
        with pytest.raises(ValueError, match=rf"classes holds labels {shown} that are not "
                                             r"among the estimator's classes_ \[3, 5, 9\]"):
            class_heatmap(odd, X[:1], classes=bad)
    for bad in ([], [[3, 5]]):
        with pytest.raises(ValueError, match="classes must be a non-empty 1-D list"):
            class_heatmap(odd, X[:1], classes=bad)
    with pytest.raises(ValueError, match="'classes' parameter"):
        class_heatmap(odd, X[:1], classes=3)


def test_heatmap_string_labels_on_any_patch_estimator():
    y = np.array([0, 1, 1])
    est = _OneGoodPatch(y)
    est.classes_ = np.array(["cat", "dog"])
    X = np.zeros((3, 1))
    logits = est.patch_logits(X)
    np.testing.assert_array_equal(class_heatmap(est, X, classes=["dog"]), logits[:, [1]])
    labels = np.array(["dog", "cat", "dog"], dtype=object)
    np.testing.assert_array_equal(class_heatmap(est, X, classes=labels), logits[:, [1, 0, 1]])


def test_heatmap_selects_classes_before_the_host_copy(odd, data, monkeypatch):
    X, _ = data
    full = class_heatmap(odd, X[:3])
    copied = []
    cpu = torch.Tensor.cpu

    def recording_cpu(tensor, *args, **kwargs):
        copied.append(tuple(tensor.shape))
        return cpu(tensor, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "cpu", recording_cpu)
    maps = class_heatmap(odd, X[:3], classes=[5])
    # only fc's row of class 5 is applied now: a GEMM of another shape, float32 rounding
    _assert_close(maps, full[:, [1]])
    assert copied and all(shape[1] == 1 for shape in copied)


def test_blackout_fraction_zero_equals_score_and_log_loss(odd, data):
    X, y = data
    res = blackout_scores(odd, X, y, fractions=[0.0], alternate=False)
    assert res["accuracy"][0] == pytest.approx(odd.score(X, y))
    assert res["log_loss"][0] == pytest.approx(log_loss(y, odd.predict_proba(X)), rel=1e-6)
    assert res["accuracy_std"][0] == 0


def test_alternate_blackout_keeps_the_checkerboard(odd, data):
    X, y = data
    logits = odd.patch_logits(X).astype(np.float64)
    gh, gw = logits.shape[2:]
    kept = [logits[:, :, r, c] for r in range(gh) for c in range(gw) if (r + c) % 2 == 0]
    mean = np.mean(kept, axis=0)
    expected = np.mean(odd.classes_[mean.argmax(1)] == y)
    res = blackout_scores(odd, X, y, fractions=[0.5], n_repeats=2, random_state=0)
    assert list(res["mode"]) == ["random", "alternate"]
    assert res["accuracy"][1] == pytest.approx(expected)
    assert res["fraction"][1] == pytest.approx(1 - len(kept) / (gh * gw))


class _OneGoodPatch(BaseEstimator):
    """Fake estimator: in each image one patch votes strongly for the truth, the rest weakly against."""

    classes_ = np.array([0, 1])

    def __init__(self, y, grid=(4, 5)):
        self.y = y
        self.grid = grid

    def patch_logits(self, X, stride=None, padding=0):
        n = len(self.y)
        logits = np.zeros((n, 2) + self.grid)
        logits[np.arange(n), 1 - self.y] = 1.0
        rng = np.random.default_rng(0)
        r, c = rng.integers(0, self.grid[0], n), rng.integers(0, self.grid[1], n)
        logits[np.arange(n), self.y, r, c] = 100.0
        return logits

    def fit(self, X, y):
        return self

    def __sklearn_is_fitted__(self):
        return True


def test_random_blackout_drops_the_requested_fraction():
    y = np.tile([0, 1], 1000)
    est = _OneGoodPatch(y)
    res = blackout_scores(est, np.zeros((2000, 1)), y, fractions=[0, 0.25, 0.5, 0.75],
                          alternate=False, n_repeats=3, random_state=0)
    # correct iff the good patch survives: probability 1 - round(f * 20) / 20
    np.testing.assert_allclose(res["accuracy"], [1.0, 0.75, 0.5, 0.25], atol=0.03)
    masks = _blackout_masks((50, 4, 5), 0.25, np.random.default_rng(0))
    np.testing.assert_array_equal(masks.sum(axis=(1, 2)), 15)


def test_blackout_is_reproducible_with_random_state(odd, data):
    X, y = data
    a = blackout_scores(odd, X, y, fractions=[0.5], random_state=3)
    b = blackout_scores(odd, X, y, fractions=[0.5], random_state=3)
    np.testing.assert_array_equal(a["log_loss"], b["log_loss"])


@pytest.mark.parametrize("inference", ["patches", "image"])
def test_verbose_shows_a_progress_bar_on_stderr_and_changes_nothing(
    odd, data, capsys, monkeypatch, inference
):
    X, y = data
    monkeypatch.setattr(odd, "inference", inference)

    def run():
        return [odd.predict_proba(X), odd.patch_logits(X), class_heatmap(odd, X[:2]),
                blackout_scores(odd, X, y, fractions=[0.5], random_state=0)["log_loss"]]

    silent = run()
    out, err = capsys.readouterr()
    assert out == "" and err == ""
    monkeypatch.setattr(odd, "verbose", 1)  # the default: the epoch table of fit only
    assert [a.tolist() for a in run()] == [a.tolist() for a in silent]
    assert capsys.readouterr() == ("", "")
    monkeypatch.setattr(odd, "verbose", 2)
    shown = run()
    out, err = capsys.readouterr()
    assert out == ""
    # one bar per call, counting the images to the end
    bar = "image logits" if inference == "image" else "patch logits"
    assert err.count(f"PatchCNNClassifier {bar}: 100%") >= 1
    assert err.count("PatchCNNClassifier patch logits: 100%") >= 3
    assert f"{len(X)}/{len(X)}" in err and "2/2" in err
    for a, b in zip(shown, silent):
        np.testing.assert_array_equal(a, b)


def test_verbose_without_tqdm_is_silent(odd, data, capsys, monkeypatch):
    X, _ = data
    monkeypatch.setattr(odd, "verbose", 2)
    monkeypatch.setitem(sys.modules, "tqdm", None)  # import tqdm now raises ImportError
    proba = odd.predict_proba(X)
    assert capsys.readouterr() == ("", "")
    monkeypatch.setattr(odd, "verbose", 0)
    np.testing.assert_array_equal(proba, odd.predict_proba(X))


def test_user_guide_heatmap_snippets_run(odd, data):
    """inspection.rst's doctest, and bagnet.rst's snippet on an estimator with integer labels."""
    failed, attempted = doctest.testfile(str(DOCS / "inspection.rst"), module_relative=False)
    plt.close("all")
    assert attempted > 0 and failed == 0
    text = (DOCS / "bagnet.rst").read_text()
    block = text[text.index("    from skpatch import class_heatmap"):].split("\n\n")[0]
    X, _ = data
    namespace = {"clf": odd, "X": X}
    exec(compile(block.replace("\n    ", "\n").strip(), "bagnet.rst", "exec"), namespace)
    np.testing.assert_array_equal(namespace["maps"], class_heatmap(odd, X[:1])[:, :2])


def test_bad_inputs(odd, data):
    X, y = data
    with pytest.raises(TypeError, match="patch_logits"):
        class_heatmap(object(), X)
    with pytest.raises(NotFittedError):
        blackout_scores(PatchCNNClassifier(), X, y)
    with pytest.raises(ValueError, match=r"fractions must be .* in \[0, 1\)"):
        blackout_scores(odd, X, y, fractions=[0.5, 1.0])
    with pytest.raises(ValueError, match=r"labels \[7\] that are not among"):
        blackout_scores(odd, X, np.full(len(X), 7))
    with pytest.raises(ValueError, match="inconsistent numbers of samples"):
        blackout_scores(odd, X, y[:-1])


def test_plot_heatmap_draws_image_and_maps(odd, data):
    X, _ = data
    maps = class_heatmap(odd, X[:1])[0]
    fig = plot_heatmap(X[0, :, :, 0], maps, class_names=["3", "5", "9"], colorbar=False)
    images = [ax.images[0].get_array() for ax in fig.axes]
    np.testing.assert_array_equal(images[0], X[0, :, :, 0])
    for shown, heatmap in zip(images[1:], maps):
        np.testing.assert_array_equal(shown, heatmap)
    assert [ax.get_title() for ax in fig.axes] == ["image", "3", "5", "9"]
    with pytest.raises(ValueError, match="heatmaps must be"):
        plot_heatmap(X[0], maps[0])


def test_plot_heatmap_reference_style_limits_are_symmetric_percentiles(odd, data):
    X, _ = data
    maps = class_heatmap(odd, X[:1])[0]
    maps[1, 0, 0] = 50.0  # one outlier must not set the scale
    fig = plot_heatmap(X[0, :, :, 0], maps, style="reference", colorbar=False)
    for ax, heatmap in zip(fig.axes[1:], maps):
        shown = ax.images[0]
        bound = np.percentile(np.abs(heatmap), 99)  # the authors' plot_heatmap
        np.testing.assert_allclose(shown.get_clim(), (-bound, bound), rtol=1e-12)
        assert shown.get_cmap().name == "RdBu_r"
        np.testing.assert_array_equal(shown.get_array(), heatmap)
    assert fig.axes[2].images[0].get_clim()[1] < 50
    fig = plot_heatmap(X[0, :, :, 0], maps[:1], style="reference", percentile=50, cmap="PuOr")
    bound = np.percentile(np.abs(maps[0]), 50)
    np.testing.assert_allclose(fig.axes[1].images[0].get_clim(), (-bound, bound), rtol=1e-12)
    assert fig.axes[1].images[0].get_cmap().name == "PuOr"
    # the default style keeps matplotlib's own limits: the map's minimum and maximum
    fig = plot_heatmap(X[0, :, :, 0], maps[:1], colorbar=False)
    np.testing.assert_allclose(fig.axes[1].images[0].get_clim(), (maps[0].min(), maps[0].max()))
    assert fig.axes[1].images[0].get_cmap().name == "viridis"
    plt.close("all")
    with pytest.raises(ValueError, match="style must be"):
        plot_heatmap(X[0], maps, style="diverging")
    with pytest.raises(ValueError, match=r"percentile must be a number in \(0, 100\]"):
        plot_heatmap(X[0], maps, style="reference", percentile=0)


def test_heatmap_pad_value_needs_an_skpatch_classifier_for_a_float():
    y = np.array([0, 1])
    est = _OneGoodPatch(y)
    X = np.zeros((2, 1))
    np.testing.assert_array_equal(class_heatmap(est, X), est.patch_logits(X))
    with pytest.raises(ValueError, match=r"pad_value=0\.0 needs an skpatch classifier"):
        class_heatmap(est, X, pad_value=0.0)
    with pytest.raises(ValueError, match="pad_value"):
        class_heatmap(est, X, pad_value="black")


def test_plot_blackout_plots_the_scores(odd, data):
    X, y = data
    res = blackout_scores(odd, X, y, fractions=[0.5, 0, 0.25], n_repeats=2, random_state=0)
    ax = plot_blackout(res, metric="log_loss")
    line = ax.lines[0]
    np.testing.assert_allclose(line.get_xdata(), [0, 0.25, 0.5])
    order = np.argsort(res["fraction"][:3])
    np.testing.assert_allclose(line.get_ydata(), res["log_loss"][:3][order])
    with pytest.raises(ValueError, match="metric must be"):
        plot_blackout(res, metric="f1")


def test_heatmap_applies_only_the_selected_rows_of_the_last_layer(odd, data, monkeypatch):
    X, _ = data
    full = class_heatmap(odd, X[:3])
    widths = []
    linear = torch.nn.functional.linear

    def recording_linear(x, weight, bias=None):
        widths.append(weight.shape[0])
        return linear(x, weight, bias)

    monkeypatch.setattr(torch.nn.functional, "linear", recording_linear)
    assert class_heatmap(odd, X[:3]).shape[1] == 3 and set(widths) == {3}
    widths.clear()
    maps = class_heatmap(odd, X[:3], classes=[9, 3])
    # the ResNet's fc ran with 2 of its 3 rows only
    assert widths and set(widths) == {2}
    _assert_close(maps, full[:, [2, 0]])


def test_heatmap_of_a_core_without_known_last_layer_selects_after(data):
    X, y = data

    class Pooled(torch.nn.Module):
        def __init__(self, n_classes, in_channels):
            super().__init__()
            self.conv = torch.nn.Conv2d(in_channels, n_classes, 3)

        def forward(self, x):
            return self.conv(x).mean(dim=(2, 3))

    clf = PatchCNNClassifier(3, **{**FAST, "module": Pooled}).fit(X, y)
    full = class_heatmap(clf, X[:2])
    np.testing.assert_array_equal(class_heatmap(clf, X[:2], classes=[5]), full[:, [1]])
