"""The published accuracies of CNNs trained on patches (Madala et al., 2023).

Table 1 (ResNet-18 on CIFAR-10, CIFAR-100 and STL-10, by patch size) and the
ImageNet-1k ResNet-50 figures of Section IV.B, in the layout that
:class:`skpatch.PatchBoundPredictor` reads. pandas is imported only when a
DataFrame is asked for.
"""

import numpy as np
from sklearn.utils import Bunch

__all__ = ["load_patch_size_results"]

# dataset, N, K, H, W, C, stride, [(patch_size, train_accuracy, test_accuracy)]
# Strides are those of the authors' public code (noise_model.py).
_TABLE = (
    ("CIFAR-10", 50_000, 10, 32, 32, 3, 1, (
        (32, 100.0, 93.5), (24, 100.0, 94.6), (16, 100.0, 93.3),
        (8, 98.6, 84.2), (4, 84.8, 66.7),
    )),
    ("CIFAR-100", 50_000, 100, 32, 32, 3, 1, (
        (32, 99.9, 66.8), (24, 99.9, 75.0), (16, 99.9, 70.5),
        (8, 99.6, 56.7), (4, 69.4, 40.2),
    )),
    ("STL-10", 5_000, 10, 96, 96, 3, 5, (
        (96, 100.0, 70.3), (64, 100.0, 81.7), (48, 100.0, 83.0),
        (32, 98.2, 79.2), (16, 78.8, 67.6), (8, 58.6, 52.5), (4, 62.5, 46.3),
    )),
    # ResNet-50, top-1; the paper gives no train accuracies here
    ("ImageNet-1k", 1_200_000, 1000, 224, 224, 3, 4, (
        (224, np.nan, 78.4), (128, np.nan, 74.7), (96, np.nan, 72.4),
        (64, np.nan, 66.5),
    )),
)

# the table's own column names, as in the paper
_FRAME_COLUMNS = ("dataset", "N", "K", "H", "W", "C", "patch_size", "stride",
                  "train_accuracy", "test_accuracy")
# the same settings under PatchBoundPredictor's column names
_FEATURE_NAMES = ("n_train", "n_classes", "height", "width", "channels",
                  "patch_size", "stride")

_DESCR = """\
Patch-size results of Madala, Chandrasekaran and Bunk (2023)
------------------------------------------------------------

Test (and train) accuracies in percent of CNNs trained only on random
``patch_size x patch_size`` crops and evaluated by averaging the logits of
all patches of each test image.

- CIFAR-10, CIFAR-100, STL-10: ResNet-18, Table 1 of the paper (train and
  test accuracy).
- ImageNet-1k: ResNet-50 trained with FFCV on 64, 96 and 128 patches and on
  full 224 x 224 images, Section IV.B (top-1 test accuracy only).

``stride`` is the ``S`` of the bound's effective patch count used by the
authors' public code: 1 for CIFAR, 5 for STL-10, 4 for ImageNet. ``N`` for
ImageNet-1k is the paper's rounded 1.2 million.

``target`` is the test error as a fraction, ``1 - test_accuracy / 100``.

Reference: V. C. Madala, S. Chandrasekaran and J. Bunk, "CNNs Avoid Curse of
Dimensionality by Learning on Patches", IEEE Open Journal of Signal
Processing, 2023.
"""


def _rows():
    for name, n_train, n_classes, height, width, channels, stride, entries in _TABLE:
        for patch_size, train_acc, test_acc in entries:
            yield (name, n_train, n_classes, height, width, channels, patch_size,
                   stride, train_acc, test_acc)


def load_patch_size_results(*, as_frame=False, return_X_y=False):
    """Load the published test errors of CNNs trained on patches.

    Twenty-one settings: Table 1 of Madala et al. (ResNet-18 on CIFAR-10,
    CIFAR-100, STL-10 at several patch sizes) and their ImageNet-1k
    ResNet-50 figures. ``data`` holds the settings under the column names of
    :class:`~skpatch.PatchBoundPredictor`, so it can be fitted directly.

    Parameters
    ----------
    as_frame : bool, default=False
        Return ``data`` as a pandas DataFrame and ``target`` as a Series, and
        add ``frame``, the full table (needs pandas).
    return_X_y : bool, default=False
        Return ``(data, target)`` instead of a Bunch.

    Returns
    -------
    data : :class:`~sklearn.utils.Bunch`
        With ``data`` (n, 7) settings ``(n_train, n_classes, height, width,
        channels, patch_size, stride)``; ``target`` the test error fraction;
        ``dataset`` the data set name of each row; ``train_accuracy`` and
        ``test_accuracy`` in percent (train is NaN for ImageNet-1k);
        ``feature_names``, ``target_names``, ``DESCR``, and ``frame`` (the
        table with columns dataset, N, K, H, W, C, patch_size, stride,
        train_accuracy, test_accuracy) when ``as_frame=True``, else None.
    (data, target) : tuple
        When ``return_X_y=True``.

    See Also
    --------
    skpatch.PatchBoundPredictor : Predicts these errors from the settings.

    References
    ----------
    .. [1] V. C. Madala, S. Chandrasekaran and J. Bunk, "CNNs Avoid Curse of
       Dimensionality by Learning on Patches", IEEE Open Journal of Signal
       Processing, 2023.

    Examples
    --------
    >>> from skpatch.datasets import load_patch_size_results
    >>> X, y = load_patch_size_results(return_X_y=True)
    >>> X.shape, round(float(y[0]), 3)
    ((21, 7), 0.065)
    """
    rows = list(_rows())
    dataset = np.array([row[0] for row in rows])
    settings = np.array([row[1:8] for row in rows], dtype=np.float64)
    train_accuracy = np.array([row[8] for row in rows], dtype=np.float64)
    test_accuracy = np.array([row[9] for row in rows], dtype=np.float64)
    target = 1.0 - test_accuracy / 100.0
    frame = None
    data = settings
    if as_frame:
        import pandas as pd

        data = pd.DataFrame(settings, columns=list(_FEATURE_NAMES))
        target = pd.Series(target, name="test_error")
        frame = pd.DataFrame(rows, columns=list(_FRAME_COLUMNS))
    if return_X_y:
        return data, target
    return Bunch(
        data=data,
        target=target,
        frame=frame,
        dataset=dataset,
        train_accuracy=train_accuracy,
        test_accuracy=test_accuracy,
        feature_names=list(_FEATURE_NAMES),
        target_names=["test_error"],
        DESCR=_DESCR,
    )
