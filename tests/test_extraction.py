"""Patch extraction against sklearn, hand-worked cases and round trips."""

import pickle
import re
from math import comb

import numpy as np
import pytest
from scipy.stats import chi2
from sklearn.base import clone
from sklearn.feature_extraction.image import extract_patches_2d
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.utils.estimator_checks import parametrize_with_checks

from skpatch import PatchExtractor, extract_patches, reconstruct_from_patches

SHAPES = [(5, 5), (6, 9), (9, 4)]


@pytest.mark.parametrize("hw", SHAPES)
@pytest.mark.parametrize("channels", [None, 1, 3])
@pytest.mark.parametrize("patch_size", [(1, 1), (2, 2), (3, 2), (4, 4)])
def test_stride_one_equals_sklearn_extract_patches_2d(hw, channels, patch_size):
    rng = np.random.default_rng(0)
    shape = (3,) + hw + (() if channels is None else (channels,))
    images = rng.integers(0, 256, size=shape, dtype=np.uint8)
    grid = extract_patches(images, patch_size)
    n, gh, gw = grid.shape[:3]
    assert (gh, gw) == (hw[0] - patch_size[0] + 1, hw[1] - patch_size[1] + 1)
    for k in range(n):
        expected = extract_patches_2d(images[k], patch_size)
        if channels is None:
            expected = expected[..., np.newaxis]
        np.testing.assert_array_equal(grid[k].reshape(expected.shape), expected)

    flat = PatchExtractor(patch_size, flatten=True).fit_transform(images)
    assert flat.dtype == np.uint8 and flat.flags.c_contiguous
    for k in range(n):
        expected = extract_patches_2d(images[k], patch_size)
        np.testing.assert_array_equal(flat[k], expected.ravel())


@pytest.mark.parametrize("stride", [2, 3, (1, 2), (3, 1)])
def test_stride_equals_subsampled_stride_one_grid(stride):
    images = np.random.default_rng(1).random((2, 11, 10, 3))
    full = extract_patches(images, (3, 4))
    sh, sw = (stride, stride) if isinstance(stride, int) else stride
    np.testing.assert_array_equal(
        extract_patches(images, (3, 4), stride=stride), full[:, ::sh, ::sw]
    )


def test_hand_worked_grid_and_view():
    images = np.arange(16).reshape(1, 4, 4)
    grid = extract_patches(images, 2, stride=2)
    np.testing.assert_array_equal(grid[0, 0, 1, :, :, 0], [[2, 3], [6, 7]])
    np.testing.assert_array_equal(grid[0, 1, 1, :, :, 0], [[10, 11], [14, 15]])
    assert np.shares_memory(grid, images)
    assert not grid.flags.writeable
    flat = PatchExtractor(2, stride=2, flatten=True).fit_transform(images)
    assert not np.shares_memory(flat, images)
    np.testing.assert_array_equal(
        flat[0], [0, 1, 4, 5, 2, 3, 6, 7, 8, 9, 12, 13, 10, 11, 14, 15]
    )


@pytest.mark.parametrize("patch_size", [3, 4, (2, 5)])
def test_same_padding_centres_a_patch_on_every_pixel(patch_size):
    images = np.random.default_rng(2).random((2, 6, 7))
    grid = extract_patches(images, patch_size, padding="same")
    ph, pw = (patch_size, patch_size) if isinstance(patch_size, int) else patch_size
    assert grid.shape == (2, 6, 7, ph, pw, 1)
    top, left = (ph - 1) // 2, (pw - 1) // 2
    padded = np.pad(images, ((0, 0), (top, ph - 1 - top), (left, pw - 1 - left)))
    for i, j in [(0, 0), (3, 4), (5, 6)]:
        np.testing.assert_array_equal(grid[:, i, j, :, :, 0], padded[:, i : i + ph, j : j + pw])
        # the pixel itself sits at the patch's centre
        np.testing.assert_array_equal(grid[:, i, j, top, left, 0], images[:, i, j])


