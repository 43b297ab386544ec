"""Plots of ReLU path diagnostics (Figures 1-7 of "Image functions in neural networks")."""

import warnings

import numpy as np

from ._base import get_axes

__all__ = [
    "plot_neighbour_ranks",
    "plot_overlap_vs_distance",
    "plot_ratio_vs_error",
    "plot_similarity_over_epochs",
]


def _layer_arrays(values, name, ndim):
    """``values`` as a dict of float arrays of ``ndim`` dimensions (an array is one unnamed layer)."""
    if not isinstance(values, dict):
        values = {"": values}
    if not values:
        raise ValueError(f"{name} is empty: pass a dict with at least one layer.")
    arrays = {}
    for layer, array in values.items():
        array = np.asarray(array, dtype=np.float64)
        if array.ndim != ndim:
            raise ValueError(
                f"{name}[{layer!r}] must be {ndim}-D, got shape {array.shape}."
            )
        if array.size == 0:
            raise ValueError(f"{name}[{layer!r}] is empty.")
        arrays[layer] = array
    return arrays


def _check_epochs(epochs, n_rows, name="epochs"):
    if epochs is None:
        return np.arange(1, n_rows + 1)
    epochs = np.asarray(epochs)
    if epochs.shape != (n_rows,):
        raise ValueError(f"{name} must hold {n_rows} values (one per row), got shape {epochs.shape}.")
    return epochs


def plot_similarity_over_epochs(similarity, *, quantiles=(0.1, 0.5, 0.9), epochs=None,
                                ax=None):
    """Draw the distribution of a similarity over epochs: one quantile band per layer.

    For each layer the middle quantile is a line and the outer two bound a
    shaded band, computed per epoch with :func:`numpy.nanquantile`, so the
    NaN of undefined cosines (all-zero vectors) are left out.

    Parameters
    ----------
    similarity : dict of str to array-like of shape (n_epochs, m), or array-like
        Per-epoch values by layer, as ``PathMonitor.self_similarity_`` or
        ``cross_similarity_`` give them (row ``e`` compares epoch ``e + 1``
        with epoch ``e``). A single array is drawn as one unnamed layer.
    quantiles : tuple of 3 floats, default=(0.1, 0.5, 0.9)
        Lower band edge, line, upper band edge; increasing, in [0, 1].
    epochs : array-like of shape (n_epochs,), default=None
        x values of the rows; default ``1, 2, ..., n_epochs``.
    ax : matplotlib Axes, default=None
        Where to draw; a new figure when ``None``.

    Returns
    -------
    ax : matplotlib.axes.Axes
        The Axes; ``ax.lines[k]`` is the middle quantile of the k-th layer.

    See Also
    --------
    skpatch.diagnostics.PathMonitor : Records the similarities during training.
    skpatch.diagnostics.cross_path_similarity : One epoch pair's values.

    Examples
    --------
    >>> import numpy as np
    >>> from skpatch.plotting import plot_similarity_over_epochs
    >>> ax = plot_similarity_over_epochs({"relu": np.random.rand(4, 10)})
    >>> len(ax.lines)
    1
    """
    arrays = _layer_arrays(similarity, "similarity", 2)
    quantiles = np.asarray(quantiles, dtype=np.float64)
    if (quantiles.shape != (3,) or np.any(np.isnan(quantiles)) or np.any(quantiles < 0)
            or np.any(quantiles > 1) or np.any(np.diff(quantiles) < 0)):
        raise ValueError(
            "quantiles must be 3 increasing values in [0, 1] (band edge, line, band "
            f"edge), got {quantiles.tolist()}."
        )
    ax = get_axes(ax, figsize=(6, 3.5))
    for layer, values in arrays.items():
        x = _check_epochs(epochs, values.shape[0])
        with warnings.catch_warnings():
            # an epoch of all-NaN values is drawn as a gap
            warnings.simplefilter("ignore", RuntimeWarning)
            low, mid, high = np.nanquantile(values, quantiles, axis=1)
        label = f"{layer} (q{quantiles[1]:g})" if layer else f"q{quantiles[1]:g}"
        (line,) = ax.plot(x, mid, marker="o", markersize=3, label=label)
        ax.fill_between(x, low, high, color=line.get_color(), alpha=0.25, linewidth=0)
    ax.set_xlabel("epoch")
    ax.set_ylabel("similarity")
    ax.set_title(f"quantiles {quantiles[0]:g} / {quantiles[1]:g} / {quantiles[2]:g} per epoch")
    if any(arrays):
        ax.legend(fontsize="small")
    return ax


