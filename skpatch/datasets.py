"""Offline dataset loaders: nothing is ever downloaded.

Every loader reads local files the user points to (or files installed by a
package) and returns a :class:`~sklearn.utils.Bunch` with ``images`` (uint8,
``(n, H, W)`` or ``(n, H, W, C)``), ``target``, ``target_names`` and
``DESCR``, or ``(images, target)`` with ``return_X_y=True``.
"""

import gzip
import hashlib
import io
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
from sklearn.utils import Bunch

from ._patch_size_results import load_patch_size_results

__all__ = [
    "load_cifar10",
    "load_digits_images",
    "load_fashion_mnist",
    "load_image_folder",
    "load_patch_size_results",
]

CIFAR10_CLASSES = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
]
FASHION_MNIST_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
FASHION_MNIST_ROOT = "/usr/share/datasets/fashion-mnist"
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")
_SUBSETS = ("train", "test")


def _check_subset(subset):
    if subset not in _SUBSETS:
        raise ValueError(f"subset must be 'train' or 'test', got {subset!r}.")


def _result(images, target, target_names, descr, return_X_y, **extra):
    if return_X_y:
        return images, target
    return Bunch(
        images=images,
        target=target,
        target_names=np.asarray(target_names, dtype=object),
        DESCR=descr,
        **extra,
    )


# --------------------------------------------------------------------------- #
# Image folders and archives
# --------------------------------------------------------------------------- #


def _is_image_name(name):
    return name.lower().endswith(_IMAGE_SUFFIXES) and not Path(name).name.startswith(".")


def _select(parts, subset):
    """Class folder of an image path, or None when it is not selected."""
    if len(parts) < 2:
        return None  # an image at the root has no class folder
    if subset is not None and (len(parts) < 3 or parts[-3] != subset):
        return None
    return parts[-2]


def _read_folder(path, subset):
    """Sorted ``(class_name, name, bytes)`` of a directory or tar archive.

    The class of an image is the name of its parent folder; with ``subset``
    only images whose grandparent folder is named ``subset`` are kept.
    """
    path = Path(path)
    entries = []
    if path.is_dir():
        for file in path.rglob("*"):
            if file.is_file() and _is_image_name(file.name):
                cls = _select(file.relative_to(path).parts, subset)
                if cls is not None:
                    entries.append((cls, str(file), file))
        entries = [(cls, name, file.read_bytes()) for cls, name, file in entries]
    elif path.is_file() and tarfile.is_tarfile(path):
        # one sequential pass: seeking in a .tar.gz re-decompresses it
        with tarfile.open(path, mode="r|*") as archive:
            for info in archive:
                if info.isfile() and _is_image_name(info.name):
                    cls = _select(Path(info.name).parts, subset)
                    if cls is not None:
                        data = archive.extractfile(info).read()
                        entries.append((cls, info.name, data))
    else:
        raise ValueError(
            "path must be a directory or a tar archive of <class>/<image> files, "
            f"got {str(path)!r} (not found or not a tar archive)."
        )
    if not entries:
        where = f" under a '{subset}' folder" if subset is not None else ""
        raise ValueError(
            f"no images found{where} in {str(path)!r}: expected "
            "[<subset>/]<class>/<image> files (jpg, png, ...)."
        )
    entries.sort(key=lambda entry: (entry[0], entry[1]))
    return entries


def _decode(data, size):
    from PIL import Image  # Pillow is only needed by the folder loaders

    with Image.open(io.BytesIO(data)) as image:
        image = image.convert("L" if image.mode in ("1", "L", "I;16", "I") else "RGB")
        if size is not None and image.size != (size[1], size[0]):
            image = image.resize((size[1], size[0]), Image.BILINEAR)
        return np.asarray(image, dtype=np.uint8)


def _stack_images(arrays, size):
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        if size is None:
            raise ValueError(
                f"images have different sizes ({sorted(shapes)[:4]}...); pass "
                "size=(H, W) to resize them all."
            )
        # mixed grayscale and colour: promote the grayscale ones to RGB
        arrays = [np.repeat(a[..., None], 3, axis=2) if a.ndim == 2 else a for a in arrays]
    return np.stack(arrays)


