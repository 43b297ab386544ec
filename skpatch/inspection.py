"""Class heat maps and patch blackout, for any estimator with ``patch_logits``.

Both functions work on the patch logits ``(n, K, gh, gw)`` that
:class:`~skpatch.PatchCNNClassifier` and the BagNet classifier expose, so
they apply to any estimator that implements ``patch_logits(X, *, stride,
padding)`` and has ``classes_``.
"""

from numbers import Integral, Real

import numpy as np
from scipy.special import softmax
from sklearn.metrics import log_loss
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, StrOptions, validate_params
from sklearn.utils.validation import check_consistent_length, check_is_fitted, column_or_1d

from .classifiers._base import BasePatchNetClassifier
from .utils._grid import _resolve_padding
from .utils._validation import validate_images

__all__ = ["blackout_scores", "class_heatmap"]


def _check_patch_estimator(estimator):
    if not callable(getattr(estimator, "patch_logits", None)):
        raise TypeError(
            "estimator must implement patch_logits(X, *, stride, padding) such as "
            f"PatchCNNClassifier; got {type(estimator).__name__}."
        )
    check_is_fitted(estimator)


@validate_params(
    {
        "estimator": [object],
        "X": ["array-like"],
        "classes": ["array-like", None],
        "padding": [Interval(Integral, 0, None, closed="left"), tuple, str],
        "pad_value": [StrOptions({"mean"}), Real],
    },
    prefer_skip_nested_validation=True,
)
def class_heatmap(estimator, X, *, classes=None, padding="same", pad_value="mean"):
    """Per-pixel class evidence: each patch's logit placed at the patch's position.

    Parameters
    ----------
    estimator : fitted estimator with ``patch_logits`` and ``classes_``
        For example a fitted :class:`~skpatch.PatchCNNClassifier` or
        :class:`~skpatch.BagNetClassifier`.
    X : array-like of shape (n, H, W), (n, H, W, C) or (n, H*W*C)
        Images of the shape the estimator was fitted on (any size of at
        least the patch size for :meth:`BagNetClassifier.from_weights`).
    classes : array-like of labels, default=None
        Classes whose maps are returned, in this order, given as labels of
        ``estimator.classes_`` (strings for string labels, integers for
        integer ones); ``None`` gives all of ``estimator.classes_``.
    padding : 'same', int or tuple (pad_h, pad_w), default='same'
        ``'same'`` pads the images so that there is one patch centred on
        every pixel (the figures of Madala et al. and of the BagNet authors);
        ``0`` gives the unpadded grid.
    pad_value : 'mean' or float, default='mean'
        What the border holds. ``'mean'``: per channel, the pixel value the
        estimator's input normalization maps to zero, so the padding is zero
        in the normalized image the network sees, as in the BagNet authors'
        ``generate_heatmap_pytorch``: the ImageNet mean colour for a
        :class:`~skpatch.BagNetClassifier` with ImageNet weights (``weights``
        or :meth:`~skpatch.BagNetClassifier.from_weights`), the training
        images' channel mean (``channel_mean_``) for a BagNet trained from
        scratch and for :class:`~skpatch.PatchCNNClassifier`. A float pads
        the raw images with that value; ``0.0`` is a black border (the
        former default, and the padding of ``patch_logits(padding=...)``).

    Returns
    -------
    heatmaps : ndarray of shape (n, n_selected_classes, H, W), float32
        With ``padding='same'``, ``heatmaps[i, k, r, c]`` is the logit for the
        ``k``-th selected class of the stride-1 patch centred on pixel
        ``(r, c)`` (for an even patch size, the centre is the upper-left of
        the four middle pixels). Other paddings give the ``(gh, gw)`` grid.

    Raises
    ------
    ValueError
        If a label of ``classes`` is not among ``estimator.classes_``, or a
        float ``pad_value`` is given for an estimator that is not an skpatch
        classifier (it pads in its own ``patch_logits``).

    See Also
    --------
    skpatch.plotting.plot_heatmap : Draw an image beside its class maps.

    Notes
    -----
    The border matters: with ``padding='same'`` every pixel within ``q // 2``
    of the edge gets a patch that reaches into the padding, 26% of a 224x224
    map for BagNet-33. The padded images are built on the host, one copy of
    ``X`` with its border. For an estimator that is not an skpatch
    classifier, ``padding`` is passed to its ``patch_logits`` and it pads as
    it does. With ``estimator.verbose >= 2`` the skpatch classifiers show a
    progress bar on stderr over the image chunks (tqdm, as skorch's
    ``ProgressBar``).

    References
    ----------
    V. C. Madala, S. Chandrasekaran and J. Bunk, "CNNs Avoid Curse of
    Dimensionality by Learning on Patches", Figures 1, 4 and 5.
    W. Brendel and M. Bethge, "Approximating CNNs with Bag-of-local-Features
    models works surprisingly well on ImageNet", ICLR 2019; their
    ``bagnets/utils.py`` (``generate_heatmap_pytorch``).

    Examples
    --------
    >>> import numpy as np
    >>> from skpatch import PatchCNNClassifier, class_heatmap
    >>> X = np.random.default_rng(0).random((8, 6, 6)).astype(np.float32)
    >>> y = np.repeat(['cat', 'dog'], 4)
    >>> clf = PatchCNNClassifier(3, module='resnet10', width=4, max_epochs=1,
    ...                          device='cpu', verbose=0, random_state=0)
    >>> class_heatmap(clf.fit(X, y), X[:2], classes=['dog']).shape
    (2, 1, 6, 6)
    """
    _check_patch_estimator(estimator)
    index = None if classes is None else _class_index(classes, estimator.classes_)
    if not (
        isinstance(estimator, BasePatchNetClassifier)
        and type(estimator).patch_logits is BasePatchNetClassifier.patch_logits
    ):
        if not (isinstance(pad_value, str) and pad_value == "mean"):
            raise ValueError(
                f"pad_value={pad_value!r} needs an skpatch classifier; "
                f"{type(estimator).__name__} pads in its own patch_logits(X, padding=...): "
                "leave pad_value='mean'."
            )
        maps = estimator.patch_logits(X, stride=1, padding=padding)
        return maps if index is None else maps[:, index]
    validate = getattr(estimator, "_validate_inference_images", None)
    if validate is not None:
        images = validate(X)
    else:
        images = validate_images(estimator, X, reset=False, dtype="float")
    pads = _resolve_padding(padding, estimator._patch_size)
    if any(before or after for before, after in pads):
        images = _pad_images(images, pads, _border_values(estimator, pad_value))
    # the base selects the maps on the device, before the copy to the host
    return estimator._patch_logits(images, (1, 1), 0, index)


