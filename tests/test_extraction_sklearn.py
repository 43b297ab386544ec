"""scikit-learn's extraction tests, ported to skpatch's one-row-per-image API.

Ported from ``sklearn/feature_extraction/tests/test_image.py`` (scikit-learn
1.9): every test that concerns patch extraction or reconstruction. Left out:
``test_img_to_graph``, ``test_img_to_graph_sparse``, ``test_grid_to_graph``,
``test_connect_regions`` and ``test_connect_regions_with_grid`` (graphs, not
patches).

How they were adapted:

* The image. scikit-learn's raccoon face needs a download (``scipy.datasets``),
  so the fixture is scikit-learn's bundled ``china.jpg`` (needs Pillow; a
  seeded smooth image of the same size otherwise), in gray, cropped to a
  multiple of 4 and downsampled 4x by the same 2x2 averaging twice, as float32
  values in 0..255, like ``downsampled_face``. ``orange_face`` and
  ``_make_images`` are built from it exactly as in scikit-learn.
* One row per image. skpatch returns ``(n, gh, gw, ph, pw, C)`` (or
  ``(n, m, ph, pw, C)`` with ``max_patches``) where scikit-learn returns
  ``(n * n_patches, ph, pw[, C])``; each test reshapes to compare, and
  compares values with scikit-learn's own ``extract_patches_2d``,
  ``reconstruct_from_patches_2d`` or ``PatchExtractor`` where scikit-learn's
  test only checked shapes.
* ``max_patches``. scikit-learn draws positions independently (repeats
  possible), skpatch draws distinct ones, so the draws cannot be equal: the
  tests check the count against scikit-learn's ``_compute_n_patches`` and
  every sampled patch against the image slice at its position.
* ``global_random_seed`` (a scikit-learn conftest fixture) is parametrized over
  a few seeds here.
* ``PatchExtractor``'s default ``patch_size`` is 8 here, not ``(H // 10, W // 10)``:
  ``test_patch_extractor_max_patches_default`` passes that size explicitly.
* ``test_extract_patches_strided`` and ``test_extract_patches_square`` test
  scikit-learn's private n-d ``_extract_patches``; the 2-D cases (and the 3-D
  case whose patch spans every channel) are run through ``extract_patches``
  with ``stride``, and the private function is the reference.
* ``test_patch_extractor_wrong_input``: the same error type (ValueError) and
  message (``patch_size must be a tuple of two integers``).
"""

import numpy as np
import pytest
from sklearn.feature_extraction.image import PatchExtractor as SklearnPatchExtractor
from sklearn.feature_extraction.image import (
    _compute_n_patches,
    _extract_patches,
    extract_patches_2d,
    reconstruct_from_patches_2d,
)

from skpatch import PatchExtractor, extract_patches, reconstruct_from_patches

SEEDS = [0, 1, 42]


def _gray_image():
    try:
        from sklearn.datasets import load_sample_image

        image = load_sample_image("china.jpg").astype(np.float64).mean(axis=2)
    except ImportError:  # Pillow absent: a smooth seeded image of the same size
        rng = np.random.RandomState(0)
        image = rng.rand(427, 640).cumsum(axis=0).cumsum(axis=1)
        image = 255 * image / image.max()
    return image[:424, :640]


@pytest.fixture(scope="module")
def downsampled_face():
    face = _gray_image().astype(np.float32)
    face = face[::2, ::2] + face[1::2, ::2] + face[::2, 1::2] + face[1::2, 1::2]
    face = face[::2, ::2] + face[1::2, ::2] + face[::2, 1::2] + face[1::2, 1::2]
    face /= 16.0
    return face


@pytest.fixture(scope="module")
def orange_face(downsampled_face):
    face = downsampled_face
    face_color = np.zeros(face.shape + (3,))
    face_color[:, :, 0] = 256 - face
    face_color[:, :, 1] = 256 - face / 2
    face_color[:, :, 2] = 256 - face / 4
    return face_color


def _make_images(face):
    images = np.zeros((3,) + face.shape)
    images[0] = face
    images[1] = face + 1
    images[2] = face + 2
    return images


@pytest.fixture(scope="module")
def downsampled_face_collection(downsampled_face):
    return _make_images(downsampled_face)


