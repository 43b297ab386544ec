"""PathMonitor: the skorch callback recording ReLU paths of probe images per epoch.

Recorded values are checked against straightforward numpy computations from
unpacked bits (and against a manual forward of the tiny network), not only
against the library's measures.
"""

import pickle

import numpy as np
import pytest
from _helpers import TINY_BAGNET, TINY_PATCH_CNN, reference_images
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV

torch = pytest.importorskip("torch")

from skpatch import BagNetClassifier, PatchCNNClassifier  # noqa: E402
from skpatch.diagnostics import PathMonitor, relu_activations, relu_paths  # noqa: E402

N_PROBE = 8


@pytest.fixture(scope="module")
def data():
    return reference_images(n_images=32, height=12, width=12, channels=3, seed=3)


@pytest.fixture(scope="module")
def probe(data):
    # uint8, as a user would pass images: the monitor scales them like the classifier
    X, _ = data
    return np.round(X[:N_PROBE] * 255).astype(np.uint8)


def _patch_cnn(monitor, **params):
    settings = dict(TINY_PATCH_CNN, max_epochs=3, augment=None)
    settings.update(params)
    return PatchCNNClassifier(patch_size=6, callbacks=[("paths", monitor)], **settings)


@pytest.fixture(scope="module")
def fitted(data, probe):
    X, y = data
    return _patch_cnn(PathMonitor(probe)).fit(X, y)


# ---- straightforward references --------------------------------------------------


def _bits(packed, n_units):
    return np.unpackbits(packed, axis=1)[:, :n_units].astype(np.float64)