def _cache_path(path, subset, size, cache_dir):
    stat = Path(path).stat()
    key = f"{Path(path).resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{subset}|{size}"
    digest = hashlib.sha1(key.encode()).hexdigest()[:16]
    return Path(cache_dir) / f"image_folder_{digest}.npz"


def _default_cache_dir():
    return Path(
        os.environ.get("SKPATCH_CACHE", Path.home() / ".cache" / "skpatch")
    )


def load_image_folder(
    path, *, size=None, subset=None, cache=False, cache_dir=None, return_X_y=False
):
    """Load a folder tree or tar archive of ``<class>/<image>`` files.

    Parameters
    ----------
    path : str or path-like
        A directory or a (possibly compressed) tar archive. Each image's class
        is the name of its parent folder; classes are numbered in sorted
        order of their names.
    size : int or tuple (H, W), default=None
        Resize every image to this size with Pillow (bilinear). Without it,
        images of different sizes are an error.
    subset : str, default=None
        Keep only images under a folder of this name (``'train'`` in
        ``train/<class>/<image>``).
    cache : bool, default=False
        Keep a ``.npz`` of the decoded images in ``cache_dir``, keyed by the
        path, size and modification time of ``path`` (a changed archive is
        decoded again). Only for archives.
    cache_dir : str or path-like, default=None
        Where the cache lives; default ``$SKPATCH_CACHE`` or
        ``~/.cache/skpatch``.
    return_X_y : bool, default=False
        Return ``(images, target)`` instead of a Bunch.

    Returns
    -------
    data : :class:`~sklearn.utils.Bunch`
        ``images`` uint8 ``(n, H, W)`` for grayscale files or ``(n, H, W, 3)``,
        ``target`` int64 ``(n,)``, ``target_names``, ``filenames``, ``DESCR``.
    """
    if size is not None:
        from .utils._validation import check_size_pair

        size = check_size_pair(size, "size")
    cache_file = None
    if cache and Path(path).is_file():
        cache_file = _cache_path(path, subset, size, cache_dir or _default_cache_dir())
        if cache_file.exists():
            with np.load(cache_file, allow_pickle=False) as stored:
                images, target = stored["images"], stored["target"]
                target_names, filenames = stored["target_names"], stored["filenames"]
            return _result(
                images,
                target,
                list(target_names),
                f"Images from {path} (cached decode).",
                return_X_y,
                filenames=filenames,
            )
    entries = _read_folder(path, subset)
    target_names = sorted({cls for cls, _, _ in entries})
    class_index = {name: i for i, name in enumerate(target_names)}
    target = np.array([class_index[cls] for cls, _, _ in entries], dtype=np.int64)
    filenames = np.array([name for _, name, _ in entries])
    images = _stack_images([_decode(data, size) for _, _, data in entries], size)
    if cache_file is not None:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_suffix(".tmp.npz")
        np.savez(
            tmp,
            images=images,
            target=target,
            target_names=np.array(target_names),
            filenames=filenames,
        )
        os.replace(tmp, cache_file)
    descr = (
        f"Images from {path}" + (f" (subset {subset!r})" if subset else "") + f": "
        f"{len(images)} images of shape {images.shape[1:]}, {len(target_names)} classes."
    )
    return _result(images, target, target_names, descr, return_X_y, filenames=filenames)


# --------------------------------------------------------------------------- #
# CIFAR-10
# --------------------------------------------------------------------------- #

_CIFAR_DESCR = """CIFAR-10 (Krizhevsky, 2009): 32x32 RGB images of 10 classes
(airplane, automobile, bird, cat, deer, dog, frog, horse, ship, truck);
50,000 training and 10,000 test images in the official release. Read from
local files: nothing is downloaded. Cite: Alex Krizhevsky, Learning Multiple
Layers of Features from Tiny Images, Technical Report, University of Toronto,
2009."""


def _find_cifar_batches(root):
    root = Path(root)
    for candidate in (root, root / "cifar-10-batches-py"):
        if (candidate / "test_batch").is_file() or (candidate / "data_batch_1").is_file():
            return candidate
    return None


