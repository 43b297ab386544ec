"""Tests of the POR patch ordering against independent computations.

References used here: scipy.stats.entropy on numpy histograms, sklearn's
mutual_info_score on the joint histogram, a straightforward SSIM, numpy norms,
hand-worked images, and a slow per-image greedy chain written in Python.
"""

import pickle
import warnings

import numpy as np
import pytest
from scipy.stats import entropy as scipy_entropy
from sklearn.base import clone
from sklearn.metrics import mutual_info_score

from skpatch import PatchOrderer, order_patches, unorder_patches
from skpatch.ordering import (
    joint_entropy,
    kl_divergence,
    l1_distance,
    l2_distance,
    mutual_information,
    patch_entropy,
    patch_variance,
    psnr,
    ssim,
)

SIMILARITY = ["mutual_information", "joint_entropy", "kl_divergence", "l1", "l2", "ssim", "psnr"]
HIGHER_IS_SIMILAR = {"mutual_information", "ssim", "psnr"}


# ------------------------------------------------------- slow references


def _unit(channel_values):
    values = np.asarray(channel_values)
    return values / 255.0 if values.dtype == np.uint8 else values.astype(float)


def _channels(patch):
    patch = np.asarray(patch)
    patch = patch[..., None] if patch.ndim == 2 else patch
    return [_unit(patch[..., c].ravel()) for c in range(patch.shape[-1])]


def _hist(values, n_bins):
    return np.histogram(values, bins=n_bins, range=(0.0, 1.0))[0]


def ref_measure(measure, a, b, n_bins=16):
    """One pair of (ph, pw[, C]) patches, per channel then averaged."""
    out = []
    for x, y in zip(_channels(a), _channels(b)):
        if measure in ("mutual_information", "joint_entropy"):
            joint = np.histogram2d(x, y, bins=n_bins, range=[(0, 1), (0, 1)])[0]
            if measure == "joint_entropy":
                out.append(scipy_entropy(joint.ravel(), base=2))
            else:
                out.append(mutual_info_score(None, None, contingency=joint) / np.log(2))
        elif measure == "kl_divergence":
            p = _hist(x, n_bins) + 0.5
            q = _hist(y, n_bins) + 0.5
            out.append(scipy_entropy(p / p.sum(), q / q.sum(), base=2))
        elif measure == "l1":
            out.append(np.abs(x - y).sum())
        elif measure == "l2":
            out.append(np.linalg.norm(x - y))
        elif measure == "psnr":
            out.append(10 * np.log10(1.0 / np.mean((x - y) ** 2)))
        elif measure == "ssim":
            c1, c2 = 0.01**2, 0.03**2
            cov = np.cov(x, y, bias=True)[0, 1]
            num = (2 * x.mean() * y.mean() + c1) * (2 * cov + c2)
            den = (x.mean() ** 2 + y.mean() ** 2 + c1) * (x.var() + y.var() + c2)
            out.append(num / den)
        elif measure == "entropy":
            out.append(scipy_entropy(_hist(x, n_bins), base=2))
        elif measure == "variance":
            out.append(x.var())
    return float(np.mean(out))


def ref_order(image, patch_size, measure, order="similar", reference=0, n_bins=16):
    """Direct per-image POR: a list of patches and a Python greedy chain."""
    image = image[..., None] if image.ndim == 2 else image
    gh, gw = image.shape[0] // patch_size, image.shape[1] // patch_size
    patches = [
        image[r * patch_size : (r + 1) * patch_size, c * patch_size : (c + 1) * patch_size]
        for r in range(gh)
        for c in range(gw)
    ]
    if measure in ("entropy", "variance"):
        scores = np.round([ref_measure(measure, p, p, n_bins) for p in patches], 9)
        key = -scores if order == "similar" else scores
        return np.argsort(key, kind="stable")
    sign = 1.0 if measure in HIGHER_IS_SIMILAR else -1.0
    if order == "dissimilar":
        sign = -sign
    chain, remaining = [reference], [i for i in range(len(patches)) if i != reference]
    while remaining:
        scores = [sign * ref_measure(measure, patches[chain[-1]], patches[j], n_bins) for j in remaining]
        best = remaining[int(np.argmax(np.round(scores, 9)))]
        chain.append(best)
        remaining.remove(best)
    return np.array(chain)