def _border_values(estimator, pad_value):
    """Per-channel raw values of the border: those normalizing to zero, or ``pad_value``."""
    n_channels = len(estimator.channel_mean_)
    if not isinstance(pad_value, str):
        return np.full(n_channels, pad_value, dtype=np.float64)
    input_zero = getattr(estimator, "_input_zero", None)
    if input_zero is not None:
        return np.asarray(input_zero(), dtype=np.float64)
    # the PatchNetModule's (x - mean) / std holds channel_mean_ as float32: exact zeros
    return np.asarray(estimator.channel_mean_, dtype=np.float32).astype(np.float64)


def _pad_images(images, pads, values):
    """``images`` (n, H, W, C) with a border of ``pads`` filled with ``values`` per channel."""
    (top, bottom), (left, right) = pads
    n, height, width, channels = images.shape
    padded = np.empty((n, height + top + bottom, width + left + right, channels),
                      dtype=images.dtype)
    padded[...] = values.astype(images.dtype)
    padded[:, top:top + height, left:left + width] = images
    return padded


def _class_index(classes, known):
    """Positions in ``known`` (``classes_``) of the labels ``classes``, whatever their type."""
    if np.ndim(classes) != 1 or len(classes) == 0:
        raise ValueError(
            f"classes must be a non-empty 1-D list of labels from classes_, got {classes!r}."
        )
    # plain Python scalars: np.asarray would turn [1, 'a'] into strings
    labels = classes.tolist() if hasattr(classes, "tolist") else list(classes)
    position = {label: k for k, label in enumerate(np.asarray(known).tolist())}
    missing = [label for label in labels if label not in position]
    if missing:
        raise ValueError(
            f"classes holds labels {missing!r} that are not among the estimator's "
            f"classes_ {list(position)!r}."
        )
    return np.array([position[label] for label in labels], dtype=np.intp)


def _blackout_masks(shape, fraction, rng):
    """Boolean keep-masks ``(n, gh, gw)`` dropping round(fraction * gh * gw) random patches."""
    n, gh, gw = shape
    n_patches = gh * gw
    n_drop = int(round(fraction * n_patches))
    # at least one patch survives, so the mean stays defined
    n_drop = min(n_drop, n_patches - 1)
    ranks = np.argsort(rng.random((n, n_patches)), axis=1).argsort(axis=1)
    return (ranks >= n_drop).reshape(n, gh, gw)


def _scores(logits, keep, y_index):
    """Accuracy and log loss of the mean logits over the kept patches."""
    weights = keep[:, None].astype(np.float64)
    mean = (logits * weights).sum(axis=(2, 3)) / weights.sum(axis=(2, 3))
    accuracy = float(np.mean(np.argmax(mean, axis=1) == y_index))
    # sklearn's log_loss, so the figure matches what users compute from predict_proba
    loss = log_loss(y_index, softmax(mean, axis=1), labels=np.arange(logits.shape[1]))
    return accuracy, float(loss)


