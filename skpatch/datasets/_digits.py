"""scikit-learn's bundled digits as uint8 images."""

import numpy as np

from ._common import _result


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
