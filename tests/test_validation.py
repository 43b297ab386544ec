"""The image data contract: check_images and validate_images."""

import re
import subprocess
import sys

import numpy as np
import pytest
from sklearn.base import BaseEstimator

from skpatch.utils import check_image_shape, check_images, check_size_pair, validate_images


def test_layouts_agree_on_the_same_pixels():
    rng = np.random.default_rng(0)
    colour = rng.integers(0, 256, size=(3, 4, 5, 2), dtype=np.uint8)
    from_rows = check_images(colour.reshape(3, -1), image_shape=(4, 5, 2))
    np.testing.assert_array_equal(from_rows, colour)
    np.testing.assert_array_equal(check_images(colour), colour)

    gray = colour[..., 0]
    out = check_images(gray)
    assert out.shape == (3, 4, 5, 1)
    np.testing.assert_array_equal(out[..., 0], gray)
    np.testing.assert_array_equal(check_images(gray.reshape(3, 20), image_shape=(4, 5)), out)


def test_uint8_scaled_to_unit_float32_and_floats_kept():
    images = np.array([[[0, 51], [255, 128]]], dtype=np.uint8)
    out = check_images(images, dtype="float")
    assert out.dtype == np.float32
    np.testing.assert_allclose(out[0, :, :, 0], [[0.0, 0.2], [1.0, 128 / 255]], rtol=1e-6)

    floats = np.array([[[0.5, 7.0], [-1.0, 2.0]]])
    out = check_images(floats, dtype="float")
    assert out.dtype == np.float64
    np.testing.assert_array_equal(out[..., 0], floats)  # not rescaled
    assert check_images(floats.astype(np.float32), dtype="float").dtype == np.float32

    # other integers keep their values (no guessing of a range)
    ints = np.array([[[0, 16], [3, 4]]], dtype=np.int64)
    np.testing.assert_array_equal(check_images(ints, dtype="float")[..., 0], ints)

    # dtype=None keeps uint8 as it is
    assert check_images(images).dtype == np.uint8


def test_image_shape_with_inferred_entry():
    rows = np.arange(24.0).reshape(2, 12)
    assert check_images(rows, image_shape=(1, -1)).shape == (2, 1, 12, 1)
    assert check_images(rows, image_shape=(2, -1, 3)).shape == (2, 2, 2, 3)
    assert check_image_shape((4, 5)) == (4, 5, 1)


@pytest.mark.parametrize(
    "X, kwargs, error, match",
    [
        (np.zeros(5), {}, ValueError, "Expected 2D array"),
        (np.zeros((2, 3, 4, 5, 6)), {}, ValueError, "got 5-D"),
        (np.zeros((2, 12)), {}, ValueError, "pass image_shape"),
        (np.zeros((2, 12)), {"image_shape": (3, 5)}, ValueError, "image_shape=.*15 values"),
        (np.zeros((2, 12)), {"image_shape": (5, -1)}, ValueError, "does not divide"),
        (np.zeros((2, 12)), {"image_shape": (2, -1, -1)}, ValueError, "at most one may be -1"),
        (np.zeros((2, 12)), {"image_shape": (0, 12)}, ValueError, "must be positive"),
        (np.zeros((2, 12)), {"image_shape": 12}, TypeError, "image_shape must be a tuple"),
        (np.zeros((2, 4, 3)), {"image_shape": (3, 4)}, ValueError, "image_shape=\\(3, 4\\)"),
        (np.array([[[np.nan, 1.0]]]), {}, ValueError, "NaN"),
        (np.array([[[np.inf, 1.0]]]), {}, ValueError, "infinity"),
        (np.zeros((0, 4, 4)), {}, ValueError, "minimum of 1 is required"),
        (np.zeros((2, 0, 4)), {}, ValueError, "zero-size images"),
        (np.array([[["a", "b"]]]), {}, TypeError, "must hold numbers"),
        (np.zeros((2, 3, 3), dtype=complex), {}, ValueError, "Complex data not supported"),
    ],
)
def test_bad_input_errors_name_the_problem(X, kwargs, error, match):
    with pytest.raises(error, match=match):
        check_images(X, **kwargs)


def test_check_size_pair():
    assert check_size_pair(3, "patch_size") == (3, 3)
    assert check_size_pair((2, 5), "patch_size") == (2, 5)
    with pytest.raises(ValueError, match="stride must be >= 1"):
        check_size_pair(0, "stride")
    with pytest.raises(TypeError, match="patch_size must be an int or a pair"):
        check_size_pair((1, 2, 3), "patch_size")
    with pytest.raises(TypeError, match="patch_size must be an int or a pair"):
        check_size_pair(2.5, "patch_size")


class _Recorder(BaseEstimator):
    def __init__(self, image_shape=None):
        self.image_shape = image_shape


def test_validate_images_records_and_enforces_shape():
    est = _Recorder()
    validate_images(est, np.zeros((3, 4, 5, 2)), reset=True)
    assert est.image_shape_ == (4, 5, 2)
    assert est.n_features_in_ == 40
    validate_images(est, np.ones((1, 4, 5, 2)), reset=False)
    with pytest.raises(ValueError, match=re.escape("fitted on images of shape (4, 5, 2)")):
        validate_images(est, np.zeros((3, 5, 4, 2)), reset=False)

    rows = _Recorder(image_shape=(2, -1))
    validate_images(rows, np.zeros((3, 8)), reset=True)
    assert rows.image_shape_ == (2, 4, 1)
    with pytest.raises(ValueError, match="X has 6 features, but _Recorder is expecting 8"):
        validate_images(rows, np.zeros((3, 6)), reset=False)


def test_import_skpatch_does_not_import_torch_or_faiss():
    code = (
        "import sys, skpatch, skpatch.extraction, skpatch.datasets, skpatch.utils\n"
        "skpatch.PatchExtractor\n"
        "bad = [m for m in ('torch', 'faiss', 'skorch') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
