"""The patch grid in one place: its arithmetic, its "patch larger than the image" check,
the padding rule and the zero-copy patch views every module extracts through."""

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from ._validation import _check_pair

__all__ = ["patch_grid_shape"]


def patch_grid_shape(image_hw, patch_size, stride=(1, 1), pads=((0, 0), (0, 0))):
    """Number of patch positions ``(gh, gw)``; raise if a patch does not fit.

    Parameters
    ----------
    image_hw : tuple (H, W)
    patch_size : tuple (ph, pw)
    stride : tuple (sh, sw), default=(1, 1)
    pads : tuple ((top, bottom), (left, right)), default no padding

    Returns
    -------
    grid : tuple (gh, gw)
        ``(H + top + bottom - ph) // sh + 1`` and the same across.

    Raises
    ------
    ValueError
        A patch larger than the (padded) image, naming ``patch_size``.

    Examples
    --------
    >>> from skpatch.utils._grid import patch_grid_shape
    >>> patch_grid_shape((32, 32), (8, 8), (4, 4))
    (7, 7)
    >>> patch_grid_shape((5, 5), (3, 3), (1, 1), ((1, 1), (1, 1)))
    (5, 5)
    """
    grid = []
    for size, p, s, (before, after), axis in zip(
        image_hw, patch_size, stride, pads, ("height", "width")
    ):
        padded = size + before + after
        if p > padded:
            raise ValueError(
                f"patch_size {tuple(patch_size)} is larger than the images: patch "
                f"{axis} {p} > image {axis} {size}"
                + (f" + padding {before + after}" if before + after else "")
                + "."
            )
        grid.append((padded - p) // s + 1)
    return tuple(grid)


def _resolve_padding(padding, patch_size):
    """Return ``((top, bottom), (left, right))`` zero padding."""
    if isinstance(padding, str):
        if padding != "same":
            raise ValueError(f"padding must be an int, (h, w) or 'same', got {padding!r}.")
        # one patch per pixel; the patch at grid (i, j) is centred on pixel (i, j)
        # (for an even size, the centre is the upper-left of the four middle pixels)
        return tuple(((p - 1) // 2, p - 1 - (p - 1) // 2) for p in patch_size)
    pad_h, pad_w = _check_pair(padding, "padding", minimum=0)
    return ((pad_h, pad_h), (pad_w, pad_w))


def _pad(images, pads):
    if not any(before or after for before, after in pads):
        return images
    return np.pad(images, ((0, 0), pads[0], pads[1], (0, 0)))


def _extract_view(images, patch_size, stride, pads):
    """Patch grid ``(n, gh, gw, ph, pw, C)`` of 4-D images; a view if unpadded."""
    padded = _pad(images, pads)
    windows = sliding_window_view(padded, patch_size, axis=(1, 2))
    # windows: (n, H - ph + 1, W - pw + 1, C, ph, pw) -> channels last per patch
    windows = windows[:, :: stride[0], :: stride[1]]
    return windows.transpose(0, 1, 2, 4, 5, 3)


def _gather_patches(images, patch_size, stride, chosen):
    """Patches at the flat grid positions ``chosen`` (image-major), in ``images``' dtype."""
    grid = patch_grid_shape(images.shape[1:3], patch_size, stride)
    view = _extract_view(images, patch_size, stride, ((0, 0), (0, 0)))
    image, rest = np.divmod(chosen, grid[0] * grid[1])
    row, col = np.divmod(rest, grid[1])
    return view[image, row, col]
