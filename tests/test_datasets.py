"""Dataset loaders on files built here in each format, and on the real data."""

import bz2
import gzip
import hashlib
import lzma
import os
import pickle
import re
import tarfile
import warnings
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
    train = load_cifar10(root)  # through the restricted unpickler
    assert train.images.shape == (5170, 32, 32, 3)
    assert list(train.target_names) == CIFAR10_CLASSES  # read from batches.meta
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


# ------------------------------------------------------------ hardening


def _names(path):
    """Regex matching ``path`` verbatim inside an error message."""
    return re.escape(str(path))


class _WritesMarker:
    """Unpickling this runs code: it writes ``marker`` (exec) or touches it (shell)."""

    def __init__(self, marker, how):
        self.marker, self.how = str(marker), how

    def __reduce__(self):
        if self.how == "os.system":
            return os.system, (f"touch {self.marker}",)
        return exec, (f"open({self.marker!r}, 'w').write('pwned')",)


@pytest.mark.parametrize("how", ["exec", "os.system"])
@pytest.mark.parametrize("name", ["test_batch", "batches.meta"])
def test_cifar10_refuses_pickles_that_run_code(cifar_batches, tmp_path, name, how):
    root, _ = cifar_batches
    marker = tmp_path / "marker"
    payload = pickle.dumps({b"data": _WritesMarker(marker, how), b"labels": []}, protocol=2)
    # the crafted file is dangerous: a plain pickle.loads runs its code
    pickle.loads(payload)
    assert marker.exists()
    marker.unlink()
    target = root / "cifar-10-batches-py" / name
    target.write_bytes(payload)
    # protocol 2 names Python 2's module: __builtin__.exec
    global_name = "__builtin__.exec" if how == "exec" else f"{os.system.__module__}.system"
    with pytest.raises(pickle.UnpicklingError, match=_names(target)) as info:
        load_cifar10(root, subset="test")
    assert global_name in str(info.value) and "refusing" in str(info.value)
    assert not marker.exists()


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_cifar10_restricted_unpickler_reads_numpy_pickles(tmp_path, protocol):
    # numpy pickles arrays via _reconstruct (protocols 2-4) or _frombuffer (5),
    # bytes via _codecs.encode and numpy ints via scalar under protocol 2
    rng = np.random.default_rng(5)
    images = rng.integers(0, 256, size=(3, 32, 32, 3), dtype=np.uint8)
    labels = np.array([7, 0, 9])
    batch = {
        b"batch_label": b"",
        b"labels": [np.int64(v) for v in labels],
        b"data": images.transpose(0, 3, 1, 2).reshape(3, 3072),
    }
    (tmp_path / "test_batch").write_bytes(pickle.dumps(batch, protocol=protocol))
    meta = {"label_names": [f"c{i}" for i in range(10)], "num_vis": 3072}
    (tmp_path / "batches.meta").write_bytes(pickle.dumps(meta, protocol=protocol))
    bunch = load_cifar10(tmp_path, subset="test")
    np.testing.assert_array_equal(bunch.images, images)
    np.testing.assert_array_equal(bunch.target, labels)
    assert list(bunch.target_names) == meta["label_names"]


def _cifar_error(root, name, batch=None, raw=None):
    path = root / "cifar-10-batches-py" / name
    path.write_bytes(raw if raw is not None else pickle.dumps(batch, protocol=2))
    return path


@pytest.mark.parametrize(
    "labels, data, expected",
    [
        ([0, 10], None, r"labels \[10\] outside the expected 0\.\.9"),
        ([-1, 3], None, r"labels \[-1\] outside the expected 0\.\.9"),
        ([0, 1], 256, r"pixel values \[256\] outside the expected 0\.\.255"),
        ([0, 1], -3, r"pixel values \[-3\] outside the expected 0\.\.255"),
    ],
)
def test_cifar10_out_of_range_values(cifar_batches, labels, data, expected):
    root, _ = cifar_batches
    pixels = np.zeros((2, 3072), dtype=np.int64)
    if data is not None:
        pixels[1, 5] = data  # a uint8 cast would wrap it silently
    path = _cifar_error(root, "test_batch", {b"data": pixels, b"labels": labels})
    with pytest.raises(ValueError, match=_names(path)) as info:
        load_cifar10(root, subset="test")
    assert re.search(expected, str(info.value))


