"""Patch extraction against sklearn, hand-worked cases and round trips."""

import pickle

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.feature_extraction.image import extract_patches_2d
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline

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
        ({"patch_size": (2, 2, 2)}, TypeError, "patch_size must be an int or a pair"),
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
