"""``PathMonitor``: a skorch callback recording ReLU paths of probe images per epoch.

At the end of every ``every``-th epoch the monitor records the packed paths
(and, if asked, the activations) of a fixed probe set with
:func:`~skpatch.diagnostics.relu_paths`, compares them with those of the
previous recorded epoch, and keeps only those two epochs' paths in memory.
"""

import os
import time
from numbers import Integral

import numpy as np
from skorch.callbacks import Callback
from sklearn.utils._param_validation import Interval, validate_parameter_constraints

from ._measures import _path_epoch, activation_similarity, cross_activation_similarity
from ._paths import _input_device_dtype, relu_activations, relu_paths

__all__ = ["PathMonitor"]

_QUANTILES = (0.1, 0.5, 0.9)
_RESULT_KINDS = (
    "overlap",
    "neighbour_ranks",
    "self_similarity",
    "cross_similarity",
    "activation_self_similarity",
    "activation_cross_similarity",
)
_N_DEFAULT_QUERIES = 3
# probe images per forward: the largest ReLU output of a batch within 8 MiB of float32.
# The paths do not depend on it; 128 images of 16384 units (a width-16 ResNet stem on
# 32 x 32 images) run about 20% faster than one batch of 256 on the CPUs we run on
_FORWARD_BYTES = 8 * 2**20
_MAX_FORWARD_BATCH = 256