# ------------------------------------------------------- measures


@pytest.mark.parametrize("measure", SIMILARITY)
@pytest.mark.parametrize("dtype", [np.uint8, np.float64])
@pytest.mark.parametrize("channels", [None, 3])
def test_pair_measures_match_reference(measure, dtype, channels, rng):
    shape = (6, 4, 5) + ((channels,) if channels else ())
    if dtype == np.uint8:
        a = rng.integers(0, 256, shape, dtype=np.uint8)
        b = rng.integers(0, 256, shape, dtype=np.uint8)
    else:
        a, b = rng.random(shape), rng.random(shape)
    function = {
        "mutual_information": mutual_information,
        "joint_entropy": joint_entropy,
        "kl_divergence": kl_divergence,
        "l1": l1_distance,
        "l2": l2_distance,
        "ssim": ssim,
        "psnr": psnr,
    }[measure]
    kwargs = {"n_bins": 8} if measure in ("mutual_information", "joint_entropy", "kl_divergence") else {}
    expected = [ref_measure(measure, a[i], b[i], n_bins=8) for i in range(len(a))]
    np.testing.assert_allclose(function(a, b, **kwargs), expected, rtol=1e-6, atol=1e-6)


# n_bins dividing 255 (3, 5, 15, 17) puts some uint8 values exactly on bin edges,
# where np.histogram's float edges and our exact integer binning may differ
@pytest.mark.parametrize("n_bins", [2, 7, 16])
def test_standalone_measures_match_reference(n_bins, rng):
    patches = rng.integers(0, 256, (7, 4, 4, 3), dtype=np.uint8)
    expected = [ref_measure("entropy", p, p, n_bins) for p in patches]
    np.testing.assert_allclose(patch_entropy(patches, n_bins=n_bins), expected, atol=1e-6)
    expected = [ref_measure("variance", p, p) for p in patches]
    np.testing.assert_allclose(patch_variance(patches), expected, rtol=1e-12)


def test_hand_worked_measures(rng):
    half = np.array([[[0, 255], [0, 255]]], dtype=np.uint8)
    # two equally likely intensities: exactly one bit
    np.testing.assert_allclose(patch_entropy(half), [1.0])
    # values on bin edges: floor(x * 5 / 255) gives bins 0, 1, 2, 3, 4, 4
    edges = np.array([[[0, 51, 102], [153, 204, 255]]], dtype=np.uint8)
    expected = 4 / 6 * np.log2(6) + 2 / 6 * np.log2(3)
    np.testing.assert_allclose(patch_entropy(edges, n_bins=5), [expected], atol=1e-7)
    flat = np.zeros((1, 2, 2), dtype=np.uint8)
    np.testing.assert_allclose(patch_entropy(flat), [0.0])
    # a patch shares all its information with itself
    patches = rng.integers(0, 256, (10, 4, 4, 3), dtype=np.uint8)
    np.testing.assert_allclose(
        mutual_information(patches, patches), patch_entropy(patches), atol=1e-9
    )
    np.testing.assert_allclose(joint_entropy(patches, patches), patch_entropy(patches), atol=1e-9)
    np.testing.assert_allclose(ssim(patches, patches), 1.0)
    assert np.all(np.isinf(psnr(patches, patches)))
    np.testing.assert_allclose(kl_divergence(patches, patches), 0.0, atol=1e-12)
    # independent patches: MI near 0 (finite-sample bias only, 4096 pixels, 4 bins)
    a = rng.integers(0, 256, (3, 64, 64), dtype=np.uint8)
    b = rng.integers(0, 256, (3, 64, 64), dtype=np.uint8)
    mi = mutual_information(a, b, n_bins=4)
    assert np.all(mi < 0.01) and np.all(mi >= -1e-9)
    # a patch and its negative determine each other: MI equals the entropy
    np.testing.assert_allclose(mutual_information(a, 255 - a, n_bins=4), patch_entropy(a, n_bins=4), atol=1e-6)
    # L1 / L2 / PSNR of a constant offset of 0.5 on 4 pixels
    zeros, halves = np.zeros((1, 2, 2)), np.full((1, 2, 2), 0.5)
    np.testing.assert_allclose(l1_distance(zeros, halves), [2.0])
    np.testing.assert_allclose(l2_distance(zeros, halves), [1.0])
    np.testing.assert_allclose(psnr(zeros, halves), [10 * np.log10(4.0)])


