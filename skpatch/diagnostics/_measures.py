"""Similarity and overlap of ReLU paths (packed bits) and activations, per layer.

Every measure over pairs of images is a Gram matrix: sums over units of
products of two rows, and for few pairs row-wise sums over the pairs' rows; no
Python loop runs over pairs. Paths: exact integer counts of shared on-units
(``_gram``: an int8 GEMM on the CPU, float32 on a GPU, popcounts of ANDed
packed rows for few pairs); a similarity is the float64 ratio of those exact
counts. Activations: float64 GEMMs in torch on the CPU. Memory is bounded by
``_WORKING_MEMORY`` bytes of temporaries.

A cosine whose vectors include an all-zero one is undefined: it is NaN.
"""

from numbers import Integral

import numpy as np
import torch
from sklearn.utils import gen_batches
from sklearn.utils._param_validation import Interval, validate_params

from ._gram import (
    gram_matrix,
    gram_rows,
    pair_counts,
    pair_plan,
    popcount_rows,
    to_device,
)

__all__ = [
    "activation_similarity",
    "cross_activation_similarity",
    "cross_path_similarity",
    "early_mid_ratio",
    "neighbour_ranks",
    "path_overlap",
    "path_similarity",
]

_WORKING_MEMORY = 64 * 2**20  # bytes of temporaries per chunk


# --------------------------------------------------------------- validation


def _check_layers(arrays, name, *, packed):
    if not isinstance(arrays, dict):
        raise TypeError(
            f"{name} must be a dict from layer name to array, such as relu_paths "
            f"returns; got {type(arrays).__name__}."
        )
    checked = {}
    for layer, array in arrays.items():
        array = np.asarray(array)
        if array.ndim != 2:
            raise ValueError(
                f"{name}[{layer!r}] must be 2-D (n_images, ...), got shape {array.shape}."
            )
        if packed and array.dtype != np.uint8:
            raise ValueError(
                f"{name}[{layer!r}] must be packed bits (uint8) as relu_paths returns, "
                f"got dtype {array.dtype}."
            )
        checked[layer] = array
    return checked


def _check_before_after(before, after, *, packed):
    before = _check_layers(before, "before", packed=packed)
    after = _check_layers(after, "after", packed=packed)
    if set(before) != set(after):
        raise ValueError(
            f"before and after must have the same layers; got {list(before)} and "
            f"{list(after)}."
        )
    for layer in after:
        if before[layer].shape != after[layer].shape:
            raise ValueError(
                f"before[{layer!r}] and after[{layer!r}] must have the same shape, got "
                f"{before[layer].shape} and {after[layer].shape}."
            )
    return before, after


def _n_images(arrays):
    counts = {len(array) for array in arrays.values()}
    if len(counts) > 1:
        raise ValueError(f"All layers must hold the same images; got counts {sorted(counts)}.")
    return counts.pop() if counts else 0


def _check_pairs(pairs, n_images):
    """``pairs`` as an (m, 2) int64 array; None gives all i < j (np.triu_indices order)."""
    if pairs is None:
        return np.column_stack(np.triu_indices(n_images, 1)).astype(np.int64)
    pairs = np.asarray(pairs)
    if pairs.size == 0:
        return np.empty((0, 2), dtype=np.int64)
    if pairs.ndim != 2 or pairs.shape[1] != 2 or not np.issubdtype(pairs.dtype, np.integer):
        raise ValueError(
            f"pairs must be an (m, 2) integer array, got shape {pairs.shape} and dtype "
            f"{pairs.dtype}."
        )
    if pairs.min() < 0 or pairs.max() >= n_images:
        raise ValueError(
            f"pairs must index the {n_images} images: values in [0, {n_images}), got "
            f"[{pairs.min()}, {pairs.max()}]."
        )
    return pairs.astype(np.int64, copy=False)


# ------------------------------------------------------------------ kernels