def plot_overlap_vs_distance(overlap, distance, *, ax=None):
    """Scatter the path overlap of image pairs against their input distance (Fig. 4).

    Parameters
    ----------
    overlap : dict of str to array-like of shape (m,), or array-like of shape (m,)
        Shared on-units of each pair, e.g. ``path_overlap(paths)`` or one
        epoch of ``PathMonitor.overlap_`` (``{k: v[-1] for k, v in
        monitor.overlap_.items()}``). One scatter per layer.
    distance : array-like of shape (m,)
        Input distance of the same pairs in the same order; for all pairs
        ``i < j``, ``scipy.spatial.distance.pdist(X.reshape(n, -1))``.
    ax : matplotlib Axes, default=None
        Where to draw; a new figure when ``None``.

    Returns
    -------
    ax : matplotlib.axes.Axes
        The Axes; ``ax.collections[k]`` holds the k-th layer's points.

    Examples
    --------
    >>> import numpy as np
    >>> from skpatch.plotting import plot_overlap_vs_distance
    >>> ax = plot_overlap_vs_distance(np.array([3, 1, 2]), np.array([0.5, 2.0, 1.0]))
    >>> ax.collections[0].get_offsets().shape
    (3, 2)
    """
    arrays = _layer_arrays(overlap, "overlap", 1)
    distance = np.asarray(distance, dtype=np.float64)
    if distance.ndim != 1:
        raise ValueError(f"distance must be 1-D (one value per pair), got shape {distance.shape}.")
    for layer, values in arrays.items():
        if values.shape != distance.shape:
            raise ValueError(
                f"overlap[{layer!r}] has {values.shape[0]} pairs but distance has "
                f"{distance.shape[0]}; they must describe the same pairs."
            )
    ax = get_axes(ax, figsize=(5, 3.5))
    for layer, values in arrays.items():
        ax.scatter(distance, values, s=6, alpha=0.5, label=layer or None)
    ax.set_xlabel(r"input distance $\|x_i - x_j\|_2$")
    ax.set_ylabel(r"path overlap $p_i \cdot p_j$")
    if any(arrays):
        ax.legend(fontsize="small", markerscale=2)
    return ax


def plot_neighbour_ranks(ranks, *, query=0, n_neighbours=6, epochs=None, ax=None):
    """Draw, over epochs, the rank of a query's nearest probe images by path overlap (Fig. 6).

    One line per probe image that is among the ``n_neighbours`` nearest of
    the query at some epoch; the y axis shows ranks 0 (nearest, on top) to
    ``n_neighbours - 1``, so an image leaving the nearest set leaves the plot.

    Parameters
    ----------
    ranks : array-like of int of shape (n_epochs, n_queries, n)
        One layer of ``PathMonitor.neighbour_ranks_`` (or a stack of
        :func:`skpatch.diagnostics.neighbour_ranks` results); the query
        itself has rank -1 and is not drawn.
    query : int, default=0
        Which query (index into the second axis).
    n_neighbours : int, default=6
        How many nearest images count as neighbours.
    epochs : array-like of shape (n_epochs,), default=None
        x values; default ``1, ..., n_epochs``.
    ax : matplotlib Axes, default=None
        Where to draw; a new figure when ``None``.

    Returns
    -------
    ax : matplotlib.axes.Axes
        The Axes; each line is labelled ``'image j'``.

    Examples
    --------
    >>> import numpy as np
    >>> from skpatch.plotting import plot_neighbour_ranks
    >>> ranks = np.array([[[-1, 0, 1]], [[-1, 1, 0]]])
    >>> [line.get_label() for line in plot_neighbour_ranks(ranks).lines]
    ['image 1', 'image 2']
    """
    if isinstance(ranks, dict):
        raise TypeError("ranks must be one layer's array, e.g. monitor.neighbour_ranks_[layer].")
    ranks = np.asarray(ranks)
    if ranks.ndim != 3 or ranks.size == 0:
        raise ValueError(
            f"ranks must be a non-empty (n_epochs, n_queries, n) array, got shape {ranks.shape}."
        )
    if not np.issubdtype(ranks.dtype, np.integer):
        raise ValueError(f"ranks must hold integers, got dtype {ranks.dtype}.")
    if isinstance(query, bool) or not isinstance(query, (int, np.integer)) or not (
            -ranks.shape[1] <= query < ranks.shape[1]):
        raise ValueError(f"query must be an int in [0, {ranks.shape[1]}), got {query!r}.")
    if isinstance(n_neighbours, bool) or not isinstance(n_neighbours, (int, np.integer)) \
            or n_neighbours < 1:
        raise ValueError(f"n_neighbours must be a positive int, got {n_neighbours!r}.")
    x = _check_epochs(epochs, ranks.shape[0])
    ranks = ranks[:, query, :]
    shown = np.flatnonzero(np.any((ranks >= 0) & (ranks < n_neighbours), axis=0))
    ax = get_axes(ax, figsize=(6, 3.5))
    for j in shown:
        ax.plot(x, ranks[:, j], marker="o", markersize=3, label=f"image {j}")
    ax.set_ylim(n_neighbours - 0.5, -0.5)
    ax.set_xlabel("epoch")
    ax.set_ylabel("rank by path overlap")
    ax.set_title(f"nearest {n_neighbours} of query {query}")
    if len(shown):
        ax.legend(fontsize="small", ncol=2)
    return ax