def _as_sklearn_rows(grid):
    """skpatch's grid of one image ``(1, gh, gw, ph, pw, C)`` as sklearn's rows."""
    rows = grid.reshape((-1,) + grid.shape[3:])
    return rows[..., 0] if rows.shape[-1] == 1 else rows


def _assert_patches_at_positions(images, patches, positions, patch_size):
    """Each sampled patch equals the image slice at its position (plain numpy)."""
    ph, pw = patch_size
    images = images if images.ndim == 4 else images[..., np.newaxis]
    for k in range(len(images)):
        for s, (i, j) in enumerate(positions[k]):
            np.testing.assert_array_equal(patches[k, s], images[k, i : i + ph, j : j + pw])
        assert len({tuple(p) for p in positions[k]}) == len(positions[k])


# --- extract_patches_2d ----------------------------------------------------


def test_extract_patches_all(downsampled_face):
    face = downsampled_face
    i_h, i_w = face.shape
    p_h, p_w = 16, 16
    grid = extract_patches(face[np.newaxis], (p_h, p_w))
    assert grid.shape == (1, i_h - p_h + 1, i_w - p_w + 1, p_h, p_w, 1)
    np.testing.assert_array_equal(
        _as_sklearn_rows(grid), extract_patches_2d(face, (p_h, p_w))
    )


def test_extract_patches_all_color(orange_face):
    face = orange_face
    grid = extract_patches(face[np.newaxis], (16, 16))
    np.testing.assert_array_equal(_as_sklearn_rows(grid), extract_patches_2d(face, (16, 16)))


def test_extract_patches_all_rect(downsampled_face):
    face = downsampled_face[:, 32:97]
    grid = extract_patches(face[np.newaxis], (16, 12))
    np.testing.assert_array_equal(_as_sklearn_rows(grid), extract_patches_2d(face, (16, 12)))


def test_extract_patches_max_patches(downsampled_face):
    face = downsampled_face
    i_h, i_w = face.shape
    p_h, p_w = 16, 16

    patches, positions = extract_patches(
        face[np.newaxis], (p_h, p_w), max_patches=100, random_state=0, return_positions=True
    )
    assert patches.shape == (1, 100, p_h, p_w, 1)
    _assert_patches_at_positions(face[np.newaxis], patches, positions, (p_h, p_w))

    expected_n_patches = _compute_n_patches(i_h, i_w, p_h, p_w, 0.5)
    assert expected_n_patches == int(0.5 * (i_h - p_h + 1) * (i_w - p_w + 1))
    patches, positions = extract_patches(
        face[np.newaxis], (p_h, p_w), max_patches=0.5, random_state=0, return_positions=True
    )
    assert patches.shape == (1, expected_n_patches, p_h, p_w, 1)
    _assert_patches_at_positions(face[np.newaxis], patches, positions, (p_h, p_w))

    with pytest.raises(ValueError, match="max_patches"):
        extract_patches(face[np.newaxis], (p_h, p_w), max_patches=2.0)
    with pytest.raises(ValueError, match="max_patches"):
        extract_patches(face[np.newaxis], (p_h, p_w), max_patches=-1.0)


def test_extract_patch_same_size_image(downsampled_face):
    face = downsampled_face
    # a patch the size of the image: the one patch is the image
    patches = extract_patches(face[np.newaxis], face.shape, max_patches=2, random_state=0)
    assert patches.shape[1] == 1 == len(extract_patches_2d(face, face.shape, max_patches=2))
    np.testing.assert_array_equal(patches[0, 0, :, :, 0], face)


def test_extract_patches_less_than_max_patches(downsampled_face):
    face = downsampled_face
    i_h, i_w = face.shape
    p_h, p_w = 3 * i_h // 4, 3 * i_w // 4
    expected_n_patches = (i_h - p_h + 1) * (i_w - p_w + 1)
    assert 4000 > expected_n_patches == len(
        extract_patches_2d(face, (p_h, p_w), max_patches=4000, random_state=0)
    )

    patches, positions = extract_patches(
        face[np.newaxis], (p_h, p_w), max_patches=4000, random_state=0, return_positions=True
    )
    assert patches.shape == (1, expected_n_patches, p_h, p_w, 1)
    # every position once: sorted into raster order, the sample is the whole grid
    raster = np.lexsort((positions[0, :, 1], positions[0, :, 0]))
    np.testing.assert_array_equal(
        patches[0, raster, :, :, 0], extract_patches_2d(face, (p_h, p_w))
    )