def _cosine(a, b):
    norms = np.sqrt((a * a).sum(1) * (b * b).sum(1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(norms > 0, (a * b).sum(1) / norms, np.nan)


def _all_pairs(n):
    return np.array([(i, j) for i in range(n) for j in range(i + 1, n)])


def _manual_tiny_paths(clf, images_uint8):
    """Bits of TinyPatchNet's ReLU, from a forward written out by hand."""
    x = torch.as_tensor(images_uint8.astype(np.float32) / 255).permute(0, 3, 1, 2)
    module = clf.module_
    with torch.no_grad():
        z = module.core[0]((x - module.mean) / module.std)
    return (z > 0).reshape(len(x), -1).numpy().astype(np.float64)


# ---- recorded values ---------------------------------------------------------------


def test_last_epoch_equals_a_manual_forward_and_numpy_measures(fitted, probe):
    monitor = fitted.callbacks_["paths"]
    assert monitor.epochs_ == [1, 2, 3]
    assert monitor.layers_ == ["core.1"]
    n_units = monitor.n_units_["core.1"]
    assert n_units == 8 * 12 * 12
    # the stored paths of the last epoch are those of the final module
    bits = _manual_tiny_paths(fitted, probe)
    np.testing.assert_array_equal(_bits(monitor.paths_["core.1"], n_units), bits)
    x = np.ascontiguousarray(probe.transpose(0, 3, 1, 2), dtype=np.float32) / 255
    recomputed = relu_paths(fitted.module_, x)
    np.testing.assert_array_equal(recomputed["core.1"], monitor.paths_["core.1"])

    before = _bits(monitor.previous_paths_["core.1"], n_units)
    pairs = _all_pairs(N_PROBE)
    np.testing.assert_array_equal(monitor.pairs_, pairs)
    self_sim = _cosine(before, bits)
    i, j = pairs.T
    cross = _cosine(bits[i] * bits[j], before[i] * before[j])
    overlap = (bits[i] * bits[j]).sum(1)
    assert monitor.self_similarity_["core.1"].shape == (2, N_PROBE)
    assert monitor.cross_similarity_["core.1"].shape == (2, len(pairs))
    assert monitor.overlap_["core.1"].shape == (3, len(pairs))
    assert monitor.overlap_["core.1"].dtype == np.int32  # compact: the same counts
    assert monitor.neighbour_ranks_["core.1"].dtype == np.int32
    np.testing.assert_allclose(monitor.self_similarity_["core.1"][-1], self_sim, rtol=1e-12)
    np.testing.assert_allclose(monitor.cross_similarity_["core.1"][-1], cross, rtol=1e-12)
    np.testing.assert_array_equal(monitor.overlap_["core.1"][-1], overlap)

    # neighbour ranks of the default queries (first 3 images) by overlap
    gram = bits @ bits.T
    ranks = monitor.neighbour_ranks_["core.1"]
    assert ranks.shape == (3, 3, N_PROBE)
    for q in range(3):
        others = sorted((j for j in range(N_PROBE) if j != q), key=lambda j: (-gram[q, j], j))
        expected = np.full(N_PROBE, -1)
        expected[others] = np.arange(N_PROBE - 1)
        np.testing.assert_array_equal(ranks[-1, q], expected)


def test_history_holds_the_summaries_of_the_recorded_arrays(fitted, probe):
    monitor = fitted.callbacks_["paths"]
    history = fitted.history_
    assert len(history[:, "path_on_fraction"]) == 3
    # no t-1 at the first recorded epoch: the similarities start at the second
    assert len(history[:, "path_self_mean"]) == 2
    last = history[-1]
    self_sim = monitor.self_similarity_["core.1"][-1]
    cross = monitor.cross_similarity_["core.1"][-1]
    for prefix, values in (("path_self", self_sim), ("path_cross", cross)):
        finite = values[~np.isnan(values)]
        assert last[f"{prefix}_mean"]["core.1"] == pytest.approx(finite.mean(), rel=1e-12)
        for stat, q in (("q10", 0.1), ("q50", 0.5), ("q90", 0.9)):
            assert last[f"{prefix}_{stat}"]["core.1"] == pytest.approx(
                np.quantile(finite, q), rel=1e-12
            )
    bits = _manual_tiny_paths(fitted, probe)
    assert last["path_on_fraction"]["core.1"] == pytest.approx(bits.mean(), rel=1e-12)
    assert last["path_monitor_dur"] >= 0
    assert not any(key.startswith("activation_") for key in last)


def test_reused_previous_counts_give_the_recomputed_numbers(fitted):
    # the previous epoch's overlaps serve as this epoch's norms; a monitor pickled before
    # that cache existed (no _previous_counts) recomputes them: the same numbers
    monitor = pickle.loads(pickle.dumps(fitted.callbacks_["paths"]))
    module = fitted.module_
    monitor._record_epoch(module)
    assert monitor._previous_counts[0] is monitor.paths_
    cached, _ = monitor._record_epoch(module)
    del monitor._previous_counts
    monitor.paths_ = monitor.previous_paths_
    recomputed, _ = monitor._record_epoch(module)
    for kind in ("overlap", "neighbour_ranks", "self_similarity", "cross_similarity"):
        np.testing.assert_array_equal(cached[kind]["core.1"], recomputed[kind]["core.1"])


def test_probe_forward_in_small_batches_records_the_same_paths(data, probe, monkeypatch):
    from skpatch.diagnostics import _monitor

    X, y = data
    # 3 images per forward on the 8 x 12 x 12 units of TinyPatchNet's ReLU
    monkeypatch.setattr(_monitor, "_FORWARD_BYTES", 4 * 8 * 12 * 12 * 3)
    clf = _patch_cnn(PathMonitor(probe), max_epochs=2).fit(X, y)
    monitor = clf.callbacks_["paths"]
    assert monitor._forward_batch_size() == 3
    x = np.ascontiguousarray(probe.transpose(0, 3, 1, 2), dtype=np.float32) / 255
    np.testing.assert_array_equal(monitor.paths_["core.1"], relu_paths(clf.module_, x)["core.1"])


def test_no_hooks_left_and_training_mode_untouched(fitted):
    for name, module in fitted.net_.module_.named_modules():
        assert not module._forward_hooks, name
        assert not module._forward_pre_hooks, name
    assert not torch.nn.modules.module._global_forward_hooks


def test_state_is_numpy_only_and_survives_pickling(fitted, data):
    X, _ = data
    monitor = fitted.callbacks_["paths"]
    for value in vars(monitor).values():
        assert not isinstance(value, (torch.Tensor, torch.nn.Module))
    restored = pickle.loads(pickle.dumps(monitor))
    kinds = ("self_similarity_", "cross_similarity_", "overlap_", "neighbour_ranks_", "paths_")
    for name in kinds:
        for layer, array in getattr(monitor, name).items():
            np.testing.assert_array_equal(getattr(restored, name)[layer], array)
    assert restored.epochs_ == monitor.epochs_
    clf = pickle.loads(pickle.dumps(fitted))
    np.testing.assert_array_equal(
        clf.callbacks_["paths"].overlap_["core.1"], monitor.overlap_["core.1"]
    )
    np.testing.assert_array_equal(clf.predict_proba(X), fitted.predict_proba(X))


def test_clone_keeps_parameters_and_drops_state(fitted, probe):
    monitor = PathMonitor(probe, layers=["core.1"], every=2, queries=[1], pairs=[[0, 1]])
    twin = clone(monitor)
    assert twin.get_params().keys() == monitor.get_params().keys() == {
        "X_probe", "layers", "activations", "pairs", "queries", "every", "directory"
    }
    assert twin.every == 2 and twin.layers == ["core.1"]
    np.testing.assert_array_equal(twin.X_probe, probe)
    fitted_monitor = clone(fitted.callbacks_["paths"])
    assert not hasattr(fitted_monitor, "epochs_")
    # the classifier's own clone gives an unfitted monitor with the same parameters
    twin_clf = clone(fitted)
    (name, cb), = twin_clf.callbacks
    assert name == "paths" and not hasattr(cb, "epochs_")
    np.testing.assert_array_equal(cb.X_probe, probe)


def test_every_two_records_half_the_epochs(data, probe):
    X, y = data
    clf = _patch_cnn(PathMonitor(probe, every=2), max_epochs=4).fit(X, y)
    monitor = clf.callbacks_["paths"]
    assert monitor.epochs_ == [2, 4]
    assert [row["epoch"] for row in clf.history_ if "path_on_fraction" in row] == [2, 4]
    assert len(clf.history_[:, "path_self_mean"]) == 1
    assert monitor.self_similarity_["core.1"].shape == (1, N_PROBE)
    assert monitor.overlap_["core.1"].shape == (2, N_PROBE * (N_PROBE - 1) // 2)


def test_directory_writes_loadable_npz_per_recorded_epoch(data, probe, tmp_path):
    X, y = data
    folder = tmp_path / "paths"
    clf = _patch_cnn(PathMonitor(probe, directory=str(folder)), max_epochs=2).fit(X, y)
    monitor = clf.callbacks_["paths"]
    assert sorted(p.name for p in folder.iterdir()) == ["epoch_001.npz", "epoch_002.npz"]
    with np.load(folder / "epoch_001.npz", allow_pickle=False) as first:
        assert "self_similarity/core.1" not in first.files
        np.testing.assert_array_equal(first["overlap/core.1"], monitor.overlap_["core.1"][0])
    with np.load(folder / "epoch_002.npz", allow_pickle=False) as last:
        assert int(last["epoch"]) == 2
        assert last["layers"].tolist() == ["core.1"]
        assert last["n_units"].tolist() == [monitor.n_units_["core.1"]]
        np.testing.assert_array_equal(last["pairs"], monitor.pairs_)
        np.testing.assert_array_equal(last["queries"], monitor.queries_)
        np.testing.assert_array_equal(last["paths/core.1"], monitor.paths_["core.1"])
        for kind in ("self_similarity", "cross_similarity", "overlap", "neighbour_ranks"):
            np.testing.assert_array_equal(
                last[f"{kind}/core.1"], getattr(monitor, kind + "_")["core.1"][-1]
            )


# ---- other nets -----------------------------------------------------------------


def test_bagnet_paths_on_the_patch_net_module(data, probe):
    X, y = data
    params = dict(TINY_BAGNET, max_epochs=2)
    clf = BagNetClassifier(callbacks=[PathMonitor(probe, queries=[0, 5])], **params).fit(X, y)
    monitor = clf.callbacks_["user_0"]
    relus = [n for n, m in clf.module_.named_modules() if isinstance(m, torch.nn.ReLU)]
    assert monitor.layers_ == relus and relus[0].startswith("core.")
    x = np.ascontiguousarray(probe.transpose(0, 3, 1, 2), dtype=np.float32) / 255
    expected = relu_paths(clf.module_, x)
    for name in relus:
        np.testing.assert_array_equal(monitor.paths_[name], expected[name])
        assert monitor.neighbour_ranks_[name].shape == (2, 2, N_PROBE)
        assert monitor.self_similarity_[name].shape == (1, N_PROBE)


def _plain_net(monitor, **params):
    from skorch import NeuralNetClassifier

    module = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(),
        torch.nn.Linear(4 * 10 * 10, 6), torch.nn.ReLU(), torch.nn.Linear(6, 2),
    )
    torch.manual_seed(0)
    settings = dict(
        criterion=torch.nn.CrossEntropyLoss, max_epochs=3, lr=0.1, batch_size=8,
        train_split=None, verbose=0, callbacks=[("paths", monitor)],
        iterator_train__shuffle=False,
    )
    settings.update(params)
    return NeuralNetClassifier(module, **settings)


def test_plain_skorch_net_with_activations_and_chosen_pairs(data):
    X, y = data
    x = np.ascontiguousarray(X.transpose(0, 3, 1, 2))
    pairs = np.array([[0, 3], [5, 1], [2, 7]])
    monitor = PathMonitor(x[:N_PROBE], activations=True, pairs=pairs, layers=["4"])
    net = _plain_net(monitor).fit(x, y)
    assert dict(net.callbacks_)["paths"] is monitor  # skorch keeps the user's object
    assert monitor.layers_ == ["4"]
    np.testing.assert_array_equal(monitor.pairs_, pairs)
    values = relu_activations(net.module_, x[:N_PROBE], layers=["4"])["4"]
    np.testing.assert_array_equal(monitor.activations_["4"], values)
    before = monitor.previous_activations_["4"].astype(np.float64)
    after = values.astype(np.float64)
    np.testing.assert_allclose(
        monitor.activation_self_similarity_["4"][-1], _cosine(before, after), rtol=1e-12
    )
    i, j = pairs.T
    np.testing.assert_allclose(
        monitor.activation_cross_similarity_["4"][-1],
        _cosine(after[i] * after[j], before[i] * before[j]), rtol=1e-12,
    )
    assert monitor.overlap_["4"].shape == (3, 3)
    assert "activation_cross_q50" in net.history[-1]


def test_plain_net_grid_search_sets_monitor_parameters(data):
    X, y = data
    x = np.ascontiguousarray(X.transpose(0, 3, 1, 2))
    search = GridSearchCV(
        _plain_net(PathMonitor(x[:N_PROBE]), max_epochs=2),
        {"callbacks__paths__every": [1, 2]}, cv=2, scoring="accuracy",
    ).fit(x, y)
    monitor = dict(search.best_estimator_.callbacks_)["paths"]
    assert monitor.every == search.best_params_["callbacks__paths__every"]
    assert monitor.epochs_ == ([1, 2] if monitor.every == 1 else [2])


def test_patch_cnn_grid_search_over_monitor_settings(data, probe):
    X, y = data
    candidates = [[("paths", PathMonitor(probe, every=k))] for k in (1, 2)]
    search = GridSearchCV(
        _patch_cnn(None, max_epochs=2), {"callbacks": candidates}, cv=2
    ).fit(X, y)
    monitor = search.best_estimator_.callbacks_["paths"]
    assert monitor.epochs_ == ([1, 2] if monitor.every == 1 else [2])


def test_patch_cnn_dunder_route_to_monitor_parameters(probe):
    clf = _patch_cnn(PathMonitor(probe))
    clf.set_params(callbacks__paths__every=2, max_epochs=3)
    assert clf.callbacks[0][1].every == 2 and clf.max_epochs == 3
    with pytest.raises(ValueError, match=r"callbacks__nope__every.*among \['paths'\]"):
        clf.set_params(callbacks__nope__every=2)
    unnamed = _patch_cnn(PathMonitor(probe))
    unnamed.set_params(callbacks=[PathMonitor(probe)], callbacks__user_0__every=3)
    assert unnamed.callbacks[0].every == 3


def test_grid_search_tunes_a_monitor_of_a_patch_cnn(data, probe):
    from sklearn.model_selection import GridSearchCV

    X, y = data
    search = GridSearchCV(
        _patch_cnn(PathMonitor(probe), max_epochs=2), {"callbacks__paths__every": [1, 2]}, cv=2
    ).fit(X, y)
    assert [p["callbacks__paths__every"] for p in search.cv_results_["params"]] == [1, 2]
    monitor = search.best_estimator_.callbacks_["paths"]
    assert monitor.epochs_ == ([1, 2] if monitor.every == 1 else [2])


# ---- errors -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "params, match",
    [
        (dict(every=0), "'every' parameter"),
        (dict(every=1.5), "'every' parameter"),
        (dict(activations="yes"), "'activations' parameter"),
        (dict(layers="core.1"), "'layers' parameter"),
        (dict(directory=3), "'directory' parameter"),
        (dict(pairs=[[0, 0]]), "pairs must pair distinct"),
        (dict(pairs=[[0, N_PROBE]]), "pairs must hold probe indices"),
        (dict(pairs=[0, 1]), r"pairs must be an \(m, 2\)"),
        (dict(pairs=[[0.0, 1.0]]), "pairs must hold integer"),
        (dict(queries=[N_PROBE]), "queries must hold probe indices"),
        (dict(queries=[]), "queries must be a non-empty"),
    ],
)
def test_bad_parameters_name_the_parameter(probe, params, match):
    with pytest.raises((ValueError, TypeError), match=match):
        PathMonitor(probe, **params).initialize()


def test_bad_probe_and_layers_fail_at_fit(data, probe):
    X, y = data
    with pytest.raises(ValueError, match="X_probe must hold at least 2"):
        _patch_cnn(PathMonitor(probe[:1])).fit(X, y)
    with pytest.raises(ValueError, match="X_probe has 1 channels"):
        _patch_cnn(PathMonitor(probe[..., 0:1])).fit(X, y)
    with pytest.raises(ValueError, match="layers"):
        _patch_cnn(PathMonitor(probe, layers=["core.0"])).fit(X, y)


# ---- every recorded number against a slow reference from the recorded bits -------------


def _reference_epoch(bits, pairs, queries):
    """Overlap and neighbour ranks of one epoch's bool paths, one pair at a time."""
    overlap = np.array([int(np.count_nonzero(bits[i] & bits[j])) for i, j in pairs])
    n_images = len(bits)
    ranks = np.full((len(queries), n_images), -1)
    for row, q in enumerate(queries):
        counts = {j: int(np.count_nonzero(bits[q] & bits[j])) for j in range(n_images) if j != q}
        for rank, j in enumerate(sorted(counts, key=lambda j: (-counts[j], j))):
            ranks[row, j] = rank
    return overlap, ranks


def _exact_cosine(shared, norm_a, norm_b):
    """shared / sqrt(norm_a * norm_b) from exact integer counts, in float64; NaN at 0."""
    product = norm_a * norm_b
    return np.nan if product == 0 else np.float64(shared) / np.sqrt(np.float64(product))


def _reference_similarities(before, after, pairs):
    self_sim = [
        _exact_cosine(
            np.count_nonzero(b & a), np.count_nonzero(b), np.count_nonzero(a)
        )
        for b, a in zip(before, after)
    ]
    cross = []
    for i, j in pairs:
        shared = np.count_nonzero(after[i] & after[j] & before[i] & before[j])
        cross.append(_exact_cosine(
            shared, np.count_nonzero(after[i] & after[j]), np.count_nonzero(before[i] & before[j])
        ))
    return np.array(self_sim), np.array(cross)


def _assert_identical(actual, expected):
    """Equal values, NaN where NaN: the same float64 division of the same integers."""
    actual, expected = np.asarray(actual), np.asarray(expected, dtype=np.float64)
    assert actual.dtype == np.float64 and actual.shape == expected.shape
    np.testing.assert_array_equal(np.isnan(actual), np.isnan(expected))
    finite = ~np.isnan(expected)
    assert np.array_equal(actual[finite], expected[finite]), np.abs(
        actual[finite] - expected[finite]
    ).max()


@pytest.mark.parametrize("pairs", [None, [[0, 3], [5, 1], [1, 5], [9, 2], [4, 6]]],
                         ids=["all", "some"])
def test_every_recorded_number_equals_a_slow_reference(data, tmp_path, pairs):
    """A seeded ResNet-10 (9 ReLU layers), 10 probe images, 3 epochs: every overlap, rank,
    self and cross similarity and history summary, from the bits of each recorded epoch
    (read back from the npz files) by plain loops over pairs."""
    X, y = data
    probe = np.round(X[:10] * 255).astype(np.uint8)
    monitor = PathMonitor(probe, pairs=pairs, queries=[0, 7, 3], directory=str(tmp_path))
    clf = PatchCNNClassifier(
        patch_size=6, module="resnet10", width=4, max_epochs=3, batch_size=8, lr=0.05,
        augment=None, device="cpu", verbose=0, random_state=0,
        callbacks=[("paths", monitor)],
    ).fit(X, y)
    monitor = clf.callbacks_["paths"]
    assert len(monitor.layers_) == 9 and monitor.epochs_ == [1, 2, 3]
    pair_list = _all_pairs(10) if pairs is None else np.array(pairs)
    np.testing.assert_array_equal(monitor.pairs_, pair_list)
    bits = []
    for epoch in monitor.epochs_:
        with np.load(tmp_path / f"epoch_{epoch:03d}.npz", allow_pickle=False) as saved:
            bits.append({
                name: np.unpackbits(saved[f"paths/{name}"], axis=1)[:, : monitor.n_units_[name]]
                .astype(bool)
                for name in monitor.layers_
            })
    n_defined = 0
    for name in monitor.layers_:
        for k in range(3):
            overlap, ranks = _reference_epoch(bits[k][name], pair_list, [0, 7, 3])
            assert monitor.overlap_[name].dtype == np.int32
            np.testing.assert_array_equal(monitor.overlap_[name][k], overlap)
            assert monitor.neighbour_ranks_[name].dtype == np.int32
            np.testing.assert_array_equal(monitor.neighbour_ranks_[name][k], ranks)
            row = clf.history_[k]
            on = sum(int(np.count_nonzero(b)) for b in bits[k][name])
            assert row["path_on_fraction"][name] == on / (10 * monitor.n_units_[name])
        for k in range(2):
            self_sim, cross = _reference_similarities(bits[k][name], bits[k + 1][name], pair_list)
            _assert_identical(monitor.self_similarity_[name][k], self_sim)
            _assert_identical(monitor.cross_similarity_[name][k], cross)
            n_defined += np.isfinite(cross).sum()
            row = clf.history_[k + 1]
            for prefix, values in (("path_self", self_sim), ("path_cross", cross)):
                finite = values[~np.isnan(values)]
                if len(finite) == 0:
                    assert np.isnan(row[f"{prefix}_mean"][name])
                    continue
                assert row[f"{prefix}_mean"][name] == finite.mean()
                for stat, q in (("q10", 0.1), ("q50", 0.5), ("q90", 0.9)):
                    assert row[f"{prefix}_{stat}"][name] == np.quantile(finite, q)
    assert n_defined > 0


@pytest.mark.gpu
def test_monitor_of_a_cuda_net_equals_the_cpu_measures_of_its_paths(data, tmp_path):
    # the measures run on the net's GPU; the CPU functions on the same recorded bits agree
    from skpatch.diagnostics import (
        cross_path_similarity,
        neighbour_ranks,
        path_overlap,
        path_similarity,
    )

    X, y = data
    x = np.ascontiguousarray(X.transpose(0, 3, 1, 2))
    monitor = PathMonitor(x[:N_PROBE], directory=str(tmp_path))
    _plain_net(monitor, device="cuda").fit(x, y)
    layers = monitor.layers_
    paths = []
    for epoch in monitor.epochs_:
        with np.load(tmp_path / f"epoch_{epoch:03d}.npz", allow_pickle=False) as saved:
            paths.append({name: saved[f"paths/{name}"] for name in layers})
    for k, after in enumerate(paths):
        for name, overlap in path_overlap(after).items():
            np.testing.assert_array_equal(monitor.overlap_[name][k], overlap)
        for name, ranks in neighbour_ranks(after, monitor.queries_).items():
            np.testing.assert_array_equal(monitor.neighbour_ranks_[name][k], ranks)
        if k == 0:
            continue
        for kind, values in (
            ("self_similarity_", path_similarity(paths[k - 1], after)),
            ("cross_similarity_", cross_path_similarity(paths[k - 1], after)),
        ):
            for name, expected in values.items():
                np.testing.assert_array_equal(getattr(monitor, kind)[name][k - 1], expected)