def _read_cifar_batch(path):
    with open(path, "rb") as handle:
        batch = pickle.load(handle, encoding="bytes")
    data = np.asarray(batch[b"data"], dtype=np.uint8)
    labels = np.asarray(batch[b"labels"], dtype=np.int64)
    if data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
        raise ValueError(
            f"{path} is not a CIFAR-10 batch: data {data.shape}, {len(labels)} labels; "
            "expected (n, 3072) pixels and n labels."
        )
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


def load_cifar10(root, *, subset="train", cache=True, cache_dir=None, return_X_y=False):
    """Load CIFAR-10 from local files.

    Two layouts are read:

    * the standard python release: ``cifar-10-batches-py/data_batch_1..5``
      and ``test_batch`` under ``root`` (or ``root`` itself). Batches with
      fewer than 10,000 rows are accepted (truncated copies);
    * an image-folder tree or ``.tar.gz`` archive of
      ``{train,test}/<class>/*.jpg|png`` (such as the JPEG copy of all
      60,000 images), with the class folders named as the CIFAR-10 classes.

    Parameters
    ----------
    root : str or path-like
        Directory holding one of the layouts, or the archive itself.
    subset : {'train', 'test'}, default='train'
        Which split to load.
    cache : bool, default=True
        For archives: keep the decoded images as ``.npz`` in ``cache_dir``,
        invalidated when the archive changes (see :func:`load_image_folder`).
    cache_dir : str or path-like, default=None
        Cache location; default ``$SKPATCH_CACHE`` or ``~/.cache/skpatch``.
    return_X_y : bool, default=False
        Return ``(images, target)`` instead of a Bunch.

    Returns
    -------
    data : :class:`~sklearn.utils.Bunch`
        ``images`` uint8 ``(n, 32, 32, 3)``, ``target`` int64 in 0..9,
        ``target_names`` (the ten class names), ``DESCR``.

    Notes
    -----
    JPEG copies differ from the official pixels (about 5.8/255 on average for
    the copy in the project's shared data): say "CIFAR-10 (JPEG copy)" when
    quoting accuracies measured on one.
    """
    _check_subset(subset)
    root = Path(root)
    if not root.exists():
        raise ValueError(f"root {str(root)!r} does not exist; pass the CIFAR-10 location.")
    batches_dir = _find_cifar_batches(root) if root.is_dir() else None
    if batches_dir is not None:
        names = (
            [f"data_batch_{i}" for i in range(1, 6)] if subset == "train" else ["test_batch"]
        )
        missing = [n for n in names if not (batches_dir / n).is_file()]
        if missing:
            raise ValueError(f"{batches_dir} lacks the CIFAR-10 batch files {missing}.")
        parts = [_read_cifar_batch(batches_dir / n) for n in names]
        images = np.concatenate([p[0] for p in parts])
        target = np.concatenate([p[1] for p in parts])
        target_names = CIFAR10_CLASSES
        meta = batches_dir / "batches.meta"
        if meta.is_file():
            with open(meta, "rb") as handle:
                label_names = pickle.load(handle, encoding="latin1").get("label_names")
            if label_names:
                target_names = list(label_names)
        descr = _CIFAR_DESCR + f"\n\nLoaded {len(images)} {subset} images from {batches_dir}."
        return _result(images, target, target_names, descr, return_X_y)
    folder = load_image_folder(
        root, subset=subset, cache=cache, cache_dir=cache_dir, return_X_y=False
    )
    if folder.images.shape[1:] != (32, 32, 3):
        raise ValueError(
            f"{root} holds images of shape {folder.images.shape[1:]}, expected "
            "CIFAR-10's (32, 32, 3)."
        )
    descr = (
        _CIFAR_DESCR + f"\n\nLoaded {len(folder.images)} {subset} images from the image "
        f"folder/archive {root} (a JPEG copy differs slightly from the official pixels)."
    )
    return _result(
        folder.images, folder.target, list(folder.target_names), descr, return_X_y
    )