# --- reconstruct_from_patches_2d -------------------------------------------


def test_reconstruct_patches_perfect(downsampled_face):
    # float32 patches of 0..255 values, 256-fold overlaps: float64 sums needed
    face = downsampled_face
    grid = extract_patches(face[np.newaxis], (16, 16))
    rebuilt = reconstruct_from_patches(grid, face.shape)[0, :, :, 0]
    expected = reconstruct_from_patches_2d(extract_patches_2d(face, (16, 16)), face.shape)
    np.testing.assert_allclose(rebuilt, expected, rtol=2 * np.finfo(np.float32).eps)
    np.testing.assert_allclose(rebuilt, face, rtol=2 * np.finfo(np.float32).eps)


def test_reconstruct_patches_perfect_color(orange_face):
    face = orange_face
    grid = extract_patches(face[np.newaxis], (16, 16))
    # image_size with its channel axis, as scikit-learn takes it
    rebuilt = reconstruct_from_patches(grid, face.shape)[0]
    expected = reconstruct_from_patches_2d(extract_patches_2d(face, (16, 16)), face.shape)
    np.testing.assert_allclose(rebuilt, expected, rtol=1e-12)
    np.testing.assert_allclose(rebuilt, face, rtol=1e-12)


@pytest.mark.parametrize(
    "image_size, patch_size",
    [
        ((128, 256), (128, 128)),  # patch_h == image_h
        ((256, 128), (128, 128)),  # patch_w == image_w
        ((128, 128), (128, 128)),  # patch == image
        ((128, 256, 3), (128, 128)),  # patch_h == image_h, with channels
    ],
)
def test_reconstruct_patches_edge_patch_size(image_size, patch_size):
    rng = np.random.RandomState(0)
    image = rng.rand(*image_size)
    grid = extract_patches(image[np.newaxis], patch_size)
    rebuilt = reconstruct_from_patches(grid, image_size)[0]
    expected = reconstruct_from_patches_2d(extract_patches_2d(image, patch_size), image_size)
    np.testing.assert_allclose(rebuilt.reshape(expected.shape), expected, rtol=1e-12)
    np.testing.assert_allclose(rebuilt.reshape(image.shape), image, rtol=1e-12)


# --- PatchExtractor ----------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
def test_patch_extractor_fit(downsampled_face_collection, seed):
    faces = downsampled_face_collection
    extr = PatchExtractor(patch_size=(8, 8), max_patches=100, random_state=seed)
    assert extr == extr.fit(faces)


@pytest.mark.parametrize("seed", SEEDS)
def test_patch_extractor_max_patches(downsampled_face_collection, seed):
    faces = downsampled_face_collection
    i_h, i_w = faces.shape[1:3]
    p_h, p_w = 8, 8

    for max_patches in (100, 0.5):
        expected_per_image = _compute_n_patches(i_h, i_w, p_h, p_w, max_patches)
        sklearn_patches = SklearnPatchExtractor(
            patch_size=(p_h, p_w), max_patches=max_patches, random_state=seed
        ).transform(faces)
        assert len(sklearn_patches) == len(faces) * expected_per_image
        extr = PatchExtractor(patch_size=(p_h, p_w), max_patches=max_patches, random_state=seed)
        patches = extr.transform(faces)
        assert patches.shape == (len(faces), expected_per_image, p_h, p_w, 1)
        _, positions = extract_patches(
            faces, (p_h, p_w), max_patches=max_patches, random_state=seed,
            return_positions=True,
        )
        _assert_patches_at_positions(faces, patches, positions, (p_h, p_w))


