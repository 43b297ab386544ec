"""The patch covering check: distances, the Gaussian reference, the plot."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from skpatch import extract_patches  # noqa: E402
from skpatch.diagnostics import _covering, patch_covering  # noqa: E402
from skpatch.plotting import plot_patch_covering  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _smooth_images(n, size=9, seed=0):
    """Seeded float images in [0, 1] whose neighbouring pixels are correlated."""
    noise = np.random.default_rng(seed).random((n, size + 2, size + 2, 3))
    smooth = (noise[:, :-2, :-2] + noise[:, 1:-1, 1:-1] + noise[:, 2:, 2:]
              + noise[:, 1:-1, :-2]) / 4
    return smooth.astype(np.float32)


def _all_rows(images, patch_size):
    """Every stride-1 patch of ``images`` as float64 rows, by extract_patches."""
    patches = extract_patches(images, patch_size)
    rows = patches.reshape(-1, int(np.prod(patches.shape[3:]))).astype(np.float64)
    return rows / 255.0 if images.dtype == np.uint8 else rows


def _zca(rows, eps):
    """Regularized ZCA of ``rows`` written out with numpy: ``U diag(1/sqrt(l + eps)) U^T``."""
    centred = rows - rows.mean(axis=0)
    eigenvalues, eigenvectors = np.linalg.eigh(centred.T @ centred / len(rows))
    return (eigenvectors / np.sqrt(np.clip(eigenvalues, 0, None) + eps)) @ eigenvectors.T


# ----------------------------------------------------------- hand-worked cases


@pytest.mark.parametrize("whiten", [None, "zca"])
def test_data_of_k_clusters_is_covered_exactly(whiten):
    # 8 distinct 6x6x3 images, one patch each: the patch distribution is 8 points
    rng = np.random.default_rng(0)
    centres = rng.random((8, 6, 6, 3))
    images = centres[rng.integers(0, 8, 400)]
    result = patch_covering(images, patch_size=6, n_atoms=(1, 32), whiten=whiten,
                            random_state=0)
    median = list(result.quantiles).index(0.5)
    # 32 >= 8 atoms: every held-out patch is (to float32) on an atom ...
    assert result.real_quantiles[1, -1] < 0.01 * result.gaussian_quantiles[1, median]
    assert result.real_distances[1].max() < 1e-2 * result.scale
    # ... while the Gaussian of the same covariance (a 7-dim cloud) is not covered
    assert result.gaussian_quantiles[1, median] > 0.3
    assert result.median_ratio[1] < 0.01


@pytest.mark.parametrize("whiten", [None, "zca"])
def test_one_atom_distance_is_the_distance_to_the_mean(whiten):
    images = (_smooth_images(30) * 255).astype(np.uint8)
    # n_fit and n_held_out above the patch counts: every patch is taken
    result = patch_covering(images, patch_size=3, n_atoms=1, n_fit=10**6, n_held_out=10**6,
                            whiten=whiten, whiten_reg=1e-3, random_state=0)
    fit = _all_rows(images[result.fit_images], 3)
    held = _all_rows(images[result.held_out_images], 3)
    assert (result.n_fit, result.n_held_out) == (len(fit), len(held))
    mean = fit.mean(axis=0)
    matrix = np.eye(fit.shape[1]) if whiten is None else _zca(fit, 1e-3)
    expected = np.linalg.norm((held - mean) @ matrix, axis=1)
    scale = np.sqrt(np.mean(np.sum(((fit - mean) @ matrix) ** 2, axis=1)))
    np.testing.assert_allclose(result.scale, scale, rtol=1e-5)
    # one k-means centroid is the mean; the held-out patches come in sorted order
    np.testing.assert_allclose(np.sort(result.real_distances[0]), np.sort(expected),
                               rtol=1e-4, atol=1e-4 * scale)
    np.testing.assert_allclose(result.real_quantiles[0],
                               np.quantile(expected / scale, result.quantiles),
                               rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(result.real_distortion[0], np.mean(expected**2) / scale**2,
                               rtol=1e-4)
    np.testing.assert_allclose(result.mean, mean, rtol=1e-5, atol=1e-7)


# ---------------------------------------------------------- Gaussian reference


@pytest.mark.parametrize("whiten", [None, "zca"])
def test_gaussian_reference_has_the_real_patches_covariance(whiten):
    images = _smooth_images(40)
    result = patch_covering(images, patch_size=3, n_atoms=(2,), n_fit=10**6,
                            whiten=whiten, random_state=0, return_samples=True)
    fit = _all_rows(images[result.fit_images], 3)
    m = len(fit)
    np.testing.assert_allclose(result.covariance, np.cov(fit, rowvar=False, bias=True),
                               rtol=1e-6, atol=1e-9)
    # in the measured space the real fit rows' covariance is the target
    real = result.real_fit.astype(np.float64)
    target = np.cov(real, rowvar=False, bias=True)
    gauss = result.gaussian_fit.astype(np.float64)
    assert gauss.shape == real.shape
    # a sample covariance entry of m Gaussian rows has sd sqrt((S_ii S_jj + S_ij^2) / m)
    sd = np.sqrt((np.outer(np.diag(target), np.diag(target)) + target**2) / m)
    error = np.abs(np.cov(gauss, rowvar=False, bias=True) - target)
    assert np.all(error < 5 * sd), f"worst {np.max(error / sd):.1f} sd"
    # and the same mean (the real mean is subtracted: about 0)
    mean_sd = np.sqrt(np.diag(target) / m)
    assert np.all(np.abs(gauss.mean(axis=0) - real.mean(axis=0)) < 5 * mean_sd)
    # the held-out Gaussian rows follow the same law
    held = result.gaussian_held_out.astype(np.float64)
    sd_held = np.sqrt((np.outer(np.diag(target), np.diag(target)) + target**2) / len(held))
    assert np.all(np.abs(np.cov(held, rowvar=False, bias=True) - target) < 5 * sd_held)


# ------------------------------------------------------------- the distances


def _brute_force(held, atoms):
    held, atoms = held.astype(np.float64), atoms.astype(np.float64)
    return np.sqrt(((held[:, None, :] - atoms[None]) ** 2).sum(axis=2)).min(axis=1)


@pytest.mark.parametrize("dictionary", ["kmeans", "data"])
def test_distances_match_a_brute_force_nearest_neighbour(dictionary):
    images = _smooth_images(40)  # 8 held-out images of 36 patches
    result = patch_covering(images, patch_size=4, n_atoms=(3, 10, 40), n_fit=600,
                            n_held_out=200, dictionary=dictionary, random_state=1,
                            return_samples=True)
    assert result.real_distances.shape == (3, 200)
    for kind in ("real", "gaussian"):
        held = result[f"{kind}_held_out"]
        for i, atoms in enumerate(result[f"{kind}_atoms"]):
            assert atoms.shape == (result.n_atoms[i], 48)
            np.testing.assert_allclose(result[f"{kind}_distances"][i],
                                       _brute_force(held, atoms),
                                       rtol=1e-4, atol=1e-4 * result.scale)
        relative = result[f"{kind}_distances"] / result.scale
        np.testing.assert_allclose(result[f"{kind}_quantiles"],
                                   np.quantile(relative, result.quantiles, axis=1).T)
        np.testing.assert_allclose(result[f"{kind}_mean"], relative.mean(axis=1))
    np.testing.assert_allclose(
        result.median_ratio,
        np.median(result.real_distances, axis=1) / np.median(result.gaussian_distances, axis=1),
    )
    if dictionary == "data":  # data atoms are fit patches themselves
        fit = result.real_fit
        for atoms in result.real_atoms:
            assert all(np.any(np.all(fit == atom, axis=1)) for atom in atoms)


def test_distances_do_not_depend_on_the_chunk_size(monkeypatch):
    images = _smooth_images(20)
    kwargs = dict(patch_size=4, n_atoms=(5, 20), n_fit=500, n_held_out=300, random_state=2)
    whole = patch_covering(images, **kwargs)
    monkeypatch.setattr(_covering, "_WORKING_MEMORY", 4 * 20 * 7)  # 7 rows per chunk
    chunked = patch_covering(images, **kwargs)
    np.testing.assert_array_equal(chunked.real_distances, whole.real_distances)
    np.testing.assert_array_equal(chunked.gaussian_distances, whole.gaussian_distances)


def test_held_out_patches_come_from_other_images():
    images = _smooth_images(50)
    result = patch_covering(images, patch_size=3, n_atoms=4, n_fit=10**6, n_held_out=10**6,
                            held_out_fraction=0.3, whiten=None, random_state=0,
                            return_samples=True)
    assert result.held_out_images.size == 15
    assert np.intersect1d(result.fit_images, result.held_out_images).size == 0
    np.testing.assert_array_equal(
        np.sort(np.concatenate([result.fit_images, result.held_out_images])), np.arange(50)
    )
    # with whiten=None the held-out rows are the held-out images' patches minus the mean
    held = np.sort(result.real_held_out.astype(np.float64) + result.mean, axis=0)
    expected = np.sort(_all_rows(images[result.held_out_images], 3), axis=0)
    np.testing.assert_allclose(held, expected, atol=1e-6)


def test_seeded_runs_are_reproducible():
    images = _smooth_images(20)
    kwargs = dict(patch_size=4, n_atoms=(4, 16), n_fit=400, n_held_out=200)
    first = patch_covering(images, random_state=3, **kwargs)
    again = patch_covering(images, random_state=3, **kwargs)
    other = patch_covering(images, random_state=4, **kwargs)
    for key in ("real_distances", "gaussian_distances", "fit_images"):
        np.testing.assert_array_equal(first[key], again[key])
    assert not np.array_equal(first.real_distances, other.real_distances)
    # a RandomState instance is honoured the same way
    from_instance = patch_covering(images, random_state=np.random.RandomState(3), **kwargs)
    np.testing.assert_array_equal(from_instance.gaussian_distances, first.gaussian_distances)


# ------------------------------------------------------------------ validation

_IMAGES = _smooth_images(6, size=6)


@pytest.mark.parametrize(
    "param, value",
    [
        ("n_atoms", 0), ("n_atoms", [4, 0]), ("n_atoms", []), ("n_atoms", 2.5),
        ("n_atoms", [2.5, 4]), ("n_fit", 0), ("n_held_out", 0),
        ("held_out_fraction", 0.0), ("held_out_fraction", 1.0),
        ("whiten", "bogus"), ("whiten_reg", -1.0), ("whiten_form", "inside"),
        ("dictionary", "gaussian"), ("quantiles", [0.5, 1.5]), ("quantiles", []),
        ("patch_size", 0), ("n_iter", 0), ("random_state", "seed"),
    ],
)
def test_bad_parameters_raise_naming_them(param, value):
    with pytest.raises(ValueError, match=param):
        patch_covering(_IMAGES, **dict(dict(patch_size=3, n_atoms=2), **{param: value}))


def test_bad_input_raises_naming_the_parameter():
    with pytest.raises(ValueError, match="n_atoms"):  # more atoms than fit patches
        patch_covering(_IMAGES, patch_size=3, n_atoms=(4, 10**4))
    with pytest.raises(ValueError, match="patch_size"):
        patch_covering(_IMAGES, patch_size=7, n_atoms=2)
    with pytest.raises(ValueError, match="at least 2"):
        patch_covering(_IMAGES[:1], patch_size=3, n_atoms=2)
    bad = _IMAGES.copy()
    bad[0, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        patch_covering(bad, patch_size=3, n_atoms=2)


# ------------------------------------------------------------------------ plot


def test_plot_draws_the_returned_numbers(monkeypatch):
    monkeypatch.setattr(plt, "show", lambda *a, **k: pytest.fail("plt.show() was called"))
    result = patch_covering(_smooth_images(20), patch_size=4, n_atoms=(16, 2, 8),
                            n_fit=400, n_held_out=200, random_state=0)
    ax = plot_patch_covering(result, label="toy")
    order = np.argsort(result.n_atoms)
    median = list(result.quantiles).index(0.5)
    assert [line.get_label() for line in ax.lines] == [
        "toy: real patches", "toy: Gaussian, same covariance"]
    for line, key, band in zip(ax.lines, ("real_quantiles", "gaussian_quantiles"),
                               ax.collections):
        np.testing.assert_array_equal(line.get_xdata(), result.n_atoms[order])
        np.testing.assert_array_equal(line.get_ydata(), result[key][order, median])
        y = band.get_paths()[0].vertices[:, 1]
        np.testing.assert_allclose([y.min(), y.max()],
                                   [result[key][:, 0].min(), result[key][:, -1].max()])
    assert ax.get_xscale() == "log"
    given = plt.subplots()[1]
    assert plot_patch_covering(result, ax=given, band=False) is given
    assert len(given.collections) == 0


def test_plot_needs_the_median():
    result = patch_covering(_smooth_images(10), patch_size=4, n_atoms=2, n_fit=200,
                            quantiles=(0.1, 0.9), random_state=0)
    with pytest.raises(ValueError, match="0.5"):
        plot_patch_covering(result)
    with pytest.raises(ValueError, match="patch_covering"):
        plot_patch_covering({"n_atoms": [1]})