def plot_ratio_vs_error(ratios, errors, *, labels=None, ax=None):
    """Scatter the early/mid cross path similarity ratio of models against their error (Fig. 7).

    Draws the points, their least-squares line and the Pearson correlation
    (:func:`scipy.stats.pearsonr` on the models whose both values are
    finite) in the legend.

    Parameters
    ----------
    ratios : array-like of shape (n_models,)
        :func:`skpatch.diagnostics.early_mid_ratio` of each model.
    errors : array-like of shape (n_models,)
        Generalization (test) error of each model.
    labels : list of str, default=None
        Names written next to the points.
    ax : matplotlib Axes, default=None
        Where to draw; a new figure when ``None``.

    Returns
    -------
    ax : matplotlib.axes.Axes
        The Axes; ``ax.collections[0]`` holds the points and the legend
        text reads ``'Pearson r = <r>'`` (3 decimals; ``nan`` with fewer
        than 2 finite models or constant values).

    Examples
    --------
    >>> from skpatch.plotting import plot_ratio_vs_error
    >>> ax = plot_ratio_vs_error([1.0, 1.1, 1.3], [0.3, 0.25, 0.2])
    >>> ax.get_legend().get_texts()[0].get_text()
    'Pearson r = -0.982'
    """
    ratios = np.asarray(ratios, dtype=np.float64)
    errors = np.asarray(errors, dtype=np.float64)
    if ratios.ndim != 1 or ratios.size == 0:
        raise ValueError(f"ratios must be a non-empty 1-D array, got shape {ratios.shape}.")
    if errors.shape != ratios.shape:
        raise ValueError(
            f"errors must have one value per model ({ratios.shape[0]}), got shape {errors.shape}."
        )
    if labels is not None and len(labels) != ratios.shape[0]:
        raise ValueError(f"labels has {len(labels)} entries for {ratios.shape[0]} models.")
    r = _pearson_r(ratios, errors)
    ax = get_axes(ax, figsize=(5, 3.5))
    ax.scatter(ratios, errors, label=f"Pearson r = {r:.3f}")
    finite = np.isfinite(ratios) & np.isfinite(errors)
    if np.isfinite(r):
        slope, intercept = np.polyfit(ratios[finite], errors[finite], 1)
        x = np.array([ratios[finite].min(), ratios[finite].max()])
        ax.plot(x, slope * x + intercept, color="gray", linestyle="--", linewidth=1)
    if labels is not None:
        for x, y, text in zip(ratios, errors, labels):
            if np.isfinite(x) and np.isfinite(y):
                ax.annotate(str(text), (x, y), fontsize="x-small", xytext=(3, 3),
                            textcoords="offset points")
    ax.set_xlabel("early / mid cross path similarity")
    ax.set_ylabel("test error")
    ax.legend(fontsize="small")
    return ax


def _pearson_r(x, y):
    """Pearson r of the finite pairs; NaN when it is undefined."""
    finite = np.isfinite(x) & np.isfinite(y)
    x, y = x[finite], y[finite]
    if x.size < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    from scipy.stats import pearsonr

    return float(pearsonr(x, y)[0])