@pytest.mark.parametrize("seed", SEEDS)
def test_patch_extractor_max_patches_default(downsampled_face_collection, seed):
    faces = downsampled_face_collection
    # scikit-learn's default patch_size, (H // 10, W // 10), passed explicitly
    patch_size = (faces.shape[1] // 10, faces.shape[2] // 10)
    patches = PatchExtractor(patch_size, max_patches=100, random_state=seed).transform(faces)
    sklearn_patches = SklearnPatchExtractor(max_patches=100, random_state=seed).transform(faces)
    assert sklearn_patches.shape[1:] == patch_size
    assert patches.shape == (len(faces), 100) + patch_size + (1,)
    _, positions = extract_patches(
        faces, patch_size, max_patches=100, random_state=seed, return_positions=True
    )
    _assert_patches_at_positions(faces, patches, positions, patch_size)


@pytest.mark.parametrize("seed", SEEDS)
def test_patch_extractor_all_patches(downsampled_face_collection, seed):
    faces = downsampled_face_collection
    expected = SklearnPatchExtractor(patch_size=(8, 8), random_state=seed).transform(faces)
    patches = PatchExtractor(patch_size=(8, 8), random_state=seed).transform(faces)
    np.testing.assert_array_equal(patches.reshape(expected.shape), expected)


@pytest.mark.parametrize("seed", SEEDS)
def test_patch_extractor_color(orange_face, seed):
    faces = _make_images(orange_face)
    expected = SklearnPatchExtractor(patch_size=(8, 8), random_state=seed).transform(faces)
    patches = PatchExtractor(patch_size=(8, 8), random_state=seed, flatten=True).transform(faces)
    np.testing.assert_array_equal(patches.reshape(expected.shape), expected)


# --- strided extraction ------------------------------------------------------


@pytest.mark.parametrize(
    "image_shape, patch_size, step, expected_view, last_patch",
    [
        ((10, 20), (2, 2), (5, 5), (2, 4), (5, 15)),
        ((10, 20), (10, 10), (3, 10), (1, 2), (0, 10)),
        ((10, 20), (10, 11), (3, 4), (1, 3), (0, 8)),
        ((11, 20), (6, 6), (4, 2), (2, 8), (4, 14)),
        # scikit-learn's 3-D case whose patch spans all channels
        ((5, 4, 3), (2, 2, 3), (1, 2, 10), (4, 2, 1), (3, 2, 0)),
    ],
)
def test_extract_patches_strided(image_shape, patch_size, step, expected_view, last_patch):
    image = np.arange(np.prod(image_shape)).reshape(image_shape)
    grid = extract_patches(image[np.newaxis], patch_size[:2], stride=step[:2])
    assert grid.shape[1:3] == expected_view[:2]
    reference = _extract_patches(image, patch_shape=patch_size, extraction_step=step)
    np.testing.assert_array_equal(
        grid[0].reshape(reference.shape), reference
    )
    last = tuple(slice(i, i + p) for i, p in zip(last_patch, patch_size))
    np.testing.assert_array_equal(grid[0, -1, -1].reshape(image[last].shape), image[last])


def test_extract_patches_square(downsampled_face):
    face = downsampled_face
    p = 8
    grid = extract_patches(face[np.newaxis], p)
    reference = _extract_patches(face, patch_shape=p)
    assert reference.shape == (face.shape[0] - p + 1, face.shape[1] - p + 1, p, p)
    np.testing.assert_array_equal(grid[0, ..., 0], reference)


def test_width_patch():
    # width and height of the patch must not exceed the image's
    x = np.array([[[1, 2, 3], [4, 5, 6], [7, 8, 9]]])
    with pytest.raises(ValueError, match="patch height 4 > image height 3"):
        extract_patches(x, (4, 1))
    with pytest.raises(ValueError, match="patch width 4 > image width 3"):
        extract_patches(x, (1, 4))


def test_patch_extractor_wrong_input(orange_face):
    faces = _make_images(orange_face)
    err_msg = "patch_size must be a tuple of two integers"
    with pytest.raises(ValueError, match=err_msg):
        PatchExtractor(patch_size=(8, 8, 8)).transform(faces)
    with pytest.raises(ValueError, match=err_msg):
        SklearnPatchExtractor(patch_size=(8, 8, 8)).transform(faces)
    with pytest.raises(ValueError, match=err_msg):
        extract_patches(faces, (8, 8, 8))
