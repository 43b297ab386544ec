"""Dataset loaders on files built here in each format, and on the real data."""

import gzip
import hashlib
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_digits

from skpatch.datasets import (
    CIFAR10_CLASSES,
    FASHION_MNIST_ROOT,
    load_cifar10,
    load_digits_images,
    load_fashion_mnist,
    load_image_folder,
)


def _write_cifar_batch(path, images, labels):
    # the official layout: rows of 1024 red, 1024 green, 1024 blue values
    data = images.transpose(0, 3, 1, 2).reshape(len(images), 3072)
    batch = {b"batch_label": b"test", b"labels": list(map(int, labels)), b"data": data}
    with open(path, "wb") as handle:
        pickle.dump(batch, handle, protocol=2)


@pytest.fixture
def cifar_batches(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    parts = {}
    # batches of unequal, small sizes (truncated copies must load)
    for name, n in [(f"data_batch_{i}", 3 + i) for i in range(1, 6)] + [("test_batch", 4)]:
        images = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n)
        _write_cifar_batch(root / name, images, labels)
        parts[name] = (images, labels)
    return tmp_path, parts


def test_cifar10_python_batches(cifar_batches):
    root, parts = cifar_batches
    train = load_cifar10(root)
    expected = np.concatenate([parts[f"data_batch_{i}"][0] for i in range(1, 6)])
    np.testing.assert_array_equal(train.images, expected)
    np.testing.assert_array_equal(
        train.target, np.concatenate([parts[f"data_batch_{i}"][1] for i in range(1, 6)])
    )
    assert list(train.target_names) == CIFAR10_CLASSES
    X, y = load_cifar10(root / "cifar-10-batches-py", subset="test", return_X_y=True)
    np.testing.assert_array_equal(X, parts["test_batch"][0])
    np.testing.assert_array_equal(y, parts["test_batch"][1])
    # a pixel in the official row layout: red of pixel (0, 1) is data[1]
    raw = pickle.load(open(root / "cifar-10-batches-py" / "test_batch", "rb"), encoding="bytes")
    assert X[0, 0, 1, 0] == raw[b"data"][0, 1]
    assert X[0, 0, 1, 2] == raw[b"data"][0, 2048 + 1]


def _make_folder(root, rng, size=(6, 5), mode="RGB", classes=("cat", "ant", "dog")):
    """Write train/test class folders of PNGs; return the expected arrays."""
    expected = {}
    for subset in ("train", "test"):
        images, labels = [], []
        for label, cls in enumerate(sorted(classes)):
            folder = root / subset / cls
            folder.mkdir(parents=True)
            for k in range(2):
                shape = size + ((3,) if mode == "RGB" else ())
                pixels = rng.integers(0, 256, size=shape, dtype=np.uint8)
                Image.fromarray(pixels, mode=mode).save(folder / f"{k}.png")
                images.append(pixels)
                labels.append(label)
        expected[subset] = (np.stack(images), np.array(labels))
    return expected


@pytest.mark.parametrize("as_archive", [False, True])
def test_image_folder_and_archive(tmp_path, as_archive):
    rng = np.random.default_rng(1)
    tree = tmp_path / "tree"
    expected = _make_folder(tree / "top", rng)
    path = tree
    if as_archive:
        path = tmp_path / "images.tar.gz"
        with tarfile.open(path, "w:gz") as archive:
            archive.add(tree / "top", arcname="top")
    bunch = load_image_folder(path, subset="train")
    np.testing.assert_array_equal(bunch.images, expected["train"][0])
    np.testing.assert_array_equal(bunch.target, expected["train"][1])
    assert list(bunch.target_names) == ["ant", "cat", "dog"]  # sorted folder names
    X, y = load_image_folder(path, subset="test", return_X_y=True)
    np.testing.assert_array_equal(X, expected["test"][0])


def test_image_folder_grayscale_mixed_sizes_and_resize(tmp_path):
    rng = np.random.default_rng(2)
    for cls, shape in [("a", (4, 4)), ("b", (6, 3))]:
        (tmp_path / cls).mkdir()
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode="L").save(
            tmp_path / cls / "x.png"
        )
    with pytest.raises(ValueError, match="different sizes.*pass size="):
        load_image_folder(tmp_path)
    bunch = load_image_folder(tmp_path, size=(5, 2))
    assert bunch.images.shape == (2, 5, 2) and bunch.images.dtype == np.uint8
    original = Image.open(tmp_path / "b" / "x.png")
    np.testing.assert_array_equal(
        bunch.images[1], np.asarray(original.resize((2, 5), Image.BILINEAR))
    )


