"""Path diagnostic plots: what is drawn equals what was given."""

import warnings

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from scipy.stats import pearsonr  # noqa: E402

from skpatch.plotting import (  # noqa: E402
    plot_neighbour_ranks,
    plot_overlap_vs_distance,
    plot_ratio_vs_error,
    plot_similarity_over_epochs,
)


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


@pytest.fixture
def no_show(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("plt.show() was called")

    monkeypatch.setattr(plt, "show", fail)


def _band_vertices(collection):
    return collection.get_paths()[0].vertices


def test_similarity_band_median_equals_nanquantile(rng, no_show):
    values = {"a": rng.random((5, 30)), "b": rng.random((5, 30))}
    values["a"][2, :10] = np.nan  # undefined cosines are left out
    ax = plot_similarity_over_epochs(values)
    assert isinstance(ax, Axes)
    assert len(ax.lines) == 2
    for line, layer in zip(ax.lines, ["a", "b"]):
        np.testing.assert_array_equal(line.get_xdata(), np.arange(1, 6))
        np.testing.assert_allclose(line.get_ydata(), np.nanquantile(values[layer], 0.5, axis=1))
        assert line.get_label().startswith(layer)
    # the band spans the outer quantiles
    low, high = np.nanquantile(values["a"], [0.1, 0.9], axis=1)
    band_y = _band_vertices(ax.collections[0])[:, 1]
    np.testing.assert_allclose(band_y.min(), low.min())
    np.testing.assert_allclose(band_y.max(), high.max())


def test_similarity_custom_quantiles_epochs_and_given_axes(rng):
    values = rng.random((3, 8))
    _, given = plt.subplots()
    ax = plot_similarity_over_epochs(values, quantiles=(0.25, 0.75, 1.0), epochs=[4, 5, 6],
                                     ax=given)
    assert ax is given
    np.testing.assert_array_equal(ax.lines[0].get_xdata(), [4, 5, 6])
    np.testing.assert_allclose(ax.lines[0].get_ydata(), np.quantile(values, 0.75, axis=1))


def test_similarity_all_nan_epoch_is_a_gap(rng):
    values = rng.random((3, 4))
    values[1] = np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        ax = plot_similarity_over_epochs({"l": values})
    assert np.isnan(ax.lines[0].get_ydata()[1])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(similarity={}), "similarity"),
        (dict(similarity={"l": np.ones(3)}), "similarity"),
        (dict(similarity={"l": np.ones((2, 3))}, quantiles=(0.9, 0.5, 0.1)), "quantiles"),
        (dict(similarity={"l": np.ones((2, 3))}, quantiles=(0.1, 0.9)), "quantiles"),
        (dict(similarity={"l": np.ones((2, 3))}, epochs=[1, 2, 3]), "epochs"),
    ],
)
def test_similarity_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        plot_similarity_over_epochs(**kwargs)


def test_overlap_scatter_offsets_equal_input(rng, no_show):
    overlap = {"l1": rng.integers(0, 50, 10), "l2": rng.integers(0, 50, 10)}
    distance = rng.random(10)
    ax = plot_overlap_vs_distance(overlap, distance)
    assert isinstance(ax, Axes)
    assert len(ax.collections) == 2
    for collection, layer in zip(ax.collections, ["l1", "l2"]):
        np.testing.assert_allclose(collection.get_offsets(),
                                   np.column_stack([distance, overlap[layer]]))
        assert collection.get_label() == layer


def test_overlap_bad_input():
    with pytest.raises(ValueError, match="distance"):
        plot_overlap_vs_distance(np.ones(3), np.ones(4))
    with pytest.raises(ValueError, match="distance"):
        plot_overlap_vs_distance(np.ones(3), np.ones((3, 1)))
    with pytest.raises(ValueError, match="overlap"):
        plot_overlap_vs_distance({"l": np.ones((2, 3))}, np.ones(3))


def test_neighbour_ranks_lines_equal_input(no_show):
    # 3 epochs, 2 queries, 5 images; query 1 is image 1 (rank -1)
    ranks = np.array([
        [[-1, 0, 1, 2, 3], [0, -1, 1, 2, 3]],
        [[-1, 1, 0, 2, 3], [3, -1, 0, 1, 2]],
        [[-1, 3, 2, 1, 0], [2, -1, 3, 0, 1]],
    ])
    ax = plot_neighbour_ranks(ranks, query=1, n_neighbours=2)
    assert isinstance(ax, Axes)
    # images ranked 0 or 1 at some epoch for query 1: 0, 2, 3, 4
    labels = [line.get_label() for line in ax.lines]
    assert labels == ["image 0", "image 2", "image 3", "image 4"]
    for line, j in zip(ax.lines, [0, 2, 3, 4]):
        np.testing.assert_array_equal(line.get_ydata(), ranks[:, 1, j])
        np.testing.assert_array_equal(line.get_xdata(), [1, 2, 3])
    # rank 0 on top
    assert ax.get_ylim() == (1.5, -0.5)


def test_neighbour_ranks_bad_input():
    ranks = np.zeros((2, 1, 3), dtype=np.int64)
    with pytest.raises(ValueError, match="ranks"):
        plot_neighbour_ranks(ranks[0])
    with pytest.raises(ValueError, match="ranks"):
        plot_neighbour_ranks(ranks.astype(float))
    with pytest.raises(TypeError, match="ranks"):
        plot_neighbour_ranks({"l": ranks})
    with pytest.raises(ValueError, match="query"):
        plot_neighbour_ranks(ranks, query=1)
    with pytest.raises(ValueError, match="n_neighbours"):
        plot_neighbour_ranks(ranks, n_neighbours=0)
    with pytest.raises(ValueError, match="epochs"):
        plot_neighbour_ranks(ranks, epochs=[1])


def test_ratio_vs_error_pearson_in_legend(rng, no_show):
    ratios = rng.random(7) + 1
    errors = 0.5 - 0.2 * ratios + 0.05 * rng.random(7)
    labels = [f"m{k}" for k in range(7)]
    ax = plot_ratio_vs_error(ratios, errors, labels=labels)
    assert isinstance(ax, Axes)
    np.testing.assert_allclose(ax.collections[0].get_offsets(), np.column_stack([ratios, errors]))
    r = pearsonr(ratios, errors)[0]
    assert ax.get_legend().get_texts()[0].get_text() == f"Pearson r = {r:.3f}"
    assert [t.get_text() for t in ax.texts] == labels


def test_ratio_vs_error_drops_nan_models():
    ratios = np.array([1.0, np.nan, 1.2, 1.5])
    errors = np.array([0.3, 0.1, 0.25, 0.1])
    ax = plot_ratio_vs_error(ratios, errors)
    keep = [0, 2, 3]
    r = pearsonr(ratios[keep], errors[keep])[0]
    assert ax.get_legend().get_texts()[0].get_text() == f"Pearson r = {r:.3f}"


def test_ratio_vs_error_undefined_r_is_nan():
    ax = plot_ratio_vs_error([1.0, 1.0, 1.0], [0.1, 0.2, 0.3])
    assert ax.get_legend().get_texts()[0].get_text() == "Pearson r = nan"


def test_ratio_vs_error_bad_input():
    with pytest.raises(ValueError, match="errors"):
        plot_ratio_vs_error([1.0, 2.0], [0.1])
    with pytest.raises(ValueError, match="ratios"):
        plot_ratio_vs_error([], [])
    with pytest.raises(ValueError, match="labels"):
        plot_ratio_vs_error([1.0, 2.0], [0.1, 0.2], labels=["a"])