def test_integer_padding_adds_zero_border():
    images = np.ones((1, 3, 3), dtype=np.uint8)
    grid = extract_patches(images, 3, padding=1)
    assert grid.shape[1:3] == (3, 3)
    np.testing.assert_array_equal(grid[0, 0, 0, :, :, 0], [[0, 0, 0], [0, 1, 1], [0, 1, 1]])


@pytest.mark.parametrize(
    "patch_size, stride, padding",
    [(3, 1, 0), ((2, 4), (2, 3), 0), (4, (4, 3), 0), (3, 2, "same"), (5, 1, 2), (3, 3, "same")],
)
@pytest.mark.parametrize("layout", ["gray", "colour", "rows"])
def test_inverse_transform_round_trip(patch_size, stride, padding, layout):
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, size=(4, 8, 10, 3), dtype=np.uint8)
    if layout == "gray":
        X, kw = images[..., 0], {}
    elif layout == "colour":
        X, kw = images, {}
    else:
        X, kw = images.reshape(4, -1), {"image_shape": (8, 10, 3)}
    for flatten in (False, True):
        extractor = PatchExtractor(
            patch_size, stride=stride, padding=padding, flatten=flatten, **kw
        )
        rebuilt = extractor.fit(X).inverse_transform(extractor.transform(X))
        assert rebuilt.shape == X.shape
        # float64 means of equal integer copies are exact up to rounding
        np.testing.assert_allclose(rebuilt, X, rtol=4 * np.finfo(np.float64).eps)


def test_reconstruct_averages_overlaps():
    # patch values disagree on the overlap: the reconstruction is their mean
    patches = np.zeros((1, 1, 2, 2, 2, 1))
    patches[0, 0, 0] = 1.0
    patches[0, 0, 1] = 3.0
    out = reconstruct_from_patches(patches, (2, 3))[0, :, :, 0]
    np.testing.assert_array_equal(out, [[1.0, 2.0, 3.0], [1.0, 2.0, 3.0]])


def test_reconstruct_rejects_uncovered_pixels_and_wrong_grid():
    images = np.random.default_rng(0).random((1, 7, 7))
    gappy = extract_patches(images, 2, stride=3)
    with pytest.raises(ValueError, match="do not cover every pixel"):
        reconstruct_from_patches(gappy, (7, 7), stride=3)
    grid = extract_patches(images, 2)
    with pytest.raises(ValueError, match="give a 7x7 grid"):
        reconstruct_from_patches(grid, (8, 8))
    with pytest.raises(ValueError, match=r"shape \(n, gh, gw, ph, pw, C\)"):
        reconstruct_from_patches(grid[0], (7, 7))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"patch_size": 6}, "patch_size .* is larger than the images: patch height 6 > image height 5"),
        ({"patch_size": (2, 8)}, "patch width 8 > image width 7"),
        ({"patch_size": 8, "padding": 1}, r"patch height 8 > image height 5 \+ padding 2"),
    ],
)
def test_patch_larger_than_image_is_a_clear_error(kwargs, match):
    images = np.zeros((2, 5, 7))
    with pytest.raises(ValueError, match=match):
        PatchExtractor(**kwargs).fit(images)
    with pytest.raises(ValueError, match=match):
        extract_patches(images, kwargs["patch_size"], padding=kwargs.get("padding", 0))


@pytest.mark.parametrize(
    "params, error, match",
    [
        ({"patch_size": 0}, ValueError, "patch_size"),
        ({"patch_size": (2, 2, 2)}, ValueError, "patch_size must be a tuple of two integers"),
        ({"patch_size": (2, 2.5)}, ValueError, "patch_size must be a tuple of two integers"),
        ({"stride": (1, 1, 1)}, ValueError, "stride must be a tuple of two integers"),
        ({"stride": 0}, ValueError, "stride"),
        ({"padding": -1}, ValueError, "padding"),
        ({"padding": "valid"}, ValueError, "padding"),
        ({"flatten": "yes"}, ValueError, "flatten"),
    ],
)
def test_bad_parameters(params, error, match):
    with pytest.raises(error, match=match):
        PatchExtractor(**params).fit(np.zeros((2, 5, 5)))


