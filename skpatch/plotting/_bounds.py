"""Plots of the patch generalization bound: Figures 2 and 3 of Madala et al."""

import numpy as np

from ._base import import_pyplot

__all__ = ["plot_bound_curves", "plot_bound_vs_observed"]

# Figure 2: the parameter each panel varies around the ImageNet base setting
_DEFAULT_VARY = {
    "n_classes": (10, 100, 1000, 10_000),
    "stride": (1, 2, 4, 8),
    "image_size": (128, 256, 512),
    "n_train": (50_000, 1_200_000, 14_000_000),
}
_LABELS = {
    "n_classes": "K",
    "stride": "S",
    "image_size": "H = W",
    "n_train": "N",
    "n_channels": "C",
}


def _panel_axes(axes, n_panels, ncols):
    """Return a flat array of ``n_panels`` Axes, new ones when ``axes`` is None."""
    if axes is not None:
        axes = np.ravel(np.asarray(axes, dtype=object))
        if axes.size < n_panels:
            raise ValueError(
                f"axes must hold at least {n_panels} Axes, got {axes.size}."
            )
        return axes[:n_panels]
    plt = import_pyplot()
    nrows = -(-n_panels // ncols)
    _, grid = plt.subplots(nrows, ncols, figsize=(4.5 * ncols, 3.5 * nrows),
                           squeeze=False, layout="constrained")
    for extra in grid.ravel()[n_panels:]:
        extra.set_visible(False)
    return grid.ravel()[:n_panels]


def plot_bound_curves(
    *,
    n_train=1_200_000,
    n_classes=1000,
    image_size=256,
    stride=4,
    n_channels=3,
    vary=None,
    alpha=3.0,
    c4=0.5,
    c6=1.0,
    min_over_smaller=False,
    min_patch_size=3,
    formula="paper",
    axes=None,
):
    """Plot the bound against patch size while varying one setting per panel.

    Figure 2 of Madala et al.: around a base setting (by default their
    ImageNet base, 256 x 256 images, K=1000, N=1.2M, S=4) each panel varies
    one of ``n_classes``, ``stride``, ``image_size`` and ``n_train`` and
    draws eq. (13) for square patches from ``min_patch_size`` up to the image
    size.

    Parameters
    ----------
    n_train, n_classes, image_size, stride, n_channels : number
        The base setting (square images and strides).
    vary : dict of str to sequence, default=None
        Setting name -> values, one panel per entry. ``None`` varies
        ``n_classes`` over (10, 100, 1000, 10000), ``stride`` over
        (1, 2, 4, 8), ``image_size`` over (128, 256, 512) and ``n_train``
        over (50k, 1.2M, 14M).
    alpha, c4, c6 : float, default=3.0, 0.5, 1.0
        Constants of the bound.
    min_over_smaller : bool, default=False
        Plot the minimum over smaller patches (Figure 3's rule) instead of
        eq. (13) itself, as in Figure 2.
    min_patch_size : int, default=3
        Smallest patch side drawn.
    formula : {'paper', 'code'}, default='paper'
        See :func:`skpatch.generalization_bound`.
    axes : array-like of matplotlib Axes, default=None
        One Axes per panel; new figure with a 2-column grid when None.

    Returns
    -------
    axes : ndarray of matplotlib Axes
        One per entry of ``vary``, each with one line per value.

    See Also
    --------
    skpatch.generalization_bound : The bound drawn here.
    plot_bound_vs_observed : Figure 3, the bound against observed errors.

    Examples
    --------
    >>> from skpatch.plotting import plot_bound_curves
    >>> axes = plot_bound_curves(vary={"n_classes": [10, 1000]})
    >>> len(axes[0].lines)
    2
    """
    from ..bounds import generalization_bound

    vary = dict(_DEFAULT_VARY if vary is None else vary)
    base = {"n_train": n_train, "n_classes": n_classes, "image_size": image_size,
            "stride": stride, "n_channels": n_channels}
    unknown = sorted(set(vary) - set(base))
    if unknown:
        raise ValueError(f"vary keys must be among {sorted(base)}, got {unknown}.")
    axes = _panel_axes(axes, len(vary), ncols=2)
    for ax, (name, values) in zip(axes, vary.items()):
        for value in values:
            setting = dict(base, **{name: value})
            patch_sizes = np.arange(min_patch_size, int(setting["image_size"]) + 1)
            bound = generalization_bound(
                setting["n_train"], setting["n_classes"], setting["image_size"],
                patch_sizes, n_channels=setting["n_channels"],
                stride=setting["stride"], alpha=alpha, c4=c4, c6=c6,
                min_over_smaller=min_over_smaller, min_patch_size=min_patch_size,
                formula=formula,
            )
            ax.plot(patch_sizes, bound, label=f"{_LABELS[name]} = {value:,}")
        ax.set_xlabel("patch size T")
        ax.set_ylabel("bound (13)")
        ax.set_title(f"varying {_LABELS[name]}")
        ax.legend(fontsize="small")
    return axes


def _dense_rows(setting, min_patch_size):
    """Settings at every square patch size from ``min_patch_size`` to the image."""
    n_train, n_classes, height, width, channels, _, stride = setting
    sizes = np.arange(min_patch_size, int(min(height, width)) + 1, dtype=np.float64)
    rows = np.tile(setting, (sizes.size, 1))
    rows[:, 5] = sizes
    return rows


def _predict(predictor, rows):
    """Predict with the columns (and names) the predictor was fitted on."""
    rows = rows[:, : predictor.n_features_in_]
    if hasattr(predictor, "feature_names_in_"):
        import pandas as pd

        rows = pd.DataFrame(rows, columns=list(predictor.feature_names_in_))
    return predictor.predict(rows)


def plot_bound_vs_observed(results=None, *, predictors=None, axes=None):
    """Plot predicted against observed error by patch size, one panel per data set.

    Figure 3 of Madala et al.: the published test errors of CNNs trained on
    patches (markers) and the bound with the minimum over smaller patches
    (lines, drawn at every patch size).

    Parameters
    ----------
    results : Bunch, default=None
        As returned by :func:`skpatch.datasets.load_patch_size_results` (the
        default); needs ``data`` with 7 columns, ``target`` and ``dataset``.
    predictors : PatchBoundPredictor or dict of str to PatchBoundPredictor, default=None
        Fitted predictors to draw, labelled by the dict keys. ``None`` draws
        the paper's constants (alpha=3, c4=0.5, c6=1).
    axes : array-like of matplotlib Axes, default=None
        One Axes per data set; new figure with a 2-column grid when None.

    Returns
    -------
    axes : ndarray of matplotlib Axes
        One per data set, in the order of first appearance in ``results``.

    See Also
    --------
    plot_bound_curves : Figure 2, the bound while varying settings.
    skpatch.PatchBoundPredictor : The predictor drawn here.

    Examples
    --------
    >>> from skpatch.plotting import plot_bound_vs_observed
    >>> axes = plot_bound_vs_observed()
    >>> [ax.get_title() for ax in axes]
    ['CIFAR-10', 'CIFAR-100', 'STL-10', 'ImageNet-1k']
    """
    from ..bounds import PatchBoundPredictor

    if results is None:
        from ..bounds._published import load_patch_size_results

        results = load_patch_size_results()
    data = np.asarray(results.data, dtype=np.float64)
    target = np.asarray(results.target, dtype=np.float64)
    dataset = np.asarray(results.dataset)
    if data.ndim != 2 or data.shape[1] != 7:
        raise ValueError(
            f"results.data must have 7 columns (n_train, n_classes, height, width, "
            f"channels, patch_size, stride), got shape {data.shape}."
        )
    if predictors is None:
        predictors = {"paper constants": PatchBoundPredictor(calibrate=()).fit(data)}
    elif not isinstance(predictors, dict):
        predictors = {"bound": predictors}
    names = list(dict.fromkeys(dataset.tolist()))
    axes = _panel_axes(axes, len(names), ncols=2)
    for ax, name in zip(axes, names):
        rows = data[dataset == name]
        order = np.argsort(rows[:, 5])
        ax.plot(rows[order, 5], target[dataset == name][order], "ko-",
                label="observed")
        for label, predictor in predictors.items():
            dense = _dense_rows(rows[0], predictor.min_patch_size)
            ax.plot(dense[:, 5], _predict(predictor, dense), label=label)
        ax.set_title(name)
        ax.set_xlabel("patch size T")
        ax.set_ylabel("test error")
        ax.legend(fontsize="small")
    return axes