# ------------------------------------------------------- ordering


def _hand_image():
    """A 2x8 grayscale image of four constant 2x2 patches: 0, 100, 10, 200."""
    row = np.repeat(np.array([0, 100, 10, 200], dtype=np.uint8), 2)
    return np.stack([row, row])[None]


def test_l2_chain_hand_built_image():
    image = _hand_image()
    _, perm = order_patches(image, 2, measure="l2")
    # 0 -> nearest 10 -> nearest 100 -> 200
    np.testing.assert_array_equal(perm, [[0, 2, 1, 3]])
    _, perm = order_patches(image, 2, measure="l2", order="dissimilar")
    # 0 -> farthest 200 -> farthest 10 -> 100
    np.testing.assert_array_equal(perm, [[0, 3, 2, 1]])
    ordered, _ = order_patches(image, 2, measure="l2", reference=3)
    # 200 -> 100 -> 10 -> 0
    np.testing.assert_array_equal(ordered[0, 0], np.repeat([200, 100, 10, 0], 2))
    _, perm = order_patches(image, 2, measure="variance")
    # all variances are 0: the stable sort keeps row-major order
    np.testing.assert_array_equal(perm, [[0, 1, 2, 3]])


@pytest.mark.parametrize("measure", SIMILARITY + ["entropy", "variance"])
@pytest.mark.parametrize("order", ["similar", "dissimilar"])
def test_chain_matches_slow_reference(measure, order, rng):
    images = rng.integers(0, 256, (3, 16, 12, 3), dtype=np.uint8)
    _, perm = order_patches(images, 4, measure=measure, order=order, reference=2, n_bins=8)
    expected = np.stack([ref_order(im, 4, measure, order, reference=2, n_bins=8) for im in images])
    np.testing.assert_array_equal(perm, expected)


def test_chain_matches_slow_reference_on_cifar(shared_data):
    from skpatch.datasets import load_cifar10

    images = load_cifar10(shared_data / "cifar-10-subset", subset="test").images[:4]
    _, perm = order_patches(images, 8)
    expected = np.stack([ref_order(im, 8, "mutual_information") for im in images])
    np.testing.assert_array_equal(perm, expected)


@pytest.mark.parametrize("measure", ["mutual_information", "ssim", "entropy"])
def test_output_is_permutation_of_patches(measure, rng):
    images = rng.random((4, 12, 16, 2)).astype(np.float32)
    ordered, perm = order_patches(images, (3, 4), measure=measure, reference=5)
    assert ordered.dtype == np.float32 and ordered.shape == images.shape
    np.testing.assert_array_equal(np.sort(perm, axis=1), np.tile(np.arange(16), (4, 1)))
    grid = images.reshape(4, 4, 3, 4, 4, 2).transpose(0, 1, 3, 2, 4, 5).reshape(4, 16, 3, 4, 2)
    out = ordered.reshape(4, 4, 3, 4, 4, 2).transpose(0, 1, 3, 2, 4, 5).reshape(4, 16, 3, 4, 2)
    for i in range(4):
        np.testing.assert_array_equal(out[i], grid[i][perm[i]])
    if measure != "entropy":
        assert np.all(perm[:, 0] == 5)
    np.testing.assert_array_equal(unorder_patches(ordered, perm, (3, 4)), images)