@validate_params(
    {
        "estimator": [object],
        "X": ["array-like"],
        "y": ["array-like"],
        "fractions": ["array-like"],
        "alternate": ["boolean"],
        "n_repeats": [Interval(Integral, 1, None, closed="left")],
        "random_state": ["random_state"],
    },
    prefer_skip_nested_validation=True,
)
def blackout_scores(
    estimator, X, y, *, fractions=(0, 0.25, 0.5, 0.75), alternate=True, n_repeats=5,
    random_state=None,
):
    """Accuracy and log loss when patch logits are dropped before averaging.

    The patch logits are computed once; for each fraction ``f`` a random
    ``round(f * gh * gw)`` of each image's patch positions is dropped and the
    remaining logits are averaged (``n_repeats`` draws, mean and standard
    deviation reported). ``alternate=True`` adds the checkerboard experiment
    that drops every other patch (positions with ``r + c`` odd).

    Parameters
    ----------
    estimator : fitted estimator with ``patch_logits`` and ``classes_``
    X : array-like of shape (n, H, W), (n, H, W, C) or (n, H*W*C)
        Images of the shape the estimator was fitted on.
    y : array-like of shape (n,)
        True labels, all among ``estimator.classes_``.
    fractions : array-like of float in [0, 1), default=(0, 0.25, 0.5, 0.75)
        Fractions of patches blacked out at random.
    alternate : bool, default=True
        Also score the alternating (checkerboard) blackout.
    n_repeats : int, default=5
        Random draws per fraction (fraction 0 needs only one).
    random_state : int, RandomState instance or None, default=None
        Seeds the random blackout.

    Returns
    -------
    results : dict of ndarray
        One entry per experiment, in the style of ``cv_results_`` (pass it
        to :class:`pandas.DataFrame` to print): ``'mode'`` (``'random'`` or
        ``'alternate'``), ``'fraction'`` (fraction of patches dropped),
        ``'accuracy'``, ``'accuracy_std'``, ``'log_loss'``, ``'log_loss_std'``.

    See Also
    --------
    skpatch.plotting.plot_blackout : Plot these scores against the fraction.

    Notes
    -----
    With fraction 0 the accuracy equals ``estimator.score(X, y)`` for a
    patch-averaging estimator whose ``patch_logits`` default stride is its
    inference stride. A fraction that would drop every patch keeps one.
    With ``estimator.verbose >= 2`` the skpatch classifiers show a progress
    bar on stderr while the patch logits are computed.

    References
    ----------
    W. Brendel and M. Bethge, "Approximating CNNs with Bag-of-local-Features
    models works surprisingly well on ImageNet", ICLR 2019; the blackout
    experiments of the BagNet seed (its Table 1).

    Examples
    --------
    >>> import numpy as np
    >>> from skpatch import PatchCNNClassifier, blackout_scores
    >>> X = np.random.default_rng(0).random((8, 6, 6)).astype(np.float32)
    >>> y = np.repeat([0, 1], 4)
    >>> clf = PatchCNNClassifier(3, module='resnet10', width=4, max_epochs=1,
    ...                          device='cpu', verbose=0, random_state=0).fit(X, y)
    >>> res = blackout_scores(clf, X, y, fractions=[0, 0.5], random_state=0)
    >>> res['mode'].tolist(), res['fraction'].tolist()
    (['random', 'random', 'alternate'], [0.0, 0.5, 0.5])
    """
    _check_patch_estimator(estimator)
    rng = check_random_state(random_state)
    fractions = np.asarray(fractions, dtype=np.float64).ravel()
    if fractions.size == 0 or np.any(~np.isfinite(fractions)) or np.any(
        (fractions < 0) | (fractions >= 1)
    ):
        raise ValueError(
            f"fractions must be a non-empty list of values in [0, 1), got {fractions.tolist()!r}."
        )
    y = column_or_1d(y)
    known = np.asarray(estimator.classes_)
    unknown = np.setdiff1d(np.unique(y), known)
    if unknown.size:
        raise ValueError(
            f"y holds labels {unknown.tolist()!r} that are not among the "
            f"estimator's classes_ {known.tolist()!r}."
        )
    logits = np.asarray(estimator.patch_logits(X), dtype=np.float64)
    check_consistent_length(logits, y)
    # classes_ from BagNetClassifier.from_weights(classes=...) keep fc's order, unsorted
    position = {label: k for k, label in enumerate(known.tolist())}
    y_index = np.array([position[label] for label in y.tolist()], dtype=np.intp)
    n, _, gh, gw = logits.shape

    rows = {key: [] for key in ("mode", "fraction", "accuracy", "accuracy_std",
                                "log_loss", "log_loss_std")}

    def add(mode, fraction, draws):
        draws = np.asarray(draws)
        rows["mode"].append(mode)
        rows["fraction"].append(float(fraction))
        rows["accuracy"].append(draws[:, 0].mean())
        rows["accuracy_std"].append(draws[:, 0].std())
        rows["log_loss"].append(draws[:, 1].mean())
        rows["log_loss_std"].append(draws[:, 1].std())

    for fraction in fractions:
        repeats = 1 if fraction == 0 else n_repeats
        draws = [
            _scores(logits, _blackout_masks((n, gh, gw), fraction, rng), y_index)
            for _ in range(repeats)
        ]
        add("random", fraction, draws)
    if alternate:
        grid = np.add.outer(np.arange(gh), np.arange(gw))
        keep = np.broadcast_to((grid % 2 == 0) | (gh * gw == 1), (n, gh, gw))
        add("alternate", 1.0 - keep[0].mean(), [_scores(logits, keep, y_index)])
    return {
        key: np.asarray(values, dtype=object if key == "mode" else np.float64)
        for key, values in rows.items()
    }
