"""The image data contract: check_images and validate_images."""

import re
import subprocess
import sys
import warnings

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
        (np.zeros(5), {}, ValueError, r"X must be \(n, H, W\[, C\]\) images, or 2-D rows"),
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


@pytest.mark.parametrize("layout", ["images", "rows"])
def test_float64_beyond_float32_range_rejected_before_the_cast(layout):
    huge = np.full((2, 3, 3), 1e39)
    huge[0, 0, 0] = -5e300
    X = huge if layout == "images" else huge.reshape(2, 9)
    with pytest.raises(ValueError, match=r"X holds values up to 5e\+300 .*float32 range"):
        validate_images(_Recorder(image_shape=(3, 3)), X, reset=True, dtype="float")
    with pytest.raises(ValueError, match="images holds values up to 1e\\+39"):
        check_images(np.full((1, 2, 2), 1e39), dtype="float", input_name="images")
    # the largest float32 still passes, and dtype=None does no arithmetic to overflow
    edge = np.full((1, 2, 2), float(np.finfo(np.float32).max))
    assert check_images(edge, dtype="float").max() == np.finfo(np.float32).max
    assert check_images(huge).dtype == np.float64


def _fit_then(fit_X, later_X):
    est = _Recorder()
    validate_images(est, fit_X, reset=True, dtype="float")
    return lambda: validate_images(est, later_X, reset=False, dtype="float")


def test_scale_trap_uint8_fit_float_0_255_predict_warns():
    pixels = np.random.default_rng(0).integers(0, 256, size=(4, 5, 5), dtype=np.uint8)
    later = _fit_then(pixels, pixels.astype(np.float64))
    expected = (
        rf"X is float \(taken as is\) with values up to {pixels.max()}, .*fitted on "
        rf"uint8 \(scaled to \[0, 1\]\) images with values up to {pixels.max() / 255:.4g}"
    )
    with pytest.warns(UserWarning, match=expected):
        out = later()
    np.testing.assert_array_equal(out[..., 0], pixels)  # warned, not altered

    # the reverse: fit on float 0..255, predict on the same pixels as uint8
    later = _fit_then(pixels.astype(np.float32), pixels)
    with pytest.warns(UserWarning, match=r"X is uint8 .*fitted on float"):
        later()


def test_scale_trap_stays_quiet_on_consistent_input(recwarn):
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, size=(6, 5, 5), dtype=np.uint8)
    _fit_then(pixels, pixels[:1] // 40)()  # darker uint8 images: same scale
    _fit_then(pixels, pixels.astype(np.float32) / 255)()  # uint8 and its [0, 1] floats
    floats = rng.normal(size=(6, 5, 5))
    _fit_then(floats, floats[:2] * 3)()  # within a factor 8 of the fit's peak
    _fit_then(floats, floats[:2] / 100)()  # smaller floats, same dtype family
    assert not [w for w in recwarn if issubclass(w.category, UserWarning)]
    # a float-scale jump without a dtype change is caught too
    with pytest.warns(UserWarning, match="another scale"):
        _fit_then(floats, floats * 255)()


class _TinyNet:
    """A one-layer patch network, built on first call (torch stays lazy)."""

    def __new__(cls, n_classes, in_channels):
        import torch

        return torch.nn.Sequential(
            torch.nn.Conv2d(in_channels, 4, 1), torch.nn.ReLU(),
            torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, n_classes),
        )


def _scale_trap_estimators():
    from skpatch import PatchCNNClassifier, PatchDictionaryEmbedding

    return [
        ("transform", PatchDictionaryEmbedding(
            patch_size=3, n_atoms=8, n_neighbors=2, pooling=1, random_state=0)),
        ("predict_proba", PatchCNNClassifier(
            patch_size=4, module=_TinyNet, max_epochs=1, batch_size=16, device="cpu",
            verbose=0, random_state=0)),
    ]


@pytest.mark.parametrize("index", [0, 1], ids=["embedding", "patch_cnn"])
def test_estimators_warn_on_the_uint8_float_scale_trap(index, recwarn):
    method, est = _scale_trap_estimators()[index]
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(32, 8, 8), dtype=np.uint8)
    y = np.arange(32) % 2
    est.fit(pixels, y)
    from_uint8 = getattr(est, method)(pixels)
    # the same pixels as floats on the scale skpatch gives uint8: no warning, same output
    from_unit = getattr(est, method)(pixels.astype(np.float32) / 255)
    assert not [w for w in recwarn if issubclass(w.category, UserWarning)]
    scale = np.abs(from_uint8).max()
    np.testing.assert_allclose(from_unit, from_uint8, rtol=1e-5, atol=1e-5 * scale)
    with pytest.warns(UserWarning, match=f"{type(est).__name__} was fitted on uint8"):
        getattr(est, method)(pixels.astype(np.float64))


EXPECTED_LAYOUT = re.escape(
    "must be (n, H, W[, C]) images, or 2-D rows (n, H*W*C) with image_shape=(H, W[, C])"
)


def _validators():
    """Each entry point of the data contract, as ``validate(X)``."""
    return {
        "check_images": lambda X: check_images(X),
        "validate_images_fit": lambda X: validate_images(_Recorder(), X, reset=True),
        "validate_images_rows": lambda X: validate_images(
            _Recorder(image_shape=(4, 4)), X, reset=True
        ),
    }