class _Features:
    """Rows of a per-unit float feature matrix, built chunk by chunk over the columns.

    ``transform(columns)`` of the float arrays, as float64.
    """

    def __init__(self, arrays, transform):
        self.arrays, self.transform = arrays, transform
        self.n_images, self.n_columns = arrays[0].shape

    def block(self, rows, columns):
        return self.transform(*[array[rows, columns].astype(np.float64) for array in self.arrays])

    def columns_per_chunk(self, n_rows):
        return max(1, _WORKING_MEMORY // (n_rows * 8))


def _gram_rows(features, rows):
    """``(len(rows), n)`` sums over units of features[rows] times features (float64)."""
    gram = torch.zeros((len(rows), features.n_images), dtype=torch.float64)
    rows = torch.as_tensor(rows)
    step = features.columns_per_chunk(features.n_images)
    for columns in gen_batches(features.n_columns, step):
        # torch's GEMM: several times faster than numpy's BLAS on the CPUs we run on
        block = torch.from_numpy(features.block(slice(None), columns))
        gram += block[rows] @ block.T
    return gram.numpy()


def _pair_sums(features, pairs):
    """``(m,)`` sums over units of features[i] * features[j] for each pair (i, j)."""
    sums = np.zeros(len(pairs))
    plan = pair_plan(pairs, features.n_images, _WORKING_MEMORY)
    if len(pairs) == 0:
        return sums
    if not plan.dense:
        step = features.columns_per_chunk(256)
        n_pairs = max(1, _WORKING_MEMORY // (2 * 8 * step))
        for chunk in gen_batches(len(pairs), n_pairs):
            left, right = pairs[chunk, 0], pairs[chunk, 1]
            for columns in gen_batches(features.n_columns, step):
                sums[chunk] += np.einsum(
                    "ij,ij->i", features.block(left, columns), features.block(right, columns)
                )
        return sums
    for rows, selected, local_rows, columns in plan.blocks:
        sums[selected] = _gram_rows(features, rows)[local_rows, columns]
    return sums


def _path_counts(packed, plan, device=None, gram=None):
    """Exact shared on-units of each pair of the plan, int64."""
    device = torch.device(device or "cpu")
    return pair_counts(packed, plan, device, _WORKING_MEMORY, gram)


def _ranks(packed, queries, device=None, gram=None):
    """Neighbour ranks of the queries by exact overlap, int64 ``(len(queries), n)``.

    ``gram``: the :func:`gram_matrix` of ``packed`` if already computed.
    """
    n_images = len(packed)
    if gram is None:
        tensor = to_device(packed, torch.device(device or "cpu"))
        overlap = gram_rows(tensor, queries, _WORKING_MEMORY)
    else:
        overlap = gram[torch.tensor(queries, dtype=torch.int64, device=gram.device)]
    overlap = overlap.cpu().numpy()
    query_rows = np.arange(len(queries))
    overlap[query_rows, queries] = -1  # below every count: the query sorts last
    order = np.argsort(-overlap, axis=1, kind="stable")
    ranks = np.empty(overlap.shape, dtype=np.int64)
    np.put_along_axis(ranks, order, np.broadcast_to(np.arange(n_images), order.shape), axis=1)
    ranks[query_rows, queries] = -1
    return ranks


def _path_epoch(before, after, pairs, queries, device=None, before_counts=None):
    """Every path measure of one monitored epoch, per layer, each count computed once.

    ``before`` is None at the first recorded epoch. ``before_counts``, if
    given, is the ``(overlap, on_counts)`` this function returned for
    ``before`` with the same pairs: its counts are reused, not recomputed.
    Returns ``(record, on_counts)``: ``record`` maps ``'overlap'``,
    ``'neighbour_ranks'`` and, with ``before``, ``'self_similarity'``,
    ``'cross_similarity'`` to dicts from layer to the arrays the public
    measures return (the same numbers); ``on_counts`` maps each layer to its
    per-image count of on-units.
    """
    pairs = _check_pairs(pairs, _n_images(after))
    plan = pair_plan(pairs, _n_images(after), _WORKING_MEMORY)
    record = {"overlap": {}, "neighbour_ranks": {}}
    if before is not None:
        record["self_similarity"], record["cross_similarity"] = {}, {}
    on_counts = {}
    for layer, packed in after.items():
        # all pairs of a few hundred images: one Gram matrix gives overlaps and ranks
        gram = None
        if plan.flat is not None:
            gram = gram_matrix(to_device(packed, torch.device(device or "cpu")), _WORKING_MEMORY)
        overlap = _path_counts(packed, plan, device, gram)
        record["overlap"][layer] = overlap
        record["neighbour_ranks"][layer] = _ranks(packed, queries, device, gram)
        on_counts[layer] = popcount_rows(packed, _WORKING_MEMORY)
        if before is None:
            continue
        if before_counts is None:
            overlap_before = _path_counts(before[layer], plan, device)
            on_before = popcount_rows(before[layer], _WORKING_MEMORY)
        else:
            overlap_before, on_before = before_counts[0][layer], before_counts[1][layer]
        shared = before[layer] & packed
        record["self_similarity"][layer] = _cosine(
            popcount_rows(shared, _WORKING_MEMORY), on_before * on_counts[layer]
        )
        record["cross_similarity"][layer] = _cosine(
            _path_counts(shared, plan, device), overlap * overlap_before
        )
    return record, on_counts


def _cosine(numerator, squared_norms_product):
    """numerator / sqrt(product), NaN where the product is 0."""
    numerator = np.asarray(numerator, dtype=np.float64)
    product = np.asarray(squared_norms_product, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        cosine = numerator / np.sqrt(product)
    cosine[product == 0] = np.nan
    return cosine


# ---------------------------------------------------------- public measures


@validate_params({"before": [dict], "after": [dict]}, prefer_skip_nested_validation=True)
def path_similarity(before, after):
    """Self similarity of each image's path between two epochs.

    Parameters
    ----------
    before : dict of str to ndarray of shape (n, n_bytes), uint8
        Packed paths of an earlier epoch (t-1), as :func:`relu_paths` returns.
    after : dict of str to ndarray of shape (n, n_bytes), uint8
        Packed paths of the same images and layers at a later epoch (t).

    Returns
    -------
    similarity : dict of str to ndarray of shape (n,), float64
        Per layer, ``cos(p_i^t, p_i^(t-1))`` of the unpacked 0/1 paths; NaN
        where either path is all zeros.

    See Also
    --------
    cross_path_similarity : The same for the shared units of pairs of images.
    activation_similarity : The same with activation values.

    Examples
    --------
    >>> import numpy as np
    >>> from skpatch.diagnostics import path_similarity
    >>> before = {"relu": np.packbits([[1, 1, 0, 0], [0, 0, 0, 0]], axis=1)}
    >>> after = {"relu": np.packbits([[1, 0, 1, 0], [1, 0, 0, 0]], axis=1)}
    >>> path_similarity(before, after)["relu"]
    array([0.5, nan])
    """
    before, after = _check_before_after(before, after, packed=True)
    similarity = {}
    for layer in after:
        shared = popcount_rows(before[layer] & after[layer], _WORKING_MEMORY)
        norms = popcount_rows(before[layer], _WORKING_MEMORY) * popcount_rows(
            after[layer], _WORKING_MEMORY
        )
        similarity[layer] = _cosine(shared, norms)
    return similarity


@validate_params(
    {"before": [dict], "after": [dict], "pairs": ["array-like", None]},
    prefer_skip_nested_validation=True,
)
def cross_path_similarity(before, after, pairs=None):
    """Whether an image keeps access to the same units of another image across epochs.

    Parameters
    ----------
    before : dict of str to ndarray of shape (n, n_bytes), uint8
        Packed paths of an earlier epoch (t-1), as :func:`relu_paths` returns.
    after : dict of str to ndarray of shape (n, n_bytes), uint8
        Packed paths of the same images and layers at a later epoch (t).
    pairs : array-like of shape (m, 2), int, default=None
        Pairs ``(i, j)`` of image indices; ``None`` is all ``i < j`` in
        lexicographic order (the order of ``np.triu_indices(n, 1)``).

    Returns
    -------
    similarity : dict of str to ndarray of shape (m,), float64
        Per layer, ``cos(p_i^t * p_j^t, p_i^(t-1) * p_j^(t-1))``; NaN where
        either product is all zeros (the images share no unit at an epoch).

    See Also
    --------
    path_similarity : The same for one image's own path.
    cross_activation_similarity : The same with activation values.

    Notes
    -----
    With ``b = p^t AND p^(t-1)``, the numerator for a pair is ``b_i . b_j``
    and the squared norms are ``p_i^t . p_j^t`` and
    ``p_i^(t-1) . p_j^(t-1)``: three Gram matrices over all pairs.

    Examples
    --------
    >>> import numpy as np
    >>> from skpatch.diagnostics import cross_path_similarity
    >>> before = {"relu": np.packbits([[1, 1, 1, 0], [1, 1, 0, 0], [0, 0, 1, 1]], axis=1)}
    >>> after = {"relu": np.packbits([[1, 1, 1, 0], [1, 0, 1, 0], [0, 0, 1, 1]], axis=1)}
    >>> cross_path_similarity(before, after)["relu"].round(4)
    array([0.5, 1. , nan])
    """
    before, after = _check_before_after(before, after, packed=True)
    pairs = _check_pairs(pairs, _n_images(after))
    plan = pair_plan(pairs, _n_images(after), _WORKING_MEMORY)
    similarity = {}
    for layer in after:
        shared = _path_counts(before[layer] & after[layer], plan)
        norms = _path_counts(after[layer], plan) * _path_counts(before[layer], plan)
        similarity[layer] = _cosine(shared, norms)
    return similarity


@validate_params(
    {"paths": [dict], "pairs": ["array-like", None]}, prefer_skip_nested_validation=True
)
def path_overlap(paths, pairs=None):
    """Number of units that are on for both images of each pair.

    Parameters
    ----------
    paths : dict of str to ndarray of shape (n, n_bytes), uint8
        Packed paths, as :func:`relu_paths` returns.
    pairs : array-like of shape (m, 2), int, default=None
        Pairs ``(i, j)``; ``None`` is all ``i < j`` in lexicographic order.

    Returns
    -------
    overlap : dict of str to ndarray of shape (m,), int64
        Per layer, ``p_i . p_j`` = popcount(``p_i & p_j``).

    See Also
    --------
    neighbour_ranks : Rank of every image by its overlap with a query.

    Examples
    --------
    >>> import numpy as np
    >>> from skpatch.diagnostics import path_overlap
    >>> paths = {"relu": np.packbits([[1, 1, 0], [1, 1, 1], [0, 0, 1]], axis=1)}
    >>> path_overlap(paths)["relu"]
    array([2, 0, 1])
    """
    paths = _check_layers(paths, "paths", packed=True)
    pairs = _check_pairs(pairs, _n_images(paths))
    plan = pair_plan(pairs, _n_images(paths), _WORKING_MEMORY)
    return {layer: _path_counts(array, plan) for layer, array in paths.items()}


@validate_params({"before": [dict], "after": [dict]}, prefer_skip_nested_validation=True)
def activation_similarity(before, after):
    """Self similarity of each image's activations between two epochs.

    Parameters
    ----------
    before : dict of str to ndarray of shape (n, units)
        Activations of an earlier epoch (t-1), as :func:`relu_activations`
        returns.
    after : dict of str to ndarray of shape (n, units)
        Activations of the same images and layers at a later epoch (t).

    Returns
    -------
    similarity : dict of str to ndarray of shape (n,), float64
        Per layer, ``cos(a_i^t, a_i^(t-1))`` computed in float64; NaN where
        either vector is all zeros.

    See Also
    --------
    path_similarity : The same with the on/off bits.

    Examples
    --------
    >>> import numpy as np
    >>> from skpatch.diagnostics import activation_similarity
    >>> before = {"relu": np.array([[3.0, 4.0], [0.0, 0.0]])}
    >>> after = {"relu": np.array([[3.0, 0.0], [1.0, 0.0]])}
    >>> activation_similarity(before, after)["relu"]
    array([0.6, nan])
    """
    before, after = _check_before_after(before, after, packed=False)
    similarity = {}
    for layer in after:
        n_images, n_units = after[layer].shape
        products = np.empty((3, n_images))
        for rows in gen_batches(n_images, max(1, _WORKING_MEMORY // (16 * max(1, n_units)))):
            first = before[layer][rows].astype(np.float64)
            second = after[layer][rows].astype(np.float64)
            products[:, rows] = [
                np.einsum("ij,ij->i", first, second),
                np.einsum("ij,ij->i", first, first),
                np.einsum("ij,ij->i", second, second),
            ]
        similarity[layer] = _cosine(products[0], products[1] * products[2])
    return similarity


@validate_params(
    {"before": [dict], "after": [dict], "pairs": ["array-like", None]},
    prefer_skip_nested_validation=True,
)
def cross_activation_similarity(before, after, pairs=None):
    """Cross similarity of :func:`cross_path_similarity` with activation values.

    Parameters
    ----------
    before : dict of str to ndarray of shape (n, units)
        Activations of an earlier epoch (t-1), as :func:`relu_activations`
        returns.
    after : dict of str to ndarray of shape (n, units)
        Activations of the same images and layers at a later epoch (t).
    pairs : array-like of shape (m, 2), int, default=None
        Pairs ``(i, j)``; ``None`` is all ``i < j`` in lexicographic order.

    Returns
    -------
    similarity : dict of str to ndarray of shape (m,), float64
        Per layer, ``cos(a_i^t * a_j^t, a_i^(t-1) * a_j^(t-1))`` computed in
        float64; NaN where either product is all zeros.

    See Also
    --------
    activation_similarity : The same for one image's own activations.

    Notes
    -----
    The numerator over all pairs is the Gram matrix of ``a^t * a^(t-1)`` and
    the squared norms those of ``(a^t)**2`` and ``(a^(t-1))**2``.

    Examples
    --------
    >>> import numpy as np
    >>> from skpatch.diagnostics import cross_activation_similarity
    >>> before = {"relu": np.array([[1.0, 1.0], [1.0, 1.0]])}
    >>> after = {"relu": np.array([[2.0, 0.0], [1.0, 1.0]])}
    >>> cross_activation_similarity(before, after)["relu"].round(4)
    array([0.7071])
    """
    before, after = _check_before_after(before, after, packed=False)
    pairs = _check_pairs(pairs, _n_images(after))
    similarity = {}
    for layer in after:
        arrays = [after[layer], before[layer]]
        shared = _pair_sums(_Features(arrays, np.multiply), pairs)
        norms_after = _pair_sums(_Features([after[layer]], np.square), pairs)
        norms_before = _pair_sums(_Features([before[layer]], np.square), pairs)
        similarity[layer] = _cosine(shared, norms_after * norms_before)
    return similarity


@validate_params(
    {"paths": [dict], "queries": ["array-like"]}, prefer_skip_nested_validation=True
)
def neighbour_ranks(paths, queries):
    """Rank of every probe image by its path overlap with each query image.

    Parameters
    ----------
    paths : dict of str to ndarray of shape (n, n_bytes), uint8
        Packed paths, as :func:`relu_paths` returns.
    queries : array-like of shape (n_queries,), int
        Indices of the query images.

    Returns
    -------
    ranks : dict of str to ndarray of shape (n_queries, n), int64
        Per layer, ``ranks[q, j]`` is the rank of image ``j`` among the other
        images by overlap with query ``queries[q]``: 0 for the largest
        overlap, ties broken by index (lower index first); the query itself
        gets -1 and is left out of the ranking.

    See Also
    --------
    path_overlap : The overlaps themselves.

    Examples
    --------
    >>> import numpy as np
    >>> from skpatch.diagnostics import neighbour_ranks
    >>> paths = {"relu": np.packbits([[1, 1, 0], [1, 0, 0], [1, 1, 1]], axis=1)}
    >>> neighbour_ranks(paths, [0])["relu"]
    array([[-1,  1,  0]])
    """
    paths = _check_layers(paths, "paths", packed=True)
    n_images = _n_images(paths)
    queries = np.asarray(queries)
    if queries.ndim != 1 or (queries.size and not np.issubdtype(queries.dtype, np.integer)):
        raise ValueError(f"queries must be a 1-D integer array, got {queries!r}.")
    if queries.size and (queries.min() < 0 or queries.max() >= n_images):
        raise ValueError(f"queries must index the {n_images} images, got {queries!r}.")
    queries = queries.astype(np.int64)
    return {layer: _ranks(array, queries) for layer, array in paths.items()}


@validate_params(
    {
        "values": ["array-like"],
        "first_decay_epoch": [Interval(Integral, 1, None, closed="left")],
        "second_decay_epoch": [Interval(Integral, 2, None, closed="left"), None],
    },
    prefer_skip_nested_validation=True,
)
def early_mid_ratio(values, first_decay_epoch, second_decay_epoch=None):
    """Mean cross path similarity before the first learning-rate decay over its mean after.

    Parameters
    ----------
    values : array-like of shape (n_epochs,)
        One value per epoch, e.g. the mean cross path similarity.
    first_decay_epoch : int
        Index of ``values`` where the first stage (before the first decay)
        ends.
    second_decay_epoch : int, default=None
        Index where the second stage ends; ``None`` runs it to the end.

    Returns
    -------
    ratio : float
        ``mean(values[:first_decay_epoch]) /
        mean(values[first_decay_epoch:second_decay_epoch])``.

    Raises
    ------
    ValueError
        If either stage is empty.

    Examples
    --------
    >>> from skpatch.diagnostics import early_mid_ratio
    >>> early_mid_ratio([0.4, 0.6, 0.8, 1.0, 0.9], 2, 4)
    0.5555...
    """
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 1:
        raise ValueError(f"values must be 1-D, got shape {values.shape}.")
    stop = len(values) if second_decay_epoch is None else second_decay_epoch
    if not first_decay_epoch < stop <= len(values):
        raise ValueError(
            "Both stages must hold epochs: need first_decay_epoch < second_decay_epoch "
            f"<= len(values); got {first_decay_epoch}, {second_decay_epoch} and "
            f"{len(values)} values."
        )
    return float(values[:first_decay_epoch].mean() / values[first_decay_epoch:stop].mean())
