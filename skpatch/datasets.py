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
import warnings
import zlib
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


def _folder_error(err):
    raise OSError(
        f"cannot list the folder {err.filename!r} ({err.strerror or err}): its images "
        "would be missing from the data set; fix its permissions or remove it."
    ) from err


def _check_no_empty_class(path, folders, image_folders, subset):
    """Raise for a class folder with no image in it.

    A leaf folder without images beside folders that do hold classes would
    otherwise vanish from ``target_names`` and shift every class index.
    """
    has_subfolder = {folder[:-1] for folder in folders}
    class_parents = {folder[:-1] for folder in image_folders}
    empty = sorted(
        folder
        for folder in folders - image_folders
        if folder not in has_subfolder
        and folder[:-1] in class_parents
        and not folder[-1].startswith(".")
        and _select(folder + ("image",), subset) is not None
    )
    if empty:
        names = [str(Path(path, *folder)) for folder in empty[:5]]
        raise ValueError(
            f"class folder(s) {names} in {str(path)!r} hold no image files; expected "
            "images (jpg, png, ...) in every class folder. Add them or remove the "
            "folder, so that the class numbering is the one you expect."
        )


def _read_folder(path, subset):
    """Sorted ``(class_name, name, bytes)`` of a directory or tar archive.

    The class of an image is the name of its parent folder; with ``subset``
    only images whose grandparent folder is named ``subset`` are kept.
    """
    path = Path(path)
    entries = []
    folders = set()  # relative parts of every folder, to find empty classes
    image_folders = set()
    if path.is_dir():
        # os.walk with onerror: Path.rglob silently skips folders it cannot list;
        # followlinks so that a symlinked class folder is read, not dropped
        walk = os.walk(path, onerror=_folder_error, followlinks=True)
        for top, dirnames, filenames in walk:
            relative = Path(top).relative_to(path).parts
            folders.update(relative + (d,) for d in dirnames)
            for name in filenames:
                if _is_image_name(name):
                    cls = _select(relative + (name,), subset)
                    if cls is not None:
                        entries.append((cls, os.path.join(top, name)))
                        image_folders.add(relative)
        entries = [(cls, name, Path(name).read_bytes()) for cls, name in entries]
    elif path.is_file() and tarfile.is_tarfile(path):
        try:
            # one sequential pass: seeking in a .tar.gz re-decompresses it
            with tarfile.open(path, mode="r|*") as archive:
                for info in archive:
                    parts = Path(info.name).parts
                    folders.update(parts[:k] for k in range(1, len(parts)))
                    if info.isdir():
                        folders.add(parts)
                    elif info.isfile() and _is_image_name(info.name):
                        cls = _select(parts, subset)
                        if cls is not None:
                            data = archive.extractfile(info).read()
                            entries.append((cls, info.name, data))
                            image_folders.add(parts[:-1])
        except (tarfile.TarError, EOFError, OSError, zlib.error) as err:
            raise ValueError(
                f"{str(path)!r} is a truncated or corrupt tar archive "
                f"({type(err).__name__}: {err}); expected a complete (possibly "
                "compressed) tar of <class>/<image> files."
            ) from err
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
    _check_no_empty_class(path, folders, image_folders, subset)
    entries.sort(key=lambda entry: (entry[0], entry[1]))
    return entries


class _ImageError(ValueError):
    """An image that decodes but whose values have no faithful uint8 mapping."""