class PathMonitor(Callback):
    """Record the ReLU paths of probe images at the end of training epochs.

    A path is the set of ``nn.ReLU`` units that are on (output > 0) for an
    image; the monitor follows how the paths of a fixed probe set change
    from one recorded epoch to the next (self and cross path similarity),
    how many units pairs of images share (overlap) and each query image's
    nearest probe images by overlap.

    Parameters
    ----------
    X_probe : array-like or torch.Tensor of shape (n, ...)
        The probe images, at least 2. For a
        :class:`~skpatch.PatchCNNClassifier` or
        :class:`~skpatch.classifiers.BagNetClassifier`: images as the
        classifier takes them, ``(n, H, W)`` or ``(n, H, W, C)``, uint8
        (scaled to [0, 1]) or float. For any other skorch net: batches in its
        module's input layout, e.g. ``(n, C, H, W)``.
    layers : list of str, default=None
        Names of the ``nn.ReLU`` modules to record, as ``net.module_.
        named_modules()`` gives them (for the skpatch classifiers they start
        with ``'core.'``); ``None`` records all of them.
    activations : bool, default=False
        Also record the activation values (float16) and their self and cross
        similarities.
    pairs : array-like of shape (m, 2) of int, default=None
        Pairs ``(i, j)``, ``i != j``, of probe indices for the cross similarity
        and the overlap; ``None`` takes all ``i < j`` in lexicographic order.
    queries : array-like of int, default=None
        Probe indices whose neighbour ranks are recorded; ``None`` takes the
        first 3 probe images (all of them when there are fewer).
    every : int, default=1
        Record at the end of the epochs whose number (skorch's ``epoch``,
        counted from 1) is a multiple of ``every``.
    directory : str or path-like, default=None
        If given, every recorded epoch is also written to
        ``directory/epoch_XXX.npz`` (see Notes); the folder is created if needed.

    Attributes
    ----------
    epochs_ : list of int
        The recorded epochs, in order.
    layers_ : list of str
        The recorded layers, in forward order.
    n_units_ : dict of str to int
        Units of each layer per image (the packed rows have ``ceil(units / 8)``
        bytes).
    pairs_ : ndarray of shape (m, 2), int64
        The pairs of ``cross_similarity_`` and ``overlap_`` columns.
    queries_ : ndarray of shape (q,), int64
        The query images of ``neighbour_ranks_``.
    paths_ : dict of str to ndarray of shape (n, ceil(units / 8)), uint8
        Packed paths of the last recorded epoch (``None`` before the first).
    previous_paths_ : dict or None
        Packed paths of the recorded epoch before it.
    activations_, previous_activations_ : dict of str to ndarray (n, units) or None
        The same for the activation values (float16) when ``activations=True``.
    self_similarity_ : dict of str to ndarray of shape (n_epochs - 1, n)
        Row ``k``: :func:`~skpatch.diagnostics.path_similarity` between the
        recorded epochs ``epochs_[k]`` and ``epochs_[k + 1]``.
    cross_similarity_ : dict of str to ndarray of shape (n_epochs - 1, m)
        The same with :func:`~skpatch.diagnostics.cross_path_similarity`.
    overlap_ : dict of str to ndarray of shape (n_epochs, m), int32
        :func:`~skpatch.diagnostics.path_overlap` at each recorded epoch (the
        same counts in int32; int64 only for a layer of 2**31 units or more).
    neighbour_ranks_ : dict of str to ndarray of shape (n_epochs, q, n), int32
        :func:`~skpatch.diagnostics.neighbour_ranks` of ``queries_`` at each
        recorded epoch (int32, as ``overlap_``).
    activation_self_similarity_, activation_cross_similarity_ : dict or None
        :func:`~skpatch.diagnostics.activation_similarity` and
        :func:`~skpatch.diagnostics.cross_activation_similarity`, shaped like
        ``self_similarity_`` and ``cross_similarity_``; ``None`` unless
        ``activations=True``.

    See Also
    --------
    skpatch.diagnostics.relu_paths : The paths of a module on a batch.
    skpatch.diagnostics.path_similarity : Self similarity of two epochs' paths.

    Notes
    -----
    What is recorded: the eval-mode forward of the whole probe images through
    ``net.module_``, without gradients
    (:func:`~skpatch.diagnostics.relu_paths`, in batches whose largest ReLU
    output holds at most 8 MiB of float32; the paths do not depend on it). For the skpatch classifiers that is the
    :class:`~skpatch.nn.PatchNetModule`: per-channel normalization, then the
    core network on the whole image (no random crop or flip in eval mode);
    a ResNet's global pooling and a BagNet's mean over locations accept any
    image size. It is the forward of ``inference='image'``; a patch-averaging
    classifier predicts from patch windows, whose paths differ.

    The per-epoch arrays above are extended at the end of each ``fit`` or
    ``partial_fit`` (``on_train_end``; a new ``fit`` starts them afresh); each
    recorded epoch appends to the net's
    history (``net.history``, the classifier's ``history_``) dicts from layer
    name to a float: ``path_on_fraction`` (mean fraction of units on) and,
    from the second recorded epoch on, ``path_self_mean``, ``path_self_q10``,
    ``path_self_q50``, ``path_self_q90``, ``path_cross_mean`` ... ``path_cross_q90``
    (and ``activation_self_*``, ``activation_cross_*``), the mean and the
    quantiles 0.1/0.5/0.9 over images or pairs, NaN entries ignored; and the
    float ``path_monitor_dur``, the seconds the monitor took. The dict keys are
    kept out of skorch's printed epoch table. A cosine is NaN where a vector
    is all zeros (no unit on).

    Memory: two recorded epochs of packed paths, ``2 * n * ceil(units / 8)``
    bytes per layer (and two of float16 activations when asked), plus per
    recorded epoch ``n`` float64 self similarities, ``m`` float64 cross
    similarities, ``m`` int32 overlaps and ``q * n`` int32 ranks per layer,
    with ``m = n (n - 1) / 2`` for all pairs.

    Cost: each recorded epoch runs the probe forward, then per layer three
    exact 0/1 Gram matrices (the paths, their AND with the previous epoch's,
    and the previous epoch's), on the network's device: int8 GEMMs with
    int32 sums on the CPU, float32 GEMMs on a GPU, both exact, so the numbers
    do not depend on the device. A similarity is the float64 ratio of those
    integer counts.

    With ``directory``, ``epoch_XXX.npz`` (loadable with
    ``allow_pickle=False``) holds ``epoch``, ``layers``, ``n_units``, ``pairs``,
    ``queries`` and, for each layer name ``L``, ``paths/L``, ``overlap/L``,
    ``neighbour_ranks/L``, from the second recorded epoch on ``self_similarity/L``
    and ``cross_similarity/L``, and with ``activations=True`` ``activations/L``
    (and ``activation_self_similarity/L``, ``activation_cross_similarity/L``).

    The classifiers copy their ``callbacks``: read the results from the
    fitted classifier's ``callbacks_``, not from the object passed in.

    Examples
    --------
    >>> import numpy as np
    >>> import torch
    >>> from skorch import NeuralNetClassifier
    >>> from skpatch.diagnostics import PathMonitor
    >>> X = np.random.default_rng(0).normal(size=(16, 4)).astype(np.float32)
    >>> y = (X[:, 0] > 0).astype(np.int64)
    >>> module = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(),
    ...                              torch.nn.Linear(8, 2))
    >>> net = NeuralNetClassifier(module, criterion=torch.nn.CrossEntropyLoss,
    ...                           max_epochs=3, train_split=None, verbose=0,
    ...                           callbacks=[("paths", PathMonitor(X[:5]))]).fit(X, y)
    >>> monitor = dict(net.callbacks_)["paths"]
    >>> monitor.epochs_, monitor.self_similarity_["1"].shape
    ([1, 2, 3], (2, 5))
    """

    _parameter_constraints = {
        "X_probe": ["array-like"],
        "layers": [list, tuple, None],
        "activations": ["boolean"],
        "pairs": ["array-like", None],
        "queries": ["array-like", None],
        "every": [Interval(Integral, 1, None, closed="left")],
        "directory": [str, os.PathLike, None],
    }

    def __init__(
        self,
        X_probe,
        *,
        layers=None,
        activations=False,
        pairs=None,
        queries=None,
        every=1,
        directory=None,
    ):
        self.X_probe = X_probe
        self.layers = layers
        self.activations = activations
        self.pairs = pairs
        self.queries = queries
        self.every = every
        self.directory = directory

    def _get_param_names(self):
        # the __init__ parameters: skorch's default lists every attribute not ending in '_'
        return sorted(self._parameter_constraints)

    def __repr__(self):
        return f"{type(self).__name__}(every={self.every!r}, layers={self.layers!r})"

    # ---- state -----------------------------------------------------------
    def initialize(self):
        """Check the parameters and reset the recorded state."""
        validate_parameter_constraints(
            self._parameter_constraints, self.get_params(deep=False), type(self).__name__
        )
        n_probe = _n_probe(self.X_probe)
        self._pairs = _check_pairs(self.pairs, n_probe)
        self.pairs_ = (
            np.stack(np.triu_indices(n_probe, 1), axis=1).astype(np.int64)
            if self._pairs is None
            else self._pairs
        )
        self.queries_ = _check_queries(self.queries, n_probe)
        self._probe = None
        self.epochs_ = []
        self.layers_ = None
        self.n_units_ = None
        self.paths_ = self.previous_paths_ = None
        self._previous_counts = None  # (paths_, their overlaps, their on-unit counts)
        self.activations_ = self.previous_activations_ = None
        self._records = []
        self._reset_results()
        return self

    def _reset_results(self):
        for kind in _RESULT_KINDS:
            setattr(self, kind + "_", None)
        self._build_results()

    def on_train_begin(self, net, X=None, y=None, **kwargs):
        if self._probe is None:
            self._probe = _probe_batch(self.X_probe, net.module_)
        if self.layers_ is None:
            # one image through relu_activations: the layers in forward order and their units
            first = relu_activations(
                net.module_, self._probe[:1], layers=self._layer_list(), dtype="float32"
            )
            self.layers_ = list(first)
            self.n_units_ = {name: int(values.shape[1]) for name, values in first.items()}
            self._reset_results()
        if self.directory is not None:
            os.makedirs(self.directory, exist_ok=True)
        for _, callback in getattr(net, "callbacks_", []):
            ignored = getattr(callback, "keys_ignored_", None)
            if isinstance(ignored, set):
                # PrintLog: a dict per layer would flood the epoch table
                ignored.update(_dict_history_keys())

    def on_epoch_end(self, net, dataset_train=None, dataset_valid=None, **kwargs):
        epoch = len(net.history)
        if epoch % self.every != 0:
            return
        start = time.perf_counter()
        record, on_counts = self._record_epoch(net.module_)
        self.epochs_.append(epoch)
        self._records.append(record)
        for key, value in _history_summaries(record, on_counts, self.n_units_).items():
            net.history.record(key, value)
        if self.directory is not None:
            self._write(epoch, record)
        net.history.record("path_monitor_dur", time.perf_counter() - start)

    def on_train_end(self, net, X=None, y=None, **kwargs):
        self._build_results()

    # ---- work ------------------------------------------------------------
    def _layer_list(self):
        return None if self.layers is None else list(self.layers)

    def _record_epoch(self, module):
        """The epoch's measures and the per-layer on-unit counts of its paths."""
        batch_size = self._forward_batch_size()
        paths = relu_paths(module, self._probe, layers=self.layers_, batch_size=batch_size)
        self.previous_paths_, self.paths_ = self.paths_, paths
        # exact counts on the network's device (a GPU's GEMMs when it has one)
        device, _ = _input_device_dtype(module, None)
        # the previous epoch's overlaps are the norms of this epoch's cross similarity
        cached = getattr(self, "_previous_counts", None)  # absent in older pickles
        before_counts = cached[1:] if cached and cached[0] is self.previous_paths_ else None
        record, on_counts = _path_epoch(
            self.previous_paths_, paths, self.pairs_, self.queries_, device, before_counts
        )
        count_dtype = self._count_dtype()
        for kind in ("overlap", "neighbour_ranks"):
            # the same integers in a compact dtype
            record[kind] = {name: a.astype(count_dtype) for name, a in record[kind].items()}
        self._previous_counts = (paths, record["overlap"], on_counts)
        if self.activations:
            values = relu_activations(
                module, self._probe, layers=self.layers_, batch_size=batch_size
            )
            self.previous_activations_, self.activations_ = self.activations_, values
            if self.previous_activations_ is not None:
                before = self.previous_activations_
                record["activation_self_similarity"] = activation_similarity(before, values)
                record["activation_cross_similarity"] = cross_activation_similarity(
                    before, values, self._pairs
                )
        return record, on_counts

    def _forward_batch_size(self):
        largest = max(self.n_units_.values(), default=1)
        return int(np.clip(_FORWARD_BYTES // (4 * largest), 1, _MAX_FORWARD_BATCH))

    def _count_dtype(self):
        """int32 holds every overlap (at most a layer's units) and rank (below n)."""
        largest = max([_n_probe(self.X_probe), *(self.n_units_ or {}).values()])
        return np.int32 if largest <= np.iinfo(np.int32).max else np.int64

    def _write(self, epoch, record):
        arrays = {
            "epoch": np.int64(epoch),
            "layers": np.array(self.layers_, dtype=str),
            "n_units": np.array([self.n_units_[name] for name in self.layers_], dtype=np.int64),
            "pairs": self.pairs_,
            "queries": self.queries_,
        }
        per_layer = {"paths": self.paths_, **record}
        if self.activations:
            per_layer["activations"] = self.activations_
        for kind, values in per_layer.items():
            for name, array in values.items():
                arrays[f"{kind}/{name}"] = array
        np.savez(os.path.join(os.fspath(self.directory), f"epoch_{epoch:03d}.npz"), **arrays)

    def _build_results(self):
        """Append the epochs recorded since the last call to the fitted arrays.

        The records are dropped once stacked, so the per-epoch results are
        held once, whatever the number of ``partial_fit`` calls.
        """
        layers = self.layers_ or []
        n_probe, n_pairs = _n_probe(self.X_probe), len(self.pairs_)
        count_dtype = self._count_dtype()
        shapes = {
            "overlap": ((n_pairs,), count_dtype),
            "neighbour_ranks": ((len(self.queries_), n_probe), count_dtype),
            "self_similarity": ((n_probe,), np.float64),
            "cross_similarity": ((n_pairs,), np.float64),
        }
        if self.activations:
            shapes["activation_self_similarity"] = ((n_probe,), np.float64)
            shapes["activation_cross_similarity"] = ((n_pairs,), np.float64)
        records, self._records = self._records, []
        for kind, (shape, dtype) in shapes.items():
            old = getattr(self, kind + "_", None) or {}
            # the similarities start at the second recorded epoch
            rows = [record[kind] for record in records if kind in record]
            results = {}
            for name in layers:
                new = np.array([row[name] for row in rows], dtype=dtype)
                new = new.reshape((len(rows),) + shape)
                results[name] = np.concatenate([old[name], new]) if name in old else new
            setattr(self, kind + "_", results)
        if not self.activations:
            self.activation_self_similarity_ = self.activation_cross_similarity_ = None


# ---- helpers ------------------------------------------------------------------


def _n_probe(X_probe):
    shape = tuple(getattr(X_probe, "shape", None) or np.shape(X_probe))
    if len(shape) < 2 or shape[0] < 2:
        raise ValueError(
            "X_probe must hold at least 2 probe images, an array of shape (n, ...) "
            f"with n >= 2 and 2 or more dimensions, got shape {shape}."
        )
    return shape[0]


def _check_pairs(pairs, n_probe):
    if pairs is None:
        return None
    array = np.asarray(pairs)
    if array.ndim != 2 or array.shape[1] != 2 or len(array) == 0:
        raise ValueError(
            f"pairs must be an (m, 2) array of probe indices with m >= 1, got shape {array.shape}."
        )
    if array.dtype.kind not in "iu":
        raise ValueError(f"pairs must hold integer probe indices, got dtype {array.dtype}.")
    if array.min() < 0 or array.max() >= n_probe:
        raise ValueError(
            f"pairs must hold probe indices in [0, {n_probe - 1}] (X_probe holds "
            f"{n_probe} images), got values in [{array.min()}, {array.max()}]."
        )
    if np.any(array[:, 0] == array[:, 1]):
        raise ValueError("pairs must pair distinct images (i != j); some rows have i == j.")
    return array.astype(np.int64)


def _check_queries(queries, n_probe):
    if queries is None:
        return np.arange(min(_N_DEFAULT_QUERIES, n_probe), dtype=np.int64)
    array = np.asarray(queries)
    if array.ndim != 1 or len(array) == 0 or array.dtype.kind not in "iu":
        raise ValueError(
            f"queries must be a non-empty 1-D array of integer probe indices, got "
            f"{array.dtype} of shape {array.shape}."
        )
    if array.min() < 0 or array.max() >= n_probe:
        raise ValueError(
            f"queries must hold probe indices in [0, {n_probe - 1}] (X_probe holds "
            f"{n_probe} images), got values in [{array.min()}, {array.max()}]."
        )
    return array.astype(np.int64)


def _probe_batch(X_probe, module):
    """The probe set as ``module`` takes it: a float32 numpy array (or a copy of the tensor)."""
    import torch

    from ..nn._patch_net import PatchNetModule

    if isinstance(module, PatchNetModule):
        from ..utils._validation import check_images

        if isinstance(X_probe, torch.Tensor):
            X_probe = X_probe.detach().cpu().numpy()
        images = check_images(X_probe, dtype="float", input_name="X_probe")
        n_channels = module.mean.shape[1]
        if images.shape[3] != n_channels:
            raise ValueError(
                f"X_probe has {images.shape[3]} channels (images (n, H, W, C) of shape "
                f"{images.shape}), but the classifier was fitted on images of "
                f"{n_channels}: pass probe images as the classifier takes them."
            )
        return np.ascontiguousarray(images.transpose(0, 3, 1, 2), dtype=np.float32)
    if isinstance(X_probe, torch.Tensor):
        return X_probe.detach().cpu().numpy()
    array = np.asarray(X_probe)
    return array.astype(np.float32) if array.dtype.kind == "f" else array


def _dict_history_keys():
    keys = ["path_on_fraction"]
    for kind in ("path", "activation"):
        for which in ("self", "cross"):
            keys += [f"{kind}_{which}_{stat}" for stat in ("mean", "q10", "q50", "q90")]
    return keys


def _history_summaries(record, on_counts, n_units):
    """History entries of one recorded epoch: dicts from layer name to a float."""
    # on_counts: set bits of the packed rows (np.packbits pads with off bits), exact
    summaries = {
        "path_on_fraction": {
            name: float(counts.sum() / (len(counts) * n_units[name]))
            for name, counts in on_counts.items()
        }
    }
    for kind, prefix in (
        ("self_similarity", "path_self"),
        ("cross_similarity", "path_cross"),
        ("activation_self_similarity", "activation_self"),
        ("activation_cross_similarity", "activation_cross"),
    ):
        if kind in record:
            summaries.update(_quantile_summaries(record[kind], prefix))
    return summaries


def _quantile_summaries(values, prefix):
    out = {f"{prefix}_{stat}": {} for stat in ("mean", "q10", "q50", "q90")}
    for name, array in values.items():
        finite = array[~np.isnan(array)]
        if len(finite) == 0:
            stats = [np.nan] * 4
        else:
            stats = [finite.mean(), *np.quantile(finite, _QUANTILES)]
        for stat, value in zip(("mean", "q10", "q50", "q90"), stats):
            out[f"{prefix}_{stat}"][name] = float(value)
    return out
