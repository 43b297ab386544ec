"""Plots of class heat maps and patch blackout scores."""

import numpy as np

from ._base import get_axes, import_pyplot

__all__ = ["plot_blackout", "plot_heatmap"]


def plot_heatmap(image, heatmaps, *, class_names=None, cmap=None, axes=None,
                 colorbar=True, style="sequential", percentile=99):
    """Draw an image beside its class heat maps.

    ``style='reference'`` draws each map as the BagNet authors'
    ``plot_heatmap`` does: a diverging colormap (``'RdBu_r'``, red for
    evidence for the class, blue against) with limits symmetric about zero at
    the ``percentile``-th percentile of the map's absolute values, so that a
    few extreme patches do not wash out the rest (values beyond are clipped).

    Parameters
    ----------
    image : array-like of shape (H, W) or (H, W, C)
        The image; uint8 or floats in [0, 1] for RGB. Single-channel images
        are drawn in gray.
    heatmaps : array-like of shape (K, H', W')
        One map per class, e.g. ``class_heatmap(clf, X[i:i + 1])[0]``.
    class_names : list of str, default=None
        Titles of the maps; default ``'class 0'``, ``'class 1'``, ...
    cmap : str, default=None
        Colormap of the heat maps; ``None`` gives ``'viridis'`` for
        ``style='sequential'`` and ``'RdBu_r'`` for ``style='reference'``.
    axes : sequence of K + 1 matplotlib Axes, default=None
        Where to draw; a new one-row figure when ``None``.
    colorbar : bool, default=True
        Add a color bar to each map.
    style : {'sequential', 'reference'}, default='sequential'
        ``'sequential'``: each map spans its own minimum to maximum.
        ``'reference'``: limits ``-v, v`` per map with
        ``v = np.percentile(np.abs(map), percentile)`` (the authors' style;
        their edge overlay of the image is not drawn: the image has its own
        Axes).
    percentile : float in (0, 100], default=99
        Percentile of ``|map|`` giving the limits of ``style='reference'``
        (the authors' default); ignored otherwise.

    Returns
    -------
    fig : matplotlib.figure.Figure
        The figure; its first Axes holds the image, the next ones the maps.

    See Also
    --------
    skpatch.inspection.class_heatmap : Computes the maps.

    Examples
    --------
    >>> import numpy as np
    >>> from skpatch.plotting import plot_heatmap
    >>> fig = plot_heatmap(np.zeros((4, 4)), np.ones((2, 4, 4)))
    >>> len(fig.axes) >= 3
    True
    >>> maps = np.arange(-8.0, 8.0).reshape(1, 4, 4)
    >>> fig = plot_heatmap(np.zeros((4, 4)), maps, style="reference", percentile=50)
    >>> fig.axes[1].images[0].get_clim()
    (-4.0, 4.0)
    """
    if style not in ("sequential", "reference"):
        raise ValueError(f"style must be 'sequential' or 'reference', got {style!r}.")
    if style == "reference" and not (
        np.isscalar(percentile) and np.isreal(percentile) and 0 < percentile <= 100
    ):
        raise ValueError(f"percentile must be a number in (0, 100], got {percentile!r}.")
    if cmap is None:
        cmap = "RdBu_r" if style == "reference" else "viridis"
    image = np.asarray(image)
    heatmaps = np.asarray(heatmaps)
    if image.ndim not in (2, 3):
        raise ValueError(f"image must be (H, W) or (H, W, C), got shape {image.shape}.")
    if heatmaps.ndim != 3:
        raise ValueError(
            f"heatmaps must be (K, H, W), one map per class; got shape {heatmaps.shape}."
        )
    n_maps = heatmaps.shape[0]
    if class_names is None:
        class_names = [f"class {k}" for k in range(n_maps)]
    if len(class_names) != n_maps:
        raise ValueError(
            f"class_names has {len(class_names)} entries for {n_maps} heat maps."
        )
    if axes is None:
        plt = import_pyplot()
        _, axes = plt.subplots(1, n_maps + 1, figsize=(2.6 * (n_maps + 1), 2.6),
                               squeeze=False)
        axes = axes[0]
    if len(axes) != n_maps + 1:
        raise ValueError(f"axes must hold {n_maps + 1} Axes (image + maps), got {len(axes)}.")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[..., 0]
    axes[0].imshow(image, cmap="gray" if image.ndim == 2 else None)
    axes[0].set_title("image")
    for ax, heatmap, name in zip(axes[1:], heatmaps, class_names):
        limits = {}
        if style == "reference":
            bound = float(np.percentile(np.abs(heatmap), percentile))
            limits = {"vmin": -bound, "vmax": bound}
        shown = ax.imshow(heatmap, cmap=cmap, **limits)
        ax.set_title(str(name))
        if colorbar:
            ax.figure.colorbar(shown, ax=ax, fraction=0.046, pad=0.04)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    return axes[0].figure


def plot_blackout(results, *, metric="accuracy", ax=None):
    """Plot blackout scores against the fraction of patches dropped.

    Parameters
    ----------
    results : dict
        The output of :func:`skpatch.inspection.blackout_scores`.
    metric : {'accuracy', 'log_loss'}, default='accuracy'
        Score on the y axis; its standard deviation over draws is drawn as
        error bars.
    ax : matplotlib Axes, default=None
        Where to draw; a new figure when ``None``.

    Returns
    -------
    ax : matplotlib.axes.Axes
        The random blackout is a line with error bars; the alternating
        (checkerboard) blackout is a single marker.

    See Also
    --------
    skpatch.inspection.blackout_scores : Computes the scores.

    Examples
    --------
    >>> import numpy as np
    >>> from skpatch.plotting import plot_blackout
    >>> res = {'mode': np.array(['random', 'random'], dtype=object),
    ...        'fraction': np.array([0., .5]), 'accuracy': np.array([.9, .8]),
    ...        'accuracy_std': np.zeros(2), 'log_loss': np.ones(2),
    ...        'log_loss_std': np.zeros(2)}
    >>> plot_blackout(res).get_ylabel()
    'accuracy'
    """
    if metric not in ("accuracy", "log_loss"):
        raise ValueError(f"metric must be 'accuracy' or 'log_loss', got {metric!r}.")
    ax = get_axes(ax)
    mode = np.asarray(results["mode"])
    fraction = np.asarray(results["fraction"], dtype=float)
    value = np.asarray(results[metric], dtype=float)
    spread = np.asarray(results[f"{metric}_std"], dtype=float)
    random = mode == "random"
    if random.any():
        order = np.argsort(fraction[random])
        ax.errorbar(fraction[random][order], value[random][order],
                    yerr=spread[random][order], marker="o", capsize=3,
                    label="random blackout")
    alternate = mode == "alternate"
    if alternate.any():
        ax.plot(fraction[alternate], value[alternate], "s", markersize=8,
                label="alternating blackout")
    ax.set_xlabel("fraction of patches blacked out")
    ax.set_ylabel(metric)
    ax.legend()
    return ax
