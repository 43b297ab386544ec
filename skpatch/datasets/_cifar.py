"""CIFAR-10: the python batches (restricted unpickling) or an image-folder archive."""

import pickle
from pathlib import Path

import numpy as np

from ._common import CIFAR10_CLASSES, _check_range, _check_subset, _result
from ._image_folder import load_image_folder

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