def test_image_folder_errors(tmp_path):
    with pytest.raises(ValueError, match="directory or a tar archive"):
        load_image_folder(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images found"):
        load_image_folder(tmp_path / "empty")


def test_cifar10_from_archive_with_cache_invalidation(tmp_path):
    rng = np.random.default_rng(3)
    tree = tmp_path / "tree"
    expected = _make_folder(
        tree / "cifar", rng, size=(32, 32), classes=CIFAR10_CLASSES[:3]
    )
    archive_path = tmp_path / "cifar.tar.gz"
    with tarfile.open(archive_path, "w:gz") as archive:
        archive.add(tree / "cifar", arcname="cifar")
    cache_dir = tmp_path / "cache"
    first = load_cifar10(archive_path, subset="test", cache_dir=cache_dir)
    np.testing.assert_array_equal(first.images, expected["test"][0])
    assert len(list(cache_dir.glob("*.npz"))) == 1
    second = load_cifar10(archive_path, subset="test", cache_dir=cache_dir)
    np.testing.assert_array_equal(second.images, first.images)

    # rewrite the archive with other pixels: the cache must not be served
    replacement = rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
    Image.fromarray(replacement).save(tree / "cifar" / "test" / "airplane" / "0.png")
    with tarfile.open(archive_path, "w:gz") as archive:
        archive.add(tree / "cifar", arcname="cifar")
    stat = archive_path.stat()
    os.utime(archive_path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    third = load_cifar10(archive_path, subset="test", cache_dir=cache_dir)
    np.testing.assert_array_equal(third.images[0], replacement)


def test_cifar10_errors(tmp_path):
    with pytest.raises(ValueError, match="subset must be 'train' or 'test'"):
        load_cifar10(tmp_path, subset="valid")
    with pytest.raises(ValueError, match="does not exist"):
        load_cifar10(tmp_path / "nowhere")


def _write_idx(path, array, magic):
    header = np.array([magic, *array.shape], dtype=">i4").tobytes()
    with gzip.open(path, "wb") as handle:
        handle.write(header + array.astype(np.uint8).tobytes())


def test_fashion_mnist_idx_files(tmp_path):
    rng = np.random.default_rng(4)
    images = rng.integers(0, 256, size=(5, 28, 28), dtype=np.uint8)
    labels = np.array([3, 0, 9, 1, 1])
    _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", images, 2051)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", labels, 2049)
    bunch = load_fashion_mnist(tmp_path, subset="test")
    np.testing.assert_array_equal(bunch.images, images)
    np.testing.assert_array_equal(bunch.target, labels)
    assert bunch.target_names[9] == "Ankle boot"
    with pytest.raises(FileNotFoundError, match="apt-get install -y dataset-fashion-mnist"):
        load_fashion_mnist(tmp_path, subset="train")
    _write_idx(tmp_path / "train-images-idx3-ubyte.gz", images, 2049)  # wrong magic
    _write_idx(tmp_path / "train-labels-idx1-ubyte.gz", labels, 2049)
    with pytest.raises(ValueError, match="magic 2051"):
        load_fashion_mnist(tmp_path)


def test_digits_images_match_sklearn():
    bunch = load_digits_images()
    digits = load_digits()
    assert bunch.images.dtype == np.uint8 and bunch.images.shape == (1797, 8, 8)
    np.testing.assert_array_equal(bunch.images, np.round(digits.images * 255 / 16))
    np.testing.assert_array_equal(bunch.target, digits.target)


# ---------------------------------------------------------------- real data


def _md5(path):
    return hashlib.md5(Path(path).read_bytes()).hexdigest()


def test_real_cifar10_subset(shared_data):
    root = shared_data / "cifar-10-subset"
    # README of the shared data: 1,102 rows in data_batch_1, 1,017 in the others
    assert _md5(root / "cifar-10-batches-py" / "data_batch_1") == "06cd5f185dcef7b2f2cf254fc2572f22"
    train = load_cifar10(root)
    assert train.images.shape == (5170, 32, 32, 3)
    np.testing.assert_array_equal(train.target[:10], [6, 9, 9, 4, 1, 1, 2, 7, 8, 3])
    labels = np.load(root / "cifar10_all_labels.npz")
    np.testing.assert_array_equal(train.target[:1102], labels["train_labels"][:1102])
    test = load_cifar10(root, subset="test")
    np.testing.assert_array_equal(
        np.bincount(test.target, minlength=10), [105, 93, 100, 104, 92, 87, 114, 102, 110, 110]
    )


def test_real_cifar10_jpeg_copy_matches_exact_subset(shared_data, tmp_path):
    test = load_cifar10(
        shared_data / "cifar-10-jpeg.tar.gz", subset="test", cache_dir=tmp_path
    )
    assert test.images.shape == (10000, 32, 32, 3)
    np.testing.assert_array_equal(np.bincount(test.target), [1000] * 10)
    # the JPEG copy is within a few grey levels of the exact pixels (README: 5.8/255)
    exact = load_cifar10(shared_data / "cifar-10-subset", subset="test")
    airplanes = exact.images[exact.target == 0]
    jpeg_airplanes = test.images[test.target == 0].astype(float)
    distances = np.abs(airplanes[:5, None].astype(float) - jpeg_airplanes[None]).mean(
        axis=(2, 3, 4)
    )
    assert distances.min(axis=1).max() < 13


def test_real_fashion_mnist():
    if not Path(FASHION_MNIST_ROOT).is_dir():
        pytest.skip("apt-get install -y dataset-fashion-mnist has not been run here")
    test = load_fashion_mnist(subset="test")
    assert test.images.shape == (10000, 28, 28)
    np.testing.assert_array_equal(np.bincount(test.target), [1000] * 10)