def _to_8bit(image, name):
    """The Pillow image in a mode whose values are 0..255."""
    from PIL import Image

    mode = image.mode
    # PNG stores at most 16 bits, so mode 'I' from a PNG (older Pillow) is 16-bit too
    if mode.startswith("I;16") or (mode == "I" and image.format == "PNG"):
        values = np.asarray(image).astype(np.uint32)
        # round(v * 255 / 65535) == round(v / 257); no ties since 257 is odd
        return Image.fromarray(((values + 128) // 257).astype(np.uint8))
    if mode in ("I", "F"):
        values = np.asarray(image)
        if values.size and (values.min() < 0 or values.max() > 255):
            raise _ImageError(
                f"the image {name} has {mode}-mode values {values.min()}..{values.max()}; "
                "expected 8-bit (0..255) or 16-bit PNG grey levels."
            )
        return Image.fromarray(np.rint(values).astype(np.uint8))
    return image.convert("L" if mode in ("1", "L") else "RGB")


def _decode(data, size, name):
    from PIL import Image  # Pillow is only needed by the folder loaders

    try:
        with Image.open(io.BytesIO(data)) as image:
            image = _to_8bit(image, name)
            if size is not None and image.size != (size[1], size[0]):
                image = image.resize((size[1], size[0]), Image.BILINEAR)
            return np.asarray(image, dtype=np.uint8)
    except (_ImageError, MemoryError):
        raise
    except Exception as err:  # Pillow raises many types on corrupt data
        raise ValueError(
            f"cannot decode the image {name} ({type(err).__name__}: {err}); expected "
            "a complete image file (jpg, png, ...)."
        ) from err


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


def _cache_dir(cache_dir):
    cache_dir = Path(cache_dir) if cache_dir is not None else _default_cache_dir()
    if cache_dir.exists() and not cache_dir.is_dir():
        raise ValueError(
            f"cache_dir {str(cache_dir)!r} exists and is not a directory; expected a "
            "folder for the .npz cache (created if missing), or pass cache=False."
        )
    return cache_dir


def _load_cache(cache_file, path):
    """``(images, target, target_names, filenames)`` of a cache, or None if broken."""
    try:
        with np.load(cache_file, allow_pickle=False) as stored:
            images, target = stored["images"], stored["target"]
            target_names, filenames = stored["target_names"], stored["filenames"]
        if not (
            images.dtype == np.uint8
            and images.ndim in (3, 4)
            and target.dtype.kind in "iu"
            and target.shape == filenames.shape == (len(images),)
            and (target.size == 0 or 0 <= target.min() <= target.max() < len(target_names))
        ):
            raise ValueError("its arrays do not fit together")
    except MemoryError:
        raise
    except Exception as err:  # a broken zip raises many types
        warnings.warn(
            f"the cache file {cache_file} is unreadable ({type(err).__name__}: {err}); "
            f"decoding {path} again and rewriting the cache.",
            UserWarning,
            stacklevel=3,
        )
        return None
    return images, target, target_names, filenames


def _write_cache(cache_file, **arrays):
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ValueError(
            f"cannot create the cache_dir {str(cache_file.parent)!r} ({err}); expected "
            "a writable folder, or pass cache=False."
        ) from err
    tmp = cache_file.with_suffix(".tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, cache_file)  # atomic: a reader never sees half a cache


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
        decoded again). Only for archives. A broken cache file is decoded
        again from ``path`` and rewritten, with a ``UserWarning``.
    cache_dir : str or path-like, default=None
        Where the cache lives (a folder, created if missing); default
        ``$SKPATCH_CACHE`` or ``~/.cache/skpatch``.
    return_X_y : bool, default=False
        Return ``(images, target)`` instead of a Bunch.

    Returns
    -------
    data : :class:`~sklearn.utils.Bunch`
        ``images`` uint8 ``(n, H, W)`` for grayscale files or ``(n, H, W, 3)``,
        ``target`` int64 ``(n,)``, ``target_names``, ``filenames``, ``DESCR``.

    Notes
    -----
    16-bit grey images (PNG mode ``I;16``) are scaled to uint8 by
    ``round(v * 255 / 65535)``; 32-bit images (modes ``I``, ``F``) must hold
    values in 0..255. A class folder without images, a folder that cannot be
    listed, an image that cannot be decoded and a truncated archive are
    errors that name the file or folder.
    """
    if size is not None:
        from .utils._validation import check_size_pair

        size = check_size_pair(size, "size")
    cache_file = None
    if cache and Path(path).is_file():
        cache_file = _cache_path(path, subset, size, _cache_dir(cache_dir))
        cached = _load_cache(cache_file, path) if cache_file.exists() else None
        if cached is not None:
            images, target, target_names, filenames = cached
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
    where = "" if Path(path).is_dir() else f" in the archive {str(path)!r}"
    images = _stack_images(
        [_decode(data, size, f"{name!r}{where}") for _, name, data in entries], size
    )
    if cache_file is not None:
        _write_cache(
            cache_file,
            images=images,
            target=target,
            target_names=np.array(target_names),
            filenames=filenames,
        )
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


def _numpy_module(name):
    """``numpy._core.<name>`` (numpy 2) or ``numpy.core.<name>`` (numpy 1)."""
    import importlib

    try:
        return importlib.import_module(f"numpy._core.{name}")
    except ImportError:
        return importlib.import_module(f"numpy.core.{name}")


def _latin1_encode(text, encoding="utf-8", errors="strict"):
    # Python 3 writes bytes in protocol 2 as _codecs.encode(text, 'latin1')
    if not isinstance(text, str) or encoding != "latin1" or errors != "strict":
        raise pickle.UnpicklingError(
            f"_codecs.encode called with {encoding!r}, expected 'latin1' bytes."
        )
    return text.encode("latin1")


def _pickle_globals():
    multiarray, numeric = _numpy_module("multiarray"), _numpy_module("numeric")
    allowed = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _latin1_encode,
        ("__builtin__", "bytes"): bytes,
        ("builtins", "bytes"): bytes,
    }
    # the official files name numpy.core; numpy 2 writes numpy._core
    for package in ("numpy.core", "numpy._core"):
        allowed[(f"{package}.multiarray", "_reconstruct")] = multiarray._reconstruct
        allowed[(f"{package}.multiarray", "scalar")] = multiarray.scalar
        allowed[(f"{package}.numeric", "_frombuffer")] = numeric._frombuffer
    return allowed


class _ForbiddenGlobal(pickle.UnpicklingError):
    pass


class _CifarUnpickler(pickle.Unpickler):
    """Admits only the globals that rebuild numpy arrays, never arbitrary code."""

    def __init__(self, file, path, **kwargs):
        super().__init__(file, **kwargs)
        self._path = path
        self._allowed = _pickle_globals()

    def find_class(self, module, name):
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise _ForbiddenGlobal(
                f"{self._path} refers to the global {module}.{name}, which a CIFAR-10 "
                "file never holds (only dicts, lists, strings, ints and numpy arrays); "
                "refusing to unpickle it."
            ) from None


def _load_pickle(path, encoding):
    with open(path, "rb") as handle:
        try:
            return _CifarUnpickler(handle, path, encoding=encoding).load()
        except (_ForbiddenGlobal, MemoryError):
            raise
        except Exception as err:  # a corrupt pickle raises many types
            raise ValueError(
                f"{path} is not a readable CIFAR-10 python pickle ({type(err).__name__}: "
                f"{err}); expected a complete file of the python release "
                "(empty, truncated or corrupt?)."
            ) from err


def _entry(batch, key, path, expected):
    """``batch[key]`` under a bytes or str key."""
    if isinstance(batch, dict):
        for candidate in (key.encode(), key):
            if candidate in batch:
                return batch[candidate]
    found = sorted(map(repr, batch)) if isinstance(batch, dict) else type(batch).__name__
    raise ValueError(f"{path} lacks the key {key!r} (found {found}); expected {expected}.")


def _integer_array(value, path, key):
    try:
        array = np.asarray(value)
    except (ValueError, TypeError) as err:
        raise ValueError(f"{path}: {key!r} is not an integer array ({err}).") from err
    if array.size == 0:
        array = array.astype(np.int64)
    if array.dtype.kind not in "iu":
        raise ValueError(f"{path}: {key!r} has dtype {array.dtype}, expected integers.")
    return array


def _check_range(array, low, high, path, what, why=""):
    if array.dtype == np.uint8 and (low, high) == (0, 255):
        return
    if array.size and (array.min() < low or array.max() > high):
        bad = np.unique(array[(array < low) | (array > high)])
        raise ValueError(
            f"{path}: {what} {bad[:5].tolist()} outside the expected {low}..{high}{why}."
        )


def _read_cifar_batch(path):
    batch = _load_pickle(path, "bytes")
    expected = "a CIFAR-10 batch with keys b'data' and b'labels'"
    data = _integer_array(_entry(batch, "data", path, expected), path, "data")
    labels = _integer_array(_entry(batch, "labels", path, expected), path, "labels")
    if data.ndim != 2 or data.shape[1] != 3072 or labels.shape != (len(data),):
        raise ValueError(
            f"{path} is not a CIFAR-10 batch: data {data.shape}, labels {labels.shape}; "
            "expected (n, 3072) pixels and n labels."
        )
    _check_range(data, 0, 255, path, "pixel values")  # a cast would wrap them
    _check_range(labels, 0, 9, path, "labels", " (CIFAR-10 has 10 classes)")
    data = data.astype(np.uint8, copy=False)
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels.astype(np.int64)


def _read_cifar_meta(path):
    meta = _load_pickle(path, "latin1")
    names = _entry(meta, "label_names", path, "the CIFAR-10 batches.meta")
    if not (
        isinstance(names, (list, tuple))
        and len(names) == len(CIFAR10_CLASSES)
        and all(isinstance(name, (str, bytes)) for name in names)
    ):
        raise ValueError(
            f"{path}: label_names is {names!r:.200}; expected the "
            f"{len(CIFAR10_CLASSES)} CIFAR-10 class names as strings."
        )
    return [name.decode("latin1") if isinstance(name, bytes) else name for name in names]


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

    The batch files and ``batches.meta`` are pickles, but they are never
    unpickled with arbitrary globals: a restricted unpickler admits only
    dicts, lists, strings, bytes, ints and numpy's array reconstruction, and
    raises :class:`pickle.UnpicklingError` naming the file and the global for
    anything else. Corrupt files, missing keys, labels outside 0..9, pixel
    values outside 0..255 and a ``batches.meta`` without the 10 label names
    are a ``ValueError`` naming the file.
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
        meta = batches_dir / "batches.meta"
        target_names = _read_cifar_meta(meta) if meta.is_file() else CIFAR10_CLASSES
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


_IDX_KINDS = {2049: "labels", 2051: "images"}


def _read_idx(path, magic, ndim):
    expected = f"a gzip IDX {_IDX_KINDS[magic]} file (magic {magic})"
    with open(path, "rb") as raw:
        try:
            data = gzip.GzipFile(fileobj=raw).read()
        except (OSError, EOFError, zlib.error) as err:
            raise ValueError(
                f"{path} is not a readable gzip file ({type(err).__name__}: {err}); "
                f"expected {expected}."
            ) from err
    n_header = 4 * (1 + ndim)
    if len(data) < n_header:
        raise ValueError(
            f"{path} holds {len(data)} bytes, too few for an IDX header; expected {expected}."
        )
    header = np.frombuffer(data, dtype=">i4", count=1 + ndim)
    if int(header[0]) != magic:
        other = _IDX_KINDS.get(int(header[0]))
        hint = f" (an IDX {other} file: were the files swapped?)" if other else ""
        raise ValueError(f"{path} has magic {int(header[0])}{hint}; expected {expected}.")
    shape = tuple(int(d) for d in header[1:])
    n_values = len(data) - n_header
    if min(shape) < 0 or n_values != np.prod(shape, dtype=np.int64):
        raise ValueError(
            f"{path} holds {n_values} bytes after its header for the shape {shape}: "
            f"truncated or corrupt; expected {expected} of that shape."
        )
    return np.frombuffer(data, dtype=np.uint8, offset=n_header).reshape(shape)


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

    Notes
    -----
    A file that is not gzip, is truncated, has the wrong IDX magic (images
    and labels files swapped) or holds labels above 9 is a ``ValueError``
    naming the file.
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
    _check_range(target, 0, 9, label_path, "labels", " (Fashion-MNIST has 10 classes)")
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