def test_border_keep_and_grayscale(rng):
    images = rng.integers(0, 256, (3, 10, 9), dtype=np.uint8)
    with pytest.raises(ValueError, match="border='keep'"):
        order_patches(images, 4)
    ordered, perm = order_patches(images, 4, border="keep")
    assert ordered.shape == images.shape and perm.shape == (3, 4)
    # the 2 bottom rows and 1 right column are not part of any patch
    np.testing.assert_array_equal(ordered[:, 8:], images[:, 8:])
    np.testing.assert_array_equal(ordered[:, :, 8:], images[:, :, 8:])
    _, inner = order_patches(images[:, :8, :8], 4)
    np.testing.assert_array_equal(perm, inner)
    np.testing.assert_array_equal(unorder_patches(ordered, perm, 4), images)


@pytest.mark.parametrize("measure", ["mutual_information", "kl_divergence", "psnr", "variance"])
def test_deterministic_and_chunk_size_invariant(measure, rng):
    images = rng.integers(0, 256, (11, 16, 16, 3), dtype=np.uint8)
    images[3] = 7  # constant image: every score ties
    base = order_patches(images, 4, measure=measure)
    for batch_size, n_jobs in [(1, None), (4, 2), (100, 1), (3, -1)]:
        again = order_patches(images, 4, measure=measure, batch_size=batch_size, n_jobs=n_jobs)
        np.testing.assert_array_equal(again[0], base[0])
        np.testing.assert_array_equal(again[1], base[1])
    # ties go to the lowest row-major index
    np.testing.assert_array_equal(base[1][3], np.arange(16))


def test_bad_input(rng):
    images = rng.integers(0, 256, (2, 8, 8), dtype=np.uint8)
    with pytest.raises(ValueError, match="larger than the images"):
        order_patches(images, 9)
    with pytest.raises(ValueError, match="reference=4 is not a patch index"):
        order_patches(images, 4, reference=4)
    with pytest.raises(ValueError, match="measure"):
        order_patches(images, 4, measure="cosine")
    with pytest.raises(ValueError, match="n_bins"):
        order_patches(images, 4, n_bins=1)
    with pytest.raises(ValueError, match="order"):
        order_patches(images, 4, order="random")
    with pytest.raises(ValueError, match="NaN|infinity"):
        order_patches(np.full((2, 8, 8), np.nan), 4)
    with pytest.raises(ValueError, match=r"\(n, H, W\) or \(n, H, W, C\), got a 1-D"):
        order_patches(images[0, 0], 4)
    with pytest.raises(ValueError, match=r"got a 2-D"):
        unorder_patches(images[0], np.zeros((2, 4), dtype=int), 4)
    with pytest.raises(TypeError, match="patch_size"):
        order_patches(images, (2, 2, 2))
    ordered, perm = order_patches(images, 4)
    with pytest.raises(ValueError, match="shape"):
        unorder_patches(ordered, perm[:, :3], 4)
    with pytest.raises(ValueError, match="permutation of 0..3"):
        unorder_patches(ordered, np.zeros_like(perm), 4)
    with pytest.raises(TypeError, match="integers"):
        unorder_patches(ordered, perm.astype(float), 4)
    with pytest.raises(ValueError, match="same shape"):
        mutual_information(images[:, :4, :4], images[:1, :4, :4])
    with pytest.raises(TypeError, match="same dtype"):
        l2_distance(images, images.astype(float))
    with pytest.raises(ValueError, match=r"\(m, ph, pw\)"):
        ssim(images[0], images[0])
    with pytest.raises(TypeError, match="real numbers"):
        patch_entropy(np.array([[["a"]]]))
    with pytest.raises(ValueError, match="n_bins"):
        patch_entropy(images, n_bins=1)


# ------------------------------------------------------- estimator


