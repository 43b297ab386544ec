"""Plot of the patch covering check: nearest-atom distance against dictionary size."""

import numpy as np

from ._base import get_axes

__all__ = ["plot_patch_covering"]

_REQUIRED = ("n_atoms", "quantiles", "real_quantiles", "gaussian_quantiles")


def plot_patch_covering(result, *, band=True, label=None, ax=None):
    """Draw the held-out nearest-atom distance against dictionary size, real and Gaussian.

    One line per kind of patch (real, then Gaussian of the same covariance)
    at the median of the relative distance, over a log-scaled x axis of
    dictionary sizes; with ``band`` a shaded band between the lowest and
    the highest quantile of ``result.quantiles``.

    Parameters
    ----------
    result : Bunch
        As returned by :func:`skpatch.diagnostics.patch_covering`; needs
        ``n_atoms``, ``quantiles`` (holding 0.5), ``real_quantiles`` and
        ``gaussian_quantiles``.
    band : bool, default=True
        Shade the outer quantile band of each line.
    label : str, default=None
        Prefix of the legend entries (``'<label>: real'``), to tell several
        results drawn on one Axes apart.
    ax : matplotlib Axes, default=None
        Where to draw; a new figure when ``None``.

    Returns
    -------
    ax : matplotlib.axes.Axes
        ``ax.lines[0]`` is the real patches' median, ``ax.lines[1]`` the
        Gaussian's; ``ax.collections`` holds their bands in the same order.

    See Also
    --------
    skpatch.diagnostics.patch_covering : Computes what is drawn.

    Examples
    --------
    >>> import numpy as np
    >>> from skpatch.diagnostics import patch_covering
    >>> from skpatch.plotting import plot_patch_covering
    >>> images = np.random.default_rng(0).random((20, 6, 6))
    >>> result = patch_covering(images, patch_size=3, n_atoms=(2, 8), random_state=0)
    >>> ax = plot_patch_covering(result)
    >>> [line.get_label() for line in ax.lines]
    ['real patches', 'Gaussian, same covariance']
    """
    missing = [key for key in _REQUIRED if key not in result]
    if missing:
        raise ValueError(
            f"result lacks {missing}; pass what skpatch.diagnostics.patch_covering returns."
        )
    sizes = np.asarray(result["n_atoms"])
    levels = np.asarray(result["quantiles"], dtype=np.float64)
    middle = np.flatnonzero(np.isclose(levels, 0.5))
    if middle.size == 0:
        raise ValueError(
            f"result.quantiles={levels.tolist()} lacks 0.5: the lines are the medians; "
            "call patch_covering with a quantiles sequence that holds 0.5."
        )
    low, high = int(np.argmin(levels)), int(np.argmax(levels))
    order = np.argsort(sizes, kind="stable")
    ax = get_axes(ax)
    prefix = "" if label is None else f"{label}: "
    for key, name in (("real_quantiles", "real patches"),
                      ("gaussian_quantiles", "Gaussian, same covariance")):
        values = np.asarray(result[key], dtype=np.float64)[order]
        (line,) = ax.plot(sizes[order], values[:, middle[0]], marker="o",
                          label=prefix + name)
        if band:
            ax.fill_between(sizes[order], values[:, low], values[:, high],
                            color=line.get_color(), alpha=0.2, linewidth=0)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("dictionary size (atoms)")
    ax.set_ylabel("distance to nearest atom / RMS norm")
    ax.legend(fontsize="small")
    return ax