# --------------------------------------------------------------------------- #
# Fashion-MNIST
# --------------------------------------------------------------------------- #


def _read_idx(path, magic, ndim):
    with gzip.open(path, "rb") as handle:
        data = handle.read()
    header = np.frombuffer(data, dtype=">i4", count=1 + ndim)
    if int(header[0]) != magic:
        raise ValueError(f"{path} is not an IDX file with magic {magic}.")
    shape = tuple(int(d) for d in header[1:])
    values = np.frombuffer(data, dtype=np.uint8, offset=4 * (1 + ndim))
    if values.size != int(np.prod(shape)):
        raise ValueError(f"{path} is truncated: {values.size} bytes for shape {shape}.")
    return values.reshape(shape)


def load_fashion_mnist(root=None, *, subset="train", return_X_y=False):
    """Load Fashion-MNIST from its gzip IDX files.

    Parameters
    ----------
    root : str or path-like, default=None
        Directory with ``{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz``.
        Default: ``/usr/share/datasets/fashion-mnist``, where the Debian
        package ``dataset-fashion-mnist`` installs them.
    subset : {'train', 'test'}, default='train'
        60,000 training or 10,000 test images.
    return_X_y : bool, default=False
        Return ``(images, target)`` instead of a Bunch.

    Returns
    -------
    data : :class:`~sklearn.utils.Bunch`
        ``images`` uint8 ``(n, 28, 28)``, ``target`` int64 in 0..9,
        ``target_names``, ``DESCR``.
    """
    _check_subset(subset)
    root = Path(FASHION_MNIST_ROOT if root is None else root)
    prefix = "train" if subset == "train" else "t10k"
    image_path = root / f"{prefix}-images-idx3-ubyte.gz"
    label_path = root / f"{prefix}-labels-idx1-ubyte.gz"
    if not image_path.is_file() or not label_path.is_file():
        raise FileNotFoundError(
            f"Fashion-MNIST files not found in {root} (looked for {image_path.name} "
            f"and {label_path.name}). Install them with `apt-get install -y "
            "dataset-fashion-mnist` or pass root= the folder holding them."
        )
    images = _read_idx(image_path, 2051, 3)
    target = _read_idx(label_path, 2049, 1).astype(np.int64)
    if len(images) != len(target):
        raise ValueError(f"{len(images)} images but {len(target)} labels in {root}.")
    descr = (
        "Fashion-MNIST (Xiao, Rasul, Vollgraf, 2017): 28x28 grayscale images of "
        f"10 clothing classes. Loaded {len(images)} {subset} images from {root}. "
        "License MIT, (c) 2017 Zalando SE."
    )
    return _result(images, target, FASHION_MNIST_CLASSES, descr, return_X_y)


# --------------------------------------------------------------------------- #
# Digits
# --------------------------------------------------------------------------- #


def load_digits_images(*, return_X_y=False):
    """scikit-learn's bundled handwritten digits as uint8 8x8 images.

    The 17 grey levels 0..16 of :func:`sklearn.datasets.load_digits` are
    mapped to uint8 by ``round(v * 255 / 16)`` so that, like every uint8
    image, they scale to [0, 1] inside the estimators.

    Parameters
    ----------
    return_X_y : bool, default=False
        Return ``(images, target)`` instead of a Bunch.

    Returns
    -------
    data : :class:`~sklearn.utils.Bunch`
        ``images`` uint8 ``(1797, 8, 8)``, ``target`` int64 in 0..9,
        ``target_names``, ``DESCR``.

    Examples
    --------
    >>> from skpatch.datasets import load_digits_images
    >>> images, target = load_digits_images(return_X_y=True)
    >>> images.shape, images.dtype, images.max()
    ((1797, 8, 8), dtype('uint8'), np.uint8(255))
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
    target = digits.target.astype(np.int64)
    descr = (
        "scikit-learn's optical recognition of handwritten digits (UCI): 1797 "
        "8x8 images of digits 0-9, grey levels 0..16 mapped to 0..255.\n\n"
        + digits.DESCR
    )
    return _result(images, target, [str(i) for i in range(10)], descr, return_X_y)