def test_estimator_matches_function_and_layouts(rng):
    images = rng.integers(0, 256, (5, 8, 12, 3), dtype=np.uint8)
    expected, _ = order_patches(images, 4, measure="ssim", order="dissimilar")
    orderer = PatchOrderer(4, measure="ssim", order="dissimilar")
    np.testing.assert_array_equal(orderer.fit_transform(images), expected)
    assert orderer.patch_grid_shape_ == (2, 3)
    rows = PatchOrderer(4, measure="ssim", order="dissimilar", image_shape=(8, 12, 3))
    out = rows.fit(images.reshape(5, -1)).transform(images.reshape(5, -1))
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, expected.reshape(5, -1))
    restored = pickle.loads(pickle.dumps(clone(orderer).fit(images)))
    np.testing.assert_array_equal(restored.transform(images), expected)
    with pytest.raises(ValueError, match="fitted on images of shape"):
        orderer.transform(images[:, :4])
    with pytest.raises(ValueError, match="border='keep'"):
        PatchOrderer(5).fit(images)
    with pytest.raises(ValueError, match="reference=6"):
        PatchOrderer(4, reference=6).fit(images)


@pytest.mark.parametrize("channels", [None, 3])
def test_transform_returns_the_layout_of_its_input(channels, rng):
    image_shape = (8, 12) + ((channels,) if channels else ())
    images = rng.integers(0, 256, (4,) + image_shape, dtype=np.uint8)
    rows = images.reshape(4, -1)
    expected, _ = order_patches(images, 4, measure="l2")
    # fitted on images, given rows: rows back
    fitted_on_images = PatchOrderer(4, measure="l2").fit(images)
    np.testing.assert_array_equal(fitted_on_images.transform(rows), expected.reshape(4, -1))
    np.testing.assert_array_equal(fitted_on_images.transform(images), expected)
    # fitted on rows, given images: images back, in their own 3-D or 4-D layout
    fitted_on_rows = PatchOrderer(4, measure="l2", image_shape=image_shape).fit(rows)
    out = fitted_on_rows.transform(images)
    assert out.shape == images.shape
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(fitted_on_rows.transform(rows), expected.reshape(4, -1))
    # fit_transform follows its own input too
    np.testing.assert_array_equal(
        PatchOrderer(4, measure="l2", image_shape=image_shape).fit_transform(rows),
        expected.reshape(4, -1),
    )


@pytest.mark.parametrize("channels", [None, 3])
def test_flatten_returns_rows_of_the_ordered_images(channels, rng):
    image_shape = (8, 12) + ((channels,) if channels else ())
    images = rng.random((4,) + image_shape).astype(np.float32)
    unflattened = PatchOrderer(4, measure="ssim").fit(images).transform(images)
    flat = PatchOrderer(4, measure="ssim", flatten=True).fit(images)
    expected = unflattened.reshape(4, -1)
    for given in (images, images.reshape(4, -1)):
        out = flat.transform(given) if given.ndim > 2 else PatchOrderer(
            4, measure="ssim", flatten=True, image_shape=image_shape
        ).fit_transform(given)
        assert out.shape == (4, int(np.prod(image_shape))) and out.dtype == np.float32
        np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(
        PatchOrderer(4, measure="ssim", flatten=True).fit_transform(images), expected
    )
    with pytest.raises(ValueError, match="'flatten' parameter"):
        PatchOrderer(4, flatten="yes").fit(images)


def test_pipeline_with_flatten_pickles(rng):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    images = rng.integers(0, 256, (20, 8, 8), dtype=np.uint8)
    target = np.arange(20) % 2
    model = make_pipeline(
        PatchOrderer(4, measure="l2", flatten=True), StandardScaler(),
        LogisticRegression(max_iter=200),
    ).fit(images, target)
    restored = pickle.loads(pickle.dumps(clone(model).fit(images, target)))
    np.testing.assert_array_equal(restored.predict(images), model.predict(images))
    np.testing.assert_array_equal(
        restored[:-1].transform(images), model[:-1].transform(images)
    )


