"""Fashion-MNIST: the gzip IDX files of the Debian package or a folder."""

import gzip
import zlib
from pathlib import Path

import numpy as np

from ._common import (
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_ROOT,
    _check_subset,
    _check_range,
    _result,
)


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
