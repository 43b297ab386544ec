"""The patch-grid arithmetic, and its "patch larger than the image" check, in one place."""

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