def test_paper_worked_example():
    # Section III.B: a binary 6x6 image, 3x3 patches, reference p(0,0) (grey).
    image = np.array(
        [
            [0, 0, 0, 0, 0, 1],
            [0, 0, 1, 1, 1, 1],
            [1, 1, 1, 1, 1, 1],
            [0, 0, 0, 0, 0, 0],
            [0, 0, 1, 0, 0, 1],
            [1, 0, 0, 1, 1, 0],
        ],
        dtype=float,
    )
    grey, top_right, bottom_left, bottom_right = (
        image[:3, :3], image[:3, 3:], image[3:, :3], image[3:, 3:]
    )
    # published: "MI of the green with the grey patch is 0.557 while the blue
    # has MI index equal to 0.224" (two intensity bins, bits)
    mi = mutual_information(
        np.stack([grey, grey]), np.stack([bottom_right, top_right]), n_bins=2
    )
    np.testing.assert_allclose(mi, [0.557, 0.224], atol=1e-3)
    # published order: grey, green, pink, blue
    _, perm = order_patches(image[None], 3, n_bins=2)
    np.testing.assert_array_equal(perm, [[0, 3, 2, 1]])


def test_histogram_measures_warn_on_values_outside_unit_range():
    from skpatch.ordering import PatchOrderer

    images = np.random.default_rng(0).random((2, 8, 8)) * 255.0  # float, 0..255
    with pytest.warns(UserWarning, match=r"values span \[.*\]; values outside \[0, 1\]"):
        PatchOrderer(patch_size=4, measure="mutual_information").fit_transform(images)
    in_range = images / 255.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        PatchOrderer(patch_size=4, measure="mutual_information").fit_transform(in_range)
        # distance measures need no histogram range: no warning on any scale
        PatchOrderer(patch_size=4, measure="l2").fit_transform(images)


def _fitted_attributes(est):
    return sorted(name for name in vars(est) if name.endswith("_") and not name.startswith("_"))


@pytest.mark.parametrize("method", ["fit", "fit_transform"])
def test_refit_forgets_the_previous_fit(method, rng):
    pd = pytest.importorskip("pandas")
    images = rng.random((4, 8, 12))
    frame = pd.DataFrame(images.reshape(4, -1), columns=[f"px{i}" for i in range(96)])
    orderer = PatchOrderer(2, measure="l2", image_shape=(8, 12)).fit(frame)
    assert hasattr(orderer, "feature_names_in_")
    orderer.stale_ = "left by an older fit"  # as an attribute set only under some settings

    orderer.set_params(patch_size=4, image_shape=None)
    getattr(orderer, method)(images)
    fresh = PatchOrderer(4, measure="l2").fit(images)
    assert not hasattr(orderer, "feature_names_in_")
    assert not hasattr(orderer, "stale_")
    assert _fitted_attributes(orderer) == _fitted_attributes(fresh)
    assert orderer.patch_grid_shape_ == fresh.patch_grid_shape_ == (2, 3)
    np.testing.assert_array_equal(orderer.transform(images), fresh.transform(images))


def test_estimator_input_errors_say_what_it_expects(rng):
    orderer = PatchOrderer(2, measure="l2")
    with pytest.raises(ValueError, match=r"^X must be \(n, H, W\[, C\]\) images, or 2-D rows "
                       r"\(n, H\*W\*C\) with image_shape=\(H, W\[, C\]\); got a 1-D array "
                       r"of shape \(64,\)\. Reshape your data"):
        orderer.fit(rng.random(64))
    images = rng.random((2, 8, 8))
    orderer.fit(images)
    with pytest.raises(ValueError, match=r"^X must be .*; got a scalar \(0-D\)"):
        orderer.transform(np.float64(1.0))
    masked = np.ma.masked_greater(images, 0.5)
    with pytest.raises(TypeError, match=r"^X is a numpy masked array .*X\.filled\(\.\.\.\)"):
        orderer.transform(masked)
    with pytest.warns(UserWarning, match=r"X of shape \(2, 4, 8, 8\) .*channels-first"):
        PatchOrderer(2, measure="l2").fit(rng.random((2, 4, 8, 8)))  # RGBA, channels first
