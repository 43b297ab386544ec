"""Offline dataset loaders: nothing is ever downloaded.

Every loader reads local files the user points to (or files installed by a
package) and returns a :class:`~sklearn.utils.Bunch` with ``images`` (uint8,
``(n, H, W)`` or ``(n, H, W, C)``), ``target``, ``target_names`` and
``DESCR``, or ``(images, target)`` with ``return_X_y=True``.
"""

from ..bounds._published import load_patch_size_results
from ._cifar import load_cifar10
from ._common import CIFAR10_CLASSES, FASHION_MNIST_CLASSES, FASHION_MNIST_ROOT  # noqa: F401
from ._digits import load_digits_images
from ._fashion_mnist import load_fashion_mnist
from ._image_folder import load_image_folder

__all__ = [
    "load_cifar10",
    "load_digits_images",
    "load_fashion_mnist",
    "load_image_folder",
    "load_patch_size_results",
]