def test_transform_rejects_images_of_another_shape_after_fit():
    extractor = PatchExtractor(2).fit(np.zeros((2, 5, 5, 3)))
    with pytest.raises(ValueError, match=r"fitted on images of shape \(5, 5, 3\)"):
        extractor.transform(np.zeros((2, 6, 5, 3)))
    # unfitted, the stateless transformer takes any size
    assert PatchExtractor(2).transform(np.zeros((1, 6, 5))).shape == (1, 5, 4, 2, 2, 1)


def test_feature_names_follow_flattened_order():
    X = np.arange(2 * 3 * 3).reshape(2, 3, 3)
    extractor = PatchExtractor(2, flatten=True).fit(X)
    names = extractor.get_feature_names_out()
    assert len(names) == extractor.transform(X).shape[1] == 16
    assert names[0] == "patch0_0_row0_col0_ch0"
    assert names[5] == "patch0_1_row0_col1_ch0"  # second patch, its (0, 1) pixel
    assert not hasattr(PatchExtractor(2), "get_feature_names_out")


def test_pipeline_clone_and_pickle_keep_rows_aligned():
    rng = np.random.default_rng(0)
    X = rng.random((40, 6, 6))
    y = (X[:, :3].mean(axis=(1, 2)) > X[:, 3:].mean(axis=(1, 2))).astype(int)
    pipe = make_pipeline(PatchExtractor(3, stride=3, flatten=True), LogisticRegression())
    pipe.fit(X, y)
    assert pipe.score(X, y) > 0.9
    restored = pickle.loads(pickle.dumps(pipe))
    np.testing.assert_array_equal(restored.predict(X), pipe.predict(X))
    assert clone(pipe).get_params()["patchextractor__patch_size"] == 3


@pytest.mark.parametrize("n_jobs", [None, 1, 2])
@pytest.mark.parametrize("chunk_bytes", [1, 1000, 10**9])
def test_flatten_identical_whatever_the_chunking_and_threads(monkeypatch, chunk_bytes, n_jobs):
    import skpatch.extraction as extraction

    monkeypatch.setattr(extraction, "_PARALLEL_MIN_BYTES", 0)
    monkeypatch.setattr(extraction, "_CHUNK_BYTES", chunk_bytes)
    rng = np.random.default_rng(5)
    images = rng.random((23, 9, 11, 3))[:, ::-1]  # a non-contiguous input too
    for patch_size, stride, padding in [(3, 1, 0), ((2, 4), (2, 3), "same"), (4, 2, 1)]:
        flat = PatchExtractor(
            patch_size, stride=stride, padding=padding, flatten=True, n_jobs=n_jobs
        )
        grid = extract_patches(images, patch_size, stride=stride, padding=padding)
        np.testing.assert_array_equal(
            flat.fit_transform(images), grid.reshape(len(images), -1)
        )


# --- reconstruction fixes -------------------------------------------------------


def test_float32_reconstruction_sums_in_float64():
    # 0..255 float32 values under 8x8 = 64-fold overlaps: a float32 sum is off by ~1e-4
    rng = np.random.default_rng(7)
    images = rng.uniform(0, 255, size=(2, 20, 23, 3)).astype(np.float32)
    grid = extract_patches(images, 8)
    rebuilt = reconstruct_from_patches(grid, (20, 23))
    assert rebuilt.dtype == np.float32
    reference = reconstruct_from_patches(grid.astype(np.float64), (20, 23))
    np.testing.assert_allclose(rebuilt, reference, rtol=np.finfo(np.float32).eps)
    # equal copies of a float32 value average back to it exactly
    np.testing.assert_array_equal(rebuilt, images)


