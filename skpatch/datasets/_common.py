"""Names and helpers shared by the dataset loaders."""

import numpy as np
from sklearn.utils import Bunch


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

def _check_range(array, low, high, path, what, why=""):
    if array.dtype == np.uint8 and (low, high) == (0, 255):
        return
    if array.size and (array.min() < low or array.max() > high):
        bad = np.unique(array[(array < low) | (array > high)])
        raise ValueError(
            f"{path}: {what} {bad[:5].tolist()} outside the expected {low}..{high}{why}."
        )