@pytest.mark.parametrize("validator", list(_validators()))
@pytest.mark.parametrize(
    "X, got",
    [
        (np.zeros(16), r"got a 1-D array of shape \(16,\)"),
        ([0.0, 1.0, 2.0], r"got a 1-D array of shape \(3,\)"),
        (np.float64(3.0), r"got a scalar \(0-D\)"),
        (np.zeros(()), r"got a scalar \(0-D\)"),
    ],
    ids=["1d", "1d_list", "0d_scalar", "0d_array"],
)
def test_0d_and_1d_input_say_what_an_image_estimator_expects(validator, X, got):
    # "Reshape your data" is the fragment scikit-learn's check_fit2d_predict1d matches
    with pytest.raises(ValueError, match=f"^X {EXPECTED_LAYOUT}; {got}. Reshape your data"):
        _validators()[validator](X)


def test_1d_error_names_the_input():
    with pytest.raises(ValueError, match=f"^images {EXPECTED_LAYOUT}; got a 1-D array"):
        check_images(np.zeros(4), input_name="images")


def _masked(shape):
    data = np.arange(np.prod(shape), dtype=np.float64).reshape(shape)
    mask = np.zeros(shape, dtype=bool)
    mask.flat[[0, 5]] = True
    return np.ma.masked_array(data, mask=mask)


MASKED_MESSAGE = (
    r"^X is a numpy masked array with masked entries \(2 of 32\): masked arrays are "
    r"not supported .*fill them \(X\.filled\(\.\.\.\)\) or drop the masked images"
)


@pytest.mark.parametrize("validator", list(_validators()))
def test_masked_array_with_masked_entries_is_rejected(validator):
    shape = (2, 16) if validator == "validate_images_rows" else (2, 4, 4)
    with pytest.raises(TypeError, match=MASKED_MESSAGE):
        _validators()[validator](_masked(shape))


def test_masked_array_error_names_the_input_and_4d_is_rejected_too():
    with pytest.raises(TypeError, match=r"^images is a numpy masked array.*images\.filled"):
        check_images(_masked((2, 4, 4, 1)), input_name="images")


@pytest.mark.parametrize("validator", list(_validators()))
def test_masked_array_with_nothing_masked_is_taken_as_its_data(validator):
    shape = (2, 16) if validator == "validate_images_rows" else (2, 4, 4)
    data = np.arange(32.0).reshape(shape)
    for mask in (np.ma.nomask, np.zeros(shape, dtype=bool)):
        out = _validators()[validator](np.ma.masked_array(data, mask=mask))
        assert type(out) is np.ndarray
        np.testing.assert_array_equal(out.reshape(shape), data)


def test_channels_first_array_warns_naming_the_shape_and_the_fix():
    X = np.zeros((2, 3, 32, 32))
    expected = (
        r"X of shape \(2, 3, 32, 32\) is read as 3x32 images with 32 channels, .*"
        r"channels-first .*np\.moveaxis\(X, 1, -1\), of shape \(n, 32, 32, 3\)"
    )
    with pytest.warns(UserWarning, match=expected) as record:
        out = check_images(X)
    assert out.shape == (2, 3, 32, 32)  # warned, read as the contract says
    assert record[0].filename == __file__  # points at the caller's line
    with pytest.warns(UserWarning, match=expected) as record:
        validate_images(_Recorder(), X, reset=True)
    assert len([w for w in record if "channels-first" in str(w.message)]) == 1
    with pytest.warns(UserWarning, match=r"images of shape \(1, 1, 8, 8\)"):
        check_images(np.zeros((1, 1, 8, 8)), input_name="images")


def test_channels_first_image_shape_of_rows_warns():
    rows = np.zeros((2, 3 * 8 * 8))
    expected = (
        r"image_shape=\(3, 8, 8\) reads each row of X as 3x8 images with 8 channels, "
        r".*np\.moveaxis\(X\.reshape\(-1, 3, 8, 8\), 1, -1\) \(images \(n, 8, 8, 3\)\)"
    )
    with pytest.warns(UserWarning, match=expected):
        check_images(rows, image_shape=(3, 8, 8))
    with pytest.warns(UserWarning, match=expected):
        validate_images(_Recorder(image_shape=(3, 8, 8)), rows, reset=True)
    with pytest.warns(UserWarning, match=r"image_shape=\(4, -1, 6\) reads each row"):
        check_images(np.zeros((2, 48)), image_shape=(4, -1, 6))


@pytest.mark.parametrize(
    "X, image_shape",
    [
        (np.zeros((2, 3, 3, 3)), None),  # last axis not above 4
        (np.zeros((2, 4, 4, 4)), None),
        (np.zeros((2, 8, 8, 3)), None),  # channels last
        (np.zeros((2, 2, 8, 8)), None),  # first axis not 1, 3 or 4
        (np.zeros((2, 3, 32)), None),  # grayscale: no channel axis to misread
        (np.zeros((2, 24)), (3, 8)),  # grayscale rows
        (np.zeros((2, 24)), (1, -1)),  # one-pixel-high strips, as in the estimator checks
        (np.zeros((2, 24)), (8, 1, 3)),
    ],
)
def test_channels_last_and_grayscale_shapes_do_not_warn(X, image_shape):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_images(X, image_shape=image_shape)
        validate_images(_Recorder(image_shape=image_shape), X, reset=True)