def test_reconstruct_takes_image_size_with_channels():
    images = np.random.default_rng(8).random((2, 6, 7, 3))
    grid = extract_patches(images, 3)
    np.testing.assert_array_equal(
        reconstruct_from_patches(grid, (6, 7, 3)), reconstruct_from_patches(grid, (6, 7))
    )
    with pytest.raises(ValueError, match=r"image_size \(6, 7, 1\) has 1 channels but the patches have 3"):
        reconstruct_from_patches(grid, (6, 7, 1))
    with pytest.raises(ValueError, match=r"image_size must be \(H, W\) or \(H, W, C\)"):
        reconstruct_from_patches(grid, (6,))


# --- max_patches ----------------------------------------------------------------


def _slices_at(images, positions, patch_size, stride, padding):
    """Plain-numpy reference: the padded image slice at each grid position."""
    ph, pw = patch_size
    sh, sw = stride
    if padding == "same":
        pads = [((p - 1) // 2, p - 1 - (p - 1) // 2) for p in patch_size]
    else:
        pads = [(padding, padding)] * 2
    padded = np.pad(images, ((0, 0), pads[0], pads[1], (0, 0)))
    return np.stack([
        np.stack([padded[k, i * sh : i * sh + ph, j * sw : j * sw + pw] for i, j in row])
        for k, row in enumerate(positions)
    ])


@pytest.mark.parametrize(
    "patch_size, stride, padding, max_patches",
    [
        ((3, 3), (1, 1), 0, 5),
        ((2, 4), (2, 3), 0, 0.4),
        ((3, 2), (1, 2), "same", 7),
        ((4, 4), (3, 3), 1, 1),
        ((2, 2), (1, 1), 0, 0.9),  # 72 of 80 positions: drawn by keys, not rejection
        ((3, 3), (2, 2), "same", 500),  # more than the 5x6 grid: all of it
    ],
)
def test_max_patches_returns_the_image_slice_at_each_position(
    patch_size, stride, padding, max_patches
):
    images = np.random.default_rng(9).integers(0, 256, size=(6, 9, 11, 3), dtype=np.uint8)
    patches, positions = extract_patches(
        images, patch_size, stride=stride, padding=padding, max_patches=max_patches,
        random_state=0, return_positions=True,
    )
    grid_h, grid_w = extract_patches(images, patch_size, stride=stride, padding=padding).shape[1:3]
    if isinstance(max_patches, int):
        m = min(max_patches, grid_h * grid_w)
    else:
        m = int(max_patches * grid_h * grid_w)
    assert patches.shape == (6, m) + patch_size + (3,) and positions.shape == (6, m, 2)
    assert patches.dtype == np.uint8 and patches.flags.c_contiguous
    assert ((positions >= 0) & (positions < [grid_h, grid_w])).all()
    np.testing.assert_array_equal(
        patches, _slices_at(images, positions, patch_size, stride, padding)
    )
    flat_positions = positions[..., 0] * grid_w + positions[..., 1]
    for row in flat_positions:
        assert len(set(row.tolist())) == m  # distinct within each image

    extractor = PatchExtractor(
        patch_size, stride=stride, padding=padding, max_patches=max_patches, random_state=0
    )
    np.testing.assert_array_equal(extractor.fit_transform(images), patches)
    assert extractor.n_patches_ == m
    flat = clone(extractor).set_params(flatten=True).fit(images)
    np.testing.assert_array_equal(flat.transform(images), patches.reshape(6, -1))
    assert len(flat.get_feature_names_out()) == m * patch_size[0] * patch_size[1] * 3


@pytest.mark.parametrize(
    "n_samples",
    [2, 4],  # 2 * 1 <= 9 positions: drawn by rejection; 4 * 3 > 9: by random keys
)
def test_max_patches_draws_every_subset_equally_often(n_samples):
    # n_samples of the 9 positions of a 3x3 grid per image, 30,000 images
    n_images, n_positions = 30_000, 9
    images = np.zeros((n_images, 4, 4))
    _, positions = extract_patches(
        images, 2, max_patches=n_samples, random_state=0, return_positions=True
    )
    flat = positions[..., 0] * 3 + positions[..., 1]
    ordered = np.sort(flat, axis=1)
    assert (ordered[:, 1:] != ordered[:, :-1]).all()  # distinct

    def assert_uniform(counts, n_cells):
        # chi-square against equal counts; a loose bound (false alarm 1e-6)
        assert counts.size == n_cells and counts.min() > 0
        expected = counts.sum() / n_cells
        assert ((counts - expected) ** 2 / expected).sum() < chi2.ppf(1 - 1e-6, n_cells - 1)

    # each position equally likely in each slot
    for slot in range(n_samples):
        assert_uniform(np.bincount(flat[:, slot], minlength=n_positions), n_positions)
    # each subset equally likely: a uniform subset, not just uniform marginals
    _, subset_counts = np.unique(ordered, axis=0, return_counts=True)
    assert_uniform(subset_counts, comb(n_positions, n_samples))


def test_max_patches_is_seeded_and_independent_per_image():
    images = np.random.default_rng(10).random((50, 8, 8))
    kwargs = {"max_patches": 3, "return_positions": True}
    _, a = extract_patches(images, 3, random_state=0, **kwargs)
    _, b = extract_patches(images, 3, random_state=0, **kwargs)
    _, c = extract_patches(images, 3, random_state=1, **kwargs)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    # images draw independently: 50 images of 36 positions do not share one draw
    assert len({tuple(map(tuple, row)) for row in a}) > 45
    # a RandomState instance advances between calls, as in scikit-learn
    rng = np.random.RandomState(0)
    extractor = PatchExtractor(3, max_patches=3, random_state=rng).fit(images)
    first, second = extractor.transform(images), extractor.transform(images)
    assert not np.array_equal(first, second)


def test_max_patches_counts_follow_sklearn():
    from sklearn.feature_extraction.image import _compute_n_patches

    images = np.zeros((2, 10, 12))
    # grid 8x10 = 80 positions for 3x3 patches
    for max_patches, expected in [(1, 1), (79, 79), (80, 80), (500, 80), (0.5, 40), (0.99, 79), (0.013, 1)]:
        assert _compute_n_patches(10, 12, 3, 3, max_patches) == expected
        patches, positions = extract_patches(
            images, 3, max_patches=max_patches, random_state=0, return_positions=True
        )
        assert patches.shape[1] == expected
        if expected == 80:  # the whole grid (or more) asked: every position once
            assert {tuple(p) for p in positions[0]} == {
                (i, j) for i in range(8) for j in range(10)
            }


@pytest.mark.parametrize("max_patches", [0, -1, 1.0, 1.5, -0.5, "all", True])
def test_bad_max_patches_names_the_parameter(max_patches):
    images = np.zeros((2, 6, 6))
    with pytest.raises(ValueError, match="max_patches"):
        extract_patches(images, 2, max_patches=max_patches)
    with pytest.raises(ValueError, match="max_patches"):
        PatchExtractor(2, max_patches=max_patches).fit(images)


def test_max_patches_fraction_of_zero_patches_and_misuse_are_clear_errors():
    images = np.zeros((2, 6, 6))  # 25 positions of 2x2
    with pytest.raises(ValueError, match=r"max_patches=0.01 of the 25 patch positions .* is 0"):
        PatchExtractor(2, max_patches=0.01).fit(images)
    with pytest.raises(ValueError, match="return_positions=True needs max_patches"):
        extract_patches(images, 2, return_positions=True)
    extractor = PatchExtractor(2, max_patches=3, random_state=0).fit(images)
    with pytest.raises(ValueError, match="inverse_transform needs the whole patch grid"):
        extractor.inverse_transform(extractor.transform(images))


def test_max_patches_feature_names_name_sample_slots():
    X = np.zeros((2, 4, 4, 2))
    extractor = PatchExtractor(2, max_patches=3, flatten=True, random_state=0).fit(X)
    names = extractor.get_feature_names_out()
    assert names[0] == "sample0_row0_col0_ch0"
    assert names[1] == "sample0_row0_col0_ch1"
    assert names[8] == "sample1_row0_col0_ch0"
    assert names[-1] == "sample2_row1_col1_ch1"


def test_max_patches_in_a_pipeline_keeps_rows_aligned():
    rng = np.random.default_rng(11)
    X = rng.random((60, 8, 8))
    X[:30] += 1.0  # the first class is brighter everywhere
    y = np.repeat([1, 0], 30)
    pipe = make_pipeline(
        PatchExtractor(3, max_patches=5, flatten=True, random_state=0),
        LogisticRegression(),
    )
    assert pipe.fit(X, y).score(X, y) == 1.0



_ROW_ORDER_DRAWS = (
    "the rows draw their positions from one seeded stream, row after row (as "
    "scikit-learn's PatchExtractor draws image after image), so a subset or a "
    "permutation of the rows draws other positions"
)


@parametrize_with_checks(
    [
        PatchExtractor(patch_size=(1, 1), image_shape=(1, -1), flatten=True,
                       max_patches=2, random_state=0),
    ],
    expected_failed_checks=lambda estimator: {
        "check_methods_sample_order_invariance": _ROW_ORDER_DRAWS,
        "check_methods_subset_invariance": _ROW_ORDER_DRAWS,
    },
)
def test_sklearn_checks_with_max_patches(estimator, check):
    check(estimator)


@pytest.mark.parametrize("key_chunk_bytes", [1, 8 * 36 * 3, 10**9])
def test_max_patches_draw_is_identical_whatever_the_key_chunking(monkeypatch, key_chunk_bytes):
    import skpatch.extraction as extraction

    images = np.random.default_rng(12).random((10, 8, 8, 2))
    expected = extract_patches(images, 3, max_patches=0.3, random_state=4)
    monkeypatch.setattr(extraction, "_KEY_CHUNK_BYTES", key_chunk_bytes)
    np.testing.assert_array_equal(
        extract_patches(images, 3, max_patches=0.3, random_state=4), expected
    )


def _fitted_attributes(est):
    return sorted(name for name in vars(est) if name.endswith("_") and not name.startswith("_"))


def test_refit_forgets_the_previous_fit():
    images = np.arange(2 * 6 * 6, dtype=np.uint8).reshape(2, 6, 6)
    extractor = PatchExtractor(3, max_patches=2, random_state=0).fit(images[:, :5])
    extractor.stale_ = "left by an older fit"  # as an attribute set only under some settings
    extractor.set_params(max_patches=None, stride=3)
    extractor.fit(images)
    fresh = PatchExtractor(3, stride=3).fit(images)
    assert not hasattr(extractor, "stale_")
    assert _fitted_attributes(extractor) == _fitted_attributes(fresh)
    assert (extractor.image_shape_, extractor.patch_grid_shape_, extractor.n_patches_) == (
        (6, 6, 1), (2, 2), 4
    )
    np.testing.assert_array_equal(extractor.transform(images), fresh.transform(images))


LAYOUT = re.escape(
    "X must be (n, H, W[, C]) images, or 2-D rows (n, H*W*C) with image_shape=(H, W[, C])"
)


@pytest.mark.parametrize("fitted", [False, True], ids=["stateless_transform", "after_fit"])
def test_1d_masked_and_channels_first_input_fitted_or_not(fitted):
    images = np.zeros((2, 3, 8, 8))  # channels first
    extractor = PatchExtractor(2)
    if fitted:
        with pytest.warns(UserWarning, match=r"X of shape \(2, 3, 8, 8\) .*np\.moveaxis"):
            extractor.fit(images)
    with pytest.raises(ValueError, match=f"^{LAYOUT}; got a 1-D array of shape \\(8,\\)"):
        extractor.transform(np.zeros(8))
    masked = np.ma.masked_array(images, mask=images == 0)
    with pytest.raises(TypeError, match=r"masked arrays are not supported.*X\.filled"):
        extractor.transform(masked)
    with pytest.warns(UserWarning, match=r"X of shape \(2, 3, 8, 8\) .*channels-first"):
        extractor.transform(images)
    rows = PatchExtractor(2, image_shape=(3, 8, 8))
    with pytest.warns(UserWarning, match=r"image_shape=\(3, 8, 8\) reads each row of X"):
        rows.fit_transform(images.reshape(2, -1))