def test_cifar10_int_pixels_in_range_are_exact(cifar_batches):
    root, parts = cifar_batches
    images, labels = parts["test_batch"]
    pixels = images.transpose(0, 3, 1, 2).reshape(len(images), 3072).astype(np.int64)
    _cifar_error(root, "test_batch", {b"data": pixels, b"labels": list(map(int, labels))})
    np.testing.assert_array_equal(load_cifar10(root, subset="test").images, images)


@pytest.mark.parametrize("label_names", [CIFAR10_CLASSES[:9], "airplane", None])
def test_cifar10_meta_needs_ten_label_names(cifar_batches, label_names):
    root, _ = cifar_batches
    meta = {"num_vis": 3072} if label_names is None else {"label_names": label_names}
    path = _cifar_error(root, "batches.meta", meta)
    expected = "label_names" if label_names is None else "10 CIFAR-10 class names"
    with pytest.raises(ValueError, match=_names(path)) as info:
        load_cifar10(root, subset="test")
    assert expected in str(info.value)


@pytest.mark.parametrize(
    "kind", ["empty", "garbage", "truncated", "no data", "no labels", "a list"]
)
def test_cifar10_corrupt_batches_name_the_file(cifar_batches, kind):
    root, _ = cifar_batches
    good = (root / "cifar-10-batches-py" / "test_batch").read_bytes()
    batch = {b"data": np.zeros((1, 3072), np.uint8), b"labels": [1]}
    raw, expected = {
        "empty": (b"", "not a readable CIFAR-10 python pickle"),
        "garbage": (b"\x00not a pickle at all" * 10, "not a readable CIFAR-10 python pickle"),
        "truncated": (good[: len(good) // 2], "not a readable CIFAR-10 python pickle"),
        "no data": (pickle.dumps({b"labels": [1]}), "lacks the key 'data'"),
        "no labels": (pickle.dumps({b"data": batch[b"data"]}), "lacks the key 'labels'"),
        "a list": (pickle.dumps([1, 2]), "lacks the key 'data'"),
    }[kind]
    path = _cifar_error(root, "test_batch", raw=raw)
    with pytest.raises(ValueError, match=_names(path)) as info:
        load_cifar10(root, subset="test")
    assert expected in str(info.value)
    assert "expected" in str(info.value)


def test_image_folder_unlistable_class_folder_is_an_error(tmp_path, monkeypatch):
    rng = np.random.default_rng(6)
    _make_folder(tmp_path, rng)
    blocked = tmp_path / "train" / "dog"
    scandir = os.scandir

    def failing_scandir(path="."):
        # tests run as root, where chmod 000 does not stop reads: simulate it
        if Path(path) == blocked:
            raise PermissionError(13, "Permission denied", str(path))
        return scandir(path)

    monkeypatch.setattr(os, "scandir", failing_scandir)
    with pytest.raises(OSError, match=_names(blocked)) as info:
        load_image_folder(tmp_path, subset="train")
    assert "Permission denied" in str(info.value)


@pytest.mark.parametrize("as_archive", [False, True])
def test_image_folder_class_folder_without_images_is_an_error(tmp_path, as_archive):
    rng = np.random.default_rng(7)
    tree = tmp_path / "tree"
    _make_folder(tree, rng)
    empty = tree / "train" / "bee"  # sorts first: dropping it would shift every index
    empty.mkdir()
    (empty / "notes.txt").write_text("no images here")
    path = tree
    if as_archive:
        path = tmp_path / "images.tar"
        with tarfile.open(path, "w") as archive:
            archive.add(tree, arcname="tree")
        empty = Path("tree", "train", "bee")
    with pytest.raises(ValueError, match="hold no image files") as info:
        load_image_folder(path, subset="train")
    assert str(empty if not as_archive else Path(path, empty)) in str(info.value)
    # the other subset has no such folder and still loads
    assert list(load_image_folder(path, subset="test").target_names) == ["ant", "cat", "dog"]


def test_image_folder_symlinked_class_folder_is_read(tmp_path):
    rng = np.random.default_rng(12)
    expected = _make_folder(tmp_path / "real", rng)
    tree = tmp_path / "tree" / "train"
    tree.mkdir(parents=True)
    for cls in ("ant", "cat", "dog"):
        (tree / cls).symlink_to(tmp_path / "real" / "train" / cls, target_is_directory=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a link out of the tree is neither a loop nor a duplicate
        bunch = load_image_folder(tmp_path / "tree", subset="train")
    np.testing.assert_array_equal(bunch.images, expected["train"][0])
    np.testing.assert_array_equal(bunch.target, expected["train"][1])


def _write_pngs(folder, rng, n=2):
    """``0.png .. n-1.png`` of random grey pixels in ``folder``; return the pixels."""
    folder.mkdir(parents=True)
    pixels = rng.integers(0, 256, size=(n, 4, 5), dtype=np.uint8)
    for k, image in enumerate(pixels):
        Image.fromarray(image, mode="L").save(folder / f"{k}.png")
    return pixels


def _computed(images):
    return images.compute(scheduler="sync") if hasattr(images, "compute") else images


@pytest.mark.parametrize("as_dask", [False, True])
@pytest.mark.parametrize("target", ["..", ".", "the root, absolute", "sibling and back"])
def test_image_folder_symlink_loop_reads_each_image_once(tmp_path, target, as_dask):
    if as_dask:
        pytest.importorskip("dask")
    rng = np.random.default_rng(13)
    tree = tmp_path / "tree"
    pixels = np.concatenate([_write_pngs(tree / cls, rng) for cls in ("cat", "dog")])
    # sibling and back: no loop on one path, but dog is reached again as a class 'to_dog'
    if target == "sibling and back":
        link = tree / "cat" / "to_dog"
        link.symlink_to("../dog", target_is_directory=True)
        (tree / "dog" / "to_cat").symlink_to("../cat", target_is_directory=True)
    else:
        link = tree / "cat" / "loop"
        pointee = tree if target == "the root, absolute" else target
        link.symlink_to(pointee, target_is_directory=True)
    with pytest.warns(UserWarning, match=_names(link)):
        bunch = load_image_folder(tree, as_dask=as_dask)
    # the 4 files written, under their own paths and classes (164 images before the fix)
    written = [str(tree / cls / f"{k}.png") for cls in ("cat", "dog") for k in (0, 1)]
    assert list(bunch.filenames) == written
    np.testing.assert_array_equal(bunch.target, [0, 0, 1, 1])
    assert list(bunch.target_names) == ["cat", "dog"]
    np.testing.assert_array_equal(_computed(bunch.images), pixels)


def test_image_folder_symlink_loop_with_subsets(tmp_path):
    rng = np.random.default_rng(14)
    expected = _make_folder(tmp_path / "tree", rng)
    link = tmp_path / "tree" / "train" / "cat" / "up"
    link.symlink_to("../..", target_is_directory=True)  # the root: train/cat/up/train/cat/...
    for subset in ("train", "test"):
        with pytest.warns(UserWarning, match=_names(link)):
            bunch = load_image_folder(tmp_path / "tree", subset=subset)
        np.testing.assert_array_equal(bunch.images, expected[subset][0])
        np.testing.assert_array_equal(bunch.target, expected[subset][1])


def test_image_folder_same_file_through_two_links_is_read_once(tmp_path):
    rng = np.random.default_rng(15)
    pool = _write_pngs(tmp_path / "pool", rng)  # outside the tree
    tree = tmp_path / "tree"
    cat = _write_pngs(tree / "train" / "cat", rng, n=1)
    file_link = tree / "train" / "cat" / "copy.png"
    file_link.symlink_to("0.png")
    (tree / "train" / "dog").symlink_to(tmp_path / "pool", target_is_directory=True)
    (tree / "more" / "train").mkdir(parents=True)
    (tree / "more" / "train" / "dog").symlink_to(tmp_path / "pool", target_is_directory=True)
    with pytest.warns(UserWarning) as record:
        bunch = load_image_folder(tree, subset="train")
    message = " ".join(str(w.message) for w in record)
    assert str(file_link) in message
    assert str(tree / "train" / "dog") in message  # the second link to the pool, sorted after more/
    np.testing.assert_array_equal(bunch.images, np.concatenate([cat, pool]))
    np.testing.assert_array_equal(bunch.target, [0, 1, 1])
    assert bunch.filenames[0] == str(tree / "train" / "cat" / "0.png")  # the file, not its link
    assert [Path(name).resolve() for name in bunch.filenames[1:]] == [
        (tmp_path / "pool" / f"{k}.png").resolve() for k in (0, 1)
    ]


def test_image_folder_subset_through_a_link_into_the_other_subset(tmp_path):
    rng = np.random.default_rng(16)
    tree = tmp_path / "tree"
    shared = _write_pngs(tree / "train" / "cat", rng)
    only_test = _write_pngs(tree / "test" / "ant", rng)
    (tree / "test" / "cat").symlink_to("../train/cat", target_is_directory=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # each file is read once per subset: no duplicate
        test = load_image_folder(tree, subset="test")
        train = load_image_folder(tree, subset="train")
    np.testing.assert_array_equal(test.images, np.concatenate([only_test, shared]))
    np.testing.assert_array_equal(test.target, [0, 0, 1, 1])
    np.testing.assert_array_equal(train.images, shared)


def _cut_archive(tmp_path, compression, cut):
    """A tar of <class>/<image> files, cut as ``cut`` says, then compressed or not."""
    rng = np.random.default_rng(17)
    for cls in ("ant", "cat"):
        _write_pngs(tmp_path / "tree" / cls, rng)
    plain = tmp_path / "plain.tar"
    with tarfile.open(plain, "w") as archive:
        archive.add(tmp_path / "tree", arcname="tree")
    data = plain.read_bytes()
    with tarfile.open(plain) as archive:
        last = [info for info in archive if info.isfile()][-1]
    if cut == "inside the last image":
        data = data[: last.offset_data + last.size // 2]
    elif cut == "before the last header":  # tarfile alone lists the members before it
        data = data[: last.offset]
    compress = {"": bytes, "gz": gzip.compress, "bz2": bz2.compress, "xz": lzma.compress}
    data = compress[compression](data)
    if cut == "first 30 bytes":
        data = data[:30]
    elif cut == "without the last 10 bytes":  # a compressed stream without its end
        data = data[:-10]
    path = tmp_path / ("images.tar" + (f".{compression}" if compression else ""))
    path.write_bytes(data)
    return path


_CUTS = ["first 30 bytes", "inside the last image", "before the last header"]


@pytest.mark.parametrize("as_dask", [False, True])
@pytest.mark.parametrize(
    "compression, cut",
    [(compression, cut) for compression in ("", "gz", "bz2", "xz") for cut in _CUTS]
    # the end of a plain tar is zero padding, the end of a compressed one is not
    + [(compression, "without the last 10 bytes") for compression in ("gz", "bz2", "xz")],
)
def test_image_folder_truncated_archives_name_the_file(tmp_path, compression, cut, as_dask):
    if as_dask:
        pytest.importorskip("dask")
    path = _cut_archive(tmp_path, compression, cut)
    with pytest.raises(ValueError, match=_names(path)) as info:
        load_image_folder(path, as_dask=as_dask)
    if compression or cut != "first 30 bytes":
        assert "truncated or corrupt tar archive" in str(info.value)
        assert "expected a complete" in str(info.value)
    else:  # 30 bytes of a plain tar hold no header: nothing tells it from any file
        assert "not a tar archive" in str(info.value)


def test_image_folder_complete_archives_still_load(tmp_path):
    # the same archives uncut: the checks above reject only what is missing
    for compression in ("", "gz", "bz2", "xz"):
        path = _cut_archive(tmp_path / compression, compression, cut=None)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            bunch = load_image_folder(path)
        assert bunch.images.shape == (4, 4, 5)
        np.testing.assert_array_equal(bunch.target, [0, 0, 1, 1])


def test_image_folder_corrupt_images_name_the_file(tmp_path):
    rng = np.random.default_rng(8)
    _make_folder(tmp_path, rng)
    good = (tmp_path / "train" / "ant" / "0.png").read_bytes()
    garbage = tmp_path / "train" / "ant" / "0.png"
    garbage.write_bytes(b"this is not a png" * 20)
    with pytest.raises(ValueError, match=_names(garbage)) as info:
        load_image_folder(tmp_path, subset="train")
    assert "cannot decode the image" in str(info.value)
    assert "expected a complete image file" in str(info.value)
    truncated = tmp_path / "test" / "cat" / "1.png"
    truncated.write_bytes(good[: len(good) // 2])
    with pytest.raises(ValueError, match=_names(truncated)):
        load_image_folder(tmp_path, subset="test")


def test_image_folder_truncated_archive_names_the_file(tmp_path):
    rng = np.random.default_rng(9)
    _make_folder(tmp_path / "tree", rng, size=(32, 32))
    path = tmp_path / "images.tar.gz"
    with tarfile.open(path, "w:gz") as archive:
        archive.add(tmp_path / "tree", arcname="tree")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(ValueError, match=_names(path)) as info:
        load_image_folder(path)
    assert "truncated or corrupt tar archive" in str(info.value)


def test_image_folder_16bit_png_is_scaled_to_uint8(tmp_path):
    values = np.array(
        [[0, 1, 128, 129, 256, 385], [32767, 32768, 40000, 65407, 65408, 65535]],
        dtype=np.uint16,
    )
    (tmp_path / "a").mkdir()
    Image.fromarray(values).save(tmp_path / "a" / "x.png")
    assert Image.open(tmp_path / "a" / "x.png").mode == "I;16"
    images = load_image_folder(tmp_path).images
    expected = np.round(values.astype(np.float64) * 255 / 65535).astype(np.uint8)
    assert images.dtype == np.uint8
    np.testing.assert_array_equal(images[0], expected)
    assert expected[1, 1] == 128 and expected[1, 5] == 255  # not clipped to 255


def test_image_folder_32bit_images_outside_0_255_are_an_error(tmp_path):
    (tmp_path / "a").mkdir()
    small = np.array([[0, 7, 255]], dtype=np.int32)
    Image.fromarray(small).save(tmp_path / "a" / "x.tif")
    np.testing.assert_array_equal(load_image_folder(tmp_path).images[0], small)
    path = tmp_path / "a" / "x.tif"
    Image.fromarray(np.array([[0, 70000, 3]], dtype=np.int32)).save(path)
    with pytest.raises(ValueError, match=_names(path)) as info:
        load_image_folder(tmp_path)
    assert "expected 8-bit (0..255)" in str(info.value)


def _archive_with_cache(tmp_path):
    rng = np.random.default_rng(10)
    expected = _make_folder(tmp_path / "tree", rng)
    path = tmp_path / "images.tar.gz"
    with tarfile.open(path, "w:gz") as archive:
        archive.add(tmp_path / "tree", arcname="tree")
    return path, expected


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
def test_image_folder_broken_cache_is_decoded_again(tmp_path, damage):
    path, expected = _archive_with_cache(tmp_path)
    cache_dir = tmp_path / "cache"
    load_image_folder(path, subset="train", cache=True, cache_dir=cache_dir)
    (cache_file,) = cache_dir.glob("*.npz")
    data = cache_file.read_bytes()
    cache_file.write_bytes(
        {"garbage": b"not a zip" * 50, "truncated": data[: len(data) // 2], "empty": b""}[
            damage
        ]
    )
    with pytest.warns(UserWarning, match=_names(cache_file)):
        bunch = load_image_folder(path, subset="train", cache=True, cache_dir=cache_dir)
    np.testing.assert_array_equal(bunch.images, expected["train"][0])
    np.testing.assert_array_equal(bunch.target, expected["train"][1])
    # the cache was rewritten: the next load is served from it without a warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = load_image_folder(path, subset="train", cache=True, cache_dir=cache_dir)
    assert again.DESCR.endswith("(cached decode).")
    np.testing.assert_array_equal(again.images, expected["train"][0])


def test_cache_dir_that_is_a_file_is_an_error(tmp_path):
    path, _ = _archive_with_cache(tmp_path)
    cache_dir = tmp_path / "not_a_folder"
    cache_dir.write_text("")
    with pytest.raises(ValueError, match=_names(cache_dir)) as info:
        load_cifar10(path, subset="train", cache_dir=cache_dir)
    assert "cache_dir" in str(info.value) and "is not a directory" in str(info.value)


@pytest.mark.parametrize(
    "kind", ["not gzip", "truncated gzip", "swapped", "short payload", "empty"]
)
def test_fashion_mnist_corrupt_files_name_the_file(tmp_path, kind):
    rng = np.random.default_rng(11)
    images = rng.integers(0, 256, size=(4, 28, 28), dtype=np.uint8)
    labels = np.array([1, 2, 3, 4])
    image_path = tmp_path / "t10k-images-idx3-ubyte.gz"
    label_path = tmp_path / "t10k-labels-idx1-ubyte.gz"
    _write_idx(image_path, images, 2051)
    _write_idx(label_path, labels, 2049)
    if kind == "not gzip":
        label_path.write_bytes(np.array([2049, 4], ">i4").tobytes() + bytes([1, 2, 3, 4]))
        expected = "not a readable gzip file"
    elif kind == "truncated gzip":
        data = image_path.read_bytes()
        image_path.write_bytes(data[: len(data) // 2])
        expected = "not a readable gzip file"
    elif kind == "swapped":
        label_path.write_bytes(image_path.read_bytes())  # the images file as labels
        expected = "magic 2051 (an IDX images file: were the files swapped?)"
    elif kind == "short payload":
        with gzip.open(image_path, "wb") as handle:
            handle.write(np.array([2051, 4, 28, 28], ">i4").tobytes() + bytes(100))
        expected = "holds 100 bytes after its header for the shape (4, 28, 28)"
    else:
        with gzip.open(label_path, "wb") as handle:
            handle.write(b"")
        expected = "holds 0 bytes, too few for an IDX header"
    broken = label_path if kind in ("not gzip", "swapped", "empty") else image_path
    with pytest.raises(ValueError, match=_names(broken)) as info:
        load_fashion_mnist(tmp_path, subset="test")
    assert expected in str(info.value)
    what = "labels file (magic 2049)" if broken == label_path else "images file (magic 2051)"
    assert f"expected a gzip IDX {what}" in str(info.value)


@pytest.mark.parametrize("bad", [10, 200, 255])
def test_fashion_mnist_labels_above_9_are_an_error(tmp_path, bad):
    _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", np.zeros((3, 28, 28)), 2051)
    label_path = tmp_path / "t10k-labels-idx1-ubyte.gz"
    _write_idx(label_path, np.array([0, bad, 9]), 2049)
    with pytest.raises(ValueError, match=_names(label_path)) as info:
        load_fashion_mnist(tmp_path, subset="test")
    assert f"labels [{bad}] outside the expected 0..9" in str(info.value)
