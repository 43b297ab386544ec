"""skpatch.diagnostics: ReLU paths and activations against plain forward hooks, and
every measure against a slow per-pair numpy reference and hand-worked cases."""

import re

import numpy as np
import pytest
import torch
from _helpers import assert_close_to_scale, randomize_batchnorm
from torch import nn

from skpatch.diagnostics import (
    activation_similarity,
    cross_activation_similarity,
    cross_path_similarity,
    early_mid_ratio,
    neighbour_ranks,
    path_overlap,
    path_similarity,
    relu_activations,
    relu_paths,
)
from skpatch.diagnostics import _gram, _measures
from skpatch.diagnostics._paths import _packbits_torch
from skpatch.nn import resnet10

N_IMAGES = 10


def _tiny_sequential():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(),
        nn.Conv2d(4, 3, 3), nn.ReLU(),
        nn.Flatten(), nn.Linear(3 * 4 * 4, 5),
    )


def _tiny_resnet():
    torch.manual_seed(0)
    return randomize_batchnorm(resnet10(n_classes=3, in_channels=3, width=2))


NETWORKS = {"sequential": _tiny_sequential, "resnet10": _tiny_resnet}


def _images(n_images=N_IMAGES, seed=0):
    return np.random.default_rng(seed).normal(size=(n_images, 3, 6, 6)).astype(np.float32)


def _perturbed(net, seed=1, scale=0.3):
    """A copy of ``net`` with noisy weights: the paths of a 'later epoch'."""
    import copy

    later = copy.deepcopy(net)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in later.parameters():
            param.add_(scale * param.abs().mean() * torch.randn(param.shape, generator=gen))
    return later


def _reference_outputs(net, X):
    """Every nn.ReLU's output, (n, units) float32, from hooks of our own, one forward."""
    outputs, handles = {}, []
    for name, module in net.named_modules():
        if isinstance(module, nn.ReLU):
            def hook(module, inputs, output, name=name):
                outputs[name] = output.detach().reshape(len(output), -1).numpy().copy()

            handles.append(module.register_forward_hook(hook))
    net.eval()
    try:
        with torch.no_grad():
            net(torch.from_numpy(X))
    finally:
        for handle in handles:
            handle.remove()
    return outputs


def _bits(paths):
    return {layer: np.unpackbits(packed, axis=1).astype(np.float64) for layer, packed in paths.items()}


def _cos(u, v):
    norms = np.linalg.norm(u) * np.linalg.norm(v)
    return np.nan if norms == 0 else float(u @ v / norms)


def _assert_equal_or_both_nan(actual, expected, rtol=1e-12):
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape
    np.testing.assert_array_equal(np.isnan(actual), np.isnan(expected))
    finite = ~np.isnan(expected)
    assert_close_to_scale(actual[finite], expected[finite], rtol)


@pytest.fixture(params=sorted(NETWORKS))
def epochs(request):
    """(net, X, paths before, paths after, activations before, activations after, outputs)."""
    net = NETWORKS[request.param]()
    later = _perturbed(net)
    X = _images()
    return {
        "net": net, "X": X,
        "before": relu_paths(net, X), "after": relu_paths(later, X),
        "act_before": relu_activations(net, X, dtype="float32"),
        "act_after": relu_activations(later, X, dtype="float32"),
        "outputs": _reference_outputs(net, X),
    }


# ------------------------------------------------------------------ recording


def test_paths_and_activations_match_forward_hooks(epochs):
    outputs = epochs["outputs"]
    paths = epochs["before"]
    assert list(paths) == list(outputs)  # every ReLU, in forward order
    for layer, output in outputs.items():
        units = output.shape[1]
        assert paths[layer].dtype == np.uint8
        assert paths[layer].shape == (N_IMAGES, -(-units // 8))
        np.testing.assert_array_equal(np.unpackbits(paths[layer], axis=1, count=units), output > 0)
        np.testing.assert_array_equal(paths[layer], np.packbits(output > 0, axis=1))
        # the masks are neither all on nor all off: the test sees both kinds of bit
        assert 0 < (output > 0).mean() < 1
        np.testing.assert_array_equal(epochs["act_before"][layer], output)
    half = relu_activations(epochs["net"], epochs["X"])
    for layer, output in outputs.items():
        assert half[layer].dtype == np.float16
        np.testing.assert_array_equal(half[layer], output.astype(np.float16))


def test_resnet_paths_cover_every_relu_in_forward_order():
    net = _tiny_resnet()
    names = [name for name, m in net.named_modules() if isinstance(m, nn.ReLU)]
    paths = relu_paths(net, _images(3))
    assert list(paths) == names and len(names) == 9


@pytest.mark.parametrize("build", [_tiny_sequential, _tiny_resnet])
def test_batch_size_does_not_change_the_bits(build):
    net, X = build(), _images(7)
    full = relu_paths(net, X, batch_size=256)
    for batch_size in (1, 3):
        other = relu_paths(net, X, batch_size=batch_size)
        assert list(other) == list(full)
        for layer in full:
            np.testing.assert_array_equal(other[layer], full[layer])


def test_tensor_and_array_input_give_identical_results():
    net, X = _tiny_resnet(), _images(5)
    from_array = relu_paths(net, X, batch_size=2)
    from_tensor = relu_paths(net, torch.from_numpy(X), batch_size=2)
    from_float64 = relu_paths(net, X.astype(np.float64), batch_size=2)
    readonly = X.copy()
    readonly.setflags(write=False)
    from_readonly = relu_paths(net, readonly, batch_size=2)
    for layer in from_array:
        for other in (from_tensor, from_float64, from_readonly):
            np.testing.assert_array_equal(other[layer], from_array[layer])
    act_array = relu_activations(net, X, dtype="float32")
    act_tensor = relu_activations(net, torch.from_numpy(X), dtype="float32")
    for layer in act_array:
        np.testing.assert_array_equal(act_tensor[layer], act_array[layer])


def _assert_no_hooks(net):
    for name, module in net.named_modules():
        assert not module._forward_hooks, name
        assert not module._forward_pre_hooks, name


def test_hooks_removed_and_training_modes_restored():
    net = _tiny_resnet()
    net.train()
    net.stages[1].eval()  # mixed modes: each submodule gets its own back
    modes = {name: m.training for name, m in net.named_modules()}
    bn_mean = net.stem[1].running_mean.clone()
    relu_paths(net, _images(4))
    relu_activations(net, _images(4))
    _assert_no_hooks(net)
    assert {name: m.training for name, m in net.named_modules()} == modes
    # ran in eval mode: the BatchNorm statistics did not move
    torch.testing.assert_close(net.stem[1].running_mean, bn_mean, rtol=0, atol=0)


class _FailsAfterFirstReLU(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.relu, self.later = nn.Conv2d(3, 2, 1), nn.ReLU(), nn.ReLU()

    def forward(self, x):
        self.relu(self.conv(x))
        raise RuntimeError("boom in forward")


def test_hooks_removed_and_mode_restored_after_an_exception_in_forward():
    net = _FailsAfterFirstReLU().train()
    with pytest.raises(RuntimeError, match="boom in forward"):
        relu_paths(net, _images(2))
    _assert_no_hooks(net)
    assert all(m.training for m in net.modules())


class _SharedReLU(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.conv2, self.act = nn.Conv2d(3, 2, 1), nn.Conv2d(2, 2, 1), nn.ReLU()
        self.alias = self.act  # a second name does not make it a second module

    def forward(self, x):
        return self.act(self.conv2(self.act(self.conv1(x))))


def test_a_relu_called_twice_per_forward_is_an_error_naming_it():
    net = _SharedReLU()
    with pytest.raises(ValueError, match="'act' is called more than once per forward"):
        relu_paths(net, _images(2))
    _assert_no_hooks(net)
    assert net.training


def test_layers_selection_keeps_forward_order():
    net, X = _tiny_resnet(), _images(4)
    full = relu_paths(net, X)
    chosen = relu_paths(net, X, layers=["stages.1.0.relu2", "stem.2"])
    assert list(chosen) == ["stem.2", "stages.1.0.relu2"]
    for layer in chosen:
        np.testing.assert_array_equal(chosen[layer], full[layer])
    activations = relu_activations(net, X, layers=("stages.3.0.relu1",))
    assert list(activations) == ["stages.3.0.relu1"]


@pytest.mark.parametrize("layer", ["nope", "stem.0"])
def test_unknown_or_non_relu_layer_is_an_error_listing_the_relus(layer):
    with pytest.raises(ValueError, match=re.escape(f"layers holds ['{layer}']")) as info:
        relu_paths(_tiny_resnet(), _images(2), layers=[layer])
    assert "'stem.2'" in str(info.value) and "'stages.3.0.relu2'" in str(info.value)


def test_a_listed_relu_that_the_forward_never_calls_is_an_error():
    net = _FailsAfterFirstReLU()
    net.forward = lambda x: net.relu(net.conv(x))
    assert list(relu_paths(net, _images(2))) == ["relu"]  # None: the called ones only
    with pytest.raises(ValueError, match=r"\['later'\], which the forward never calls"):
        relu_paths(net, _images(2), layers=["relu", "later"])


def test_input_errors_and_parameterless_module():
    with pytest.raises(ValueError, match="X holds no images"):
        relu_paths(_tiny_sequential(), np.zeros((0, 3, 6, 6)))
    with pytest.raises(ValueError, match="batch_size"):
        relu_paths(_tiny_sequential(), _images(2), batch_size=0)
    with pytest.raises(ValueError, match="dtype"):
        relu_activations(_tiny_sequential(), _images(2), dtype="float64")
    paths = relu_paths(nn.Sequential(nn.Flatten(), nn.ReLU()), [[[-1.0, 2.0, 0.0]]])
    np.testing.assert_array_equal(paths["1"], np.packbits([[0, 1, 0]], axis=1))


class _NegateInPlace(nn.Module):
    def forward(self, x):
        return x.mul_(-1)


def test_inplace_relu_recorded_before_later_inplace_changes():
    net = nn.Sequential(nn.Flatten(), nn.ReLU(inplace=True), _NegateInPlace())
    X = np.array([[[-1.0, 2.0, 0.5, 0.0]]])
    np.testing.assert_array_equal(relu_paths(net, X)["1"], np.packbits([[0, 1, 1, 0]], axis=1))
    values = relu_activations(net, X, dtype="float32")["1"]
    np.testing.assert_array_equal(values, [[0.0, 2.0, 0.5, 0.0]])


@pytest.mark.parametrize("n_units", [1, 7, 8, 13, 64])
def test_device_side_packing_equals_numpy_packbits(n_units):
    mask = torch.from_numpy(np.random.default_rng(n_units).random((5, n_units)) < 0.5)
    np.testing.assert_array_equal(_packbits_torch(mask).numpy(), np.packbits(mask.numpy(), axis=1))


# ------------------------------------------------------- measures: reference


SOME_PAIRS = np.array([[0, 1], [3, 7], [9, 2], [4, 4], [5, 0]])


def test_path_similarity_matches_per_image_reference(epochs):
    before, after = _bits(epochs["before"]), _bits(epochs["after"])
    similarity = path_similarity(epochs["before"], epochs["after"])
    assert list(similarity) == list(epochs["after"])
    for layer in after:
        expected = [_cos(after[layer][i], before[layer][i]) for i in range(N_IMAGES)]
        assert similarity[layer].dtype == np.float64
        _assert_equal_or_both_nan(similarity[layer], expected)


@pytest.mark.parametrize("pairs", [None, SOME_PAIRS], ids=["all", "some"])
def test_cross_path_similarity_and_overlap_match_per_pair_reference(epochs, pairs):
    before, after = _bits(epochs["before"]), _bits(epochs["after"])
    pair_list = np.column_stack(np.triu_indices(N_IMAGES, 1)) if pairs is None else pairs
    similarity = cross_path_similarity(epochs["before"], epochs["after"], pairs=pairs)
    overlap = path_overlap(epochs["after"], pairs=pairs)
    n_defined = 0
    for layer in after:
        t, s = after[layer], before[layer]
        expected = [_cos(t[i] * t[j], s[i] * s[j]) for i, j in pair_list]
        _assert_equal_or_both_nan(similarity[layer], expected)
        n_defined += np.isfinite(expected).sum()
        assert overlap[layer].dtype == np.int64
        np.testing.assert_array_equal(overlap[layer], [int(t[i] @ t[j]) for i, j in pair_list])
    assert n_defined > 0


@pytest.mark.parametrize("pairs", [None, SOME_PAIRS], ids=["all", "some"])
def test_activation_measures_match_per_pair_reference(epochs, pairs):
    before, after = epochs["act_before"], epochs["act_after"]
    pair_list = np.column_stack(np.triu_indices(N_IMAGES, 1)) if pairs is None else pairs
    self_similarity = activation_similarity(before, after)
    cross = cross_activation_similarity(before, after, pairs=pairs)
    for layer in after:
        t, s = after[layer].astype(np.float64), before[layer].astype(np.float64)
        _assert_equal_or_both_nan(
            self_similarity[layer], [_cos(t[i], s[i]) for i in range(N_IMAGES)], rtol=1e-10
        )
        _assert_equal_or_both_nan(
            cross[layer], [_cos(t[i] * t[j], s[i] * s[j]) for i, j in pair_list], rtol=1e-10
        )


def test_neighbour_ranks_match_sorted_reference(epochs):
    queries = [0, 4, 4, 9]
    ranks = neighbour_ranks(epochs["after"], queries)
    for layer, bits in _bits(epochs["after"]).items():
        assert ranks[layer].shape == (len(queries), N_IMAGES)
        assert ranks[layer].dtype == np.int64
        for row, q in enumerate(queries):
            others = sorted((j for j in range(N_IMAGES) if j != q), key=lambda j: (-(bits[q] @ bits[j]), j))
            expected = np.full(N_IMAGES, -1)
            expected[others] = np.arange(N_IMAGES - 1)
            np.testing.assert_array_equal(ranks[layer][row], expected)


# -------------------------------------------------------- measures: by hand

# 3 images, 8 units; epoch t-1 (before) and epoch t (after):
#   before: p0 = 11110000  p1 = 11001100  p2 = 00000000
#   after:  p0 = 11100000  p1 = 10101010  p2 = 00001111
HAND_BEFORE = {"relu": np.packbits([[1, 1, 1, 1, 0, 0, 0, 0],
                                    [1, 1, 0, 0, 1, 1, 0, 0],
                                    [0, 0, 0, 0, 0, 0, 0, 0]], axis=1)}
HAND_AFTER = {"relu": np.packbits([[1, 1, 1, 0, 0, 0, 0, 0],
                                   [1, 0, 1, 0, 1, 0, 1, 0],
                                   [0, 0, 0, 0, 1, 1, 1, 1]], axis=1)}


def test_hand_worked_self_similarity():
    # p0: shared 3 of |4| and |3| -> 3 / sqrt(12); p1: shared {0, 4} -> 2 / sqrt(4 * 4);
    # p2 all zeros before -> NaN
    _assert_equal_or_both_nan(
        path_similarity(HAND_BEFORE, HAND_AFTER)["relu"], [3 / np.sqrt(12), 0.5, np.nan]
    )


def test_hand_worked_cross_similarity_and_overlap():
    # (0, 1): after p0*p1 = 10100000 (2), before p0*p1 = 11000000 (2), common 10000000 (1)
    #         -> 1 / sqrt(2 * 2) = 0.5
    # (0, 2): after p0*p2 = 0 -> NaN;  (1, 2): after 00001010 but before p1*p2 = 0 -> NaN
    _assert_equal_or_both_nan(
        cross_path_similarity(HAND_BEFORE, HAND_AFTER)["relu"], [0.5, np.nan, np.nan]
    )
    # overlaps after: p0.p1 = 2, p0.p2 = 0, p1.p2 = 2; before: 2, 0, 0
    np.testing.assert_array_equal(path_overlap(HAND_AFTER)["relu"], [2, 0, 2])
    np.testing.assert_array_equal(path_overlap(HAND_BEFORE)["relu"], [2, 0, 0])
    # the pair (1, 1) is the image with itself: cos(p1^t, p1^(t-1)) = 0.5, as above
    _assert_equal_or_both_nan(
        cross_path_similarity(HAND_BEFORE, HAND_AFTER, pairs=[[1, 1], [1, 0]])["relu"], [0.5, 0.5]
    )


def test_hand_worked_neighbour_ranks():
    # query 1 after: overlap with p0 = 2, with p2 = 2: a tie, broken by index
    # query 2 after: overlap with p0 = 0, with p1 = 2 -> p1 first
    np.testing.assert_array_equal(
        neighbour_ranks(HAND_AFTER, [1, 2])["relu"], [[0, -1, 1], [1, 0, -1]]
    )


def test_hand_worked_activation_measures():
    before = {"relu": np.array([[1.0, 2.0, 0.0], [2.0, 0.0, 0.0], [0.0, 0.0, 0.0]])}
    after = {"relu": np.array([[2.0, 1.0, 1.0], [1.0, 1.0, 0.0], [0.0, 3.0, 0.0]])}
    # self: a0: (2 + 2) / (sqrt(5) sqrt(6)); a1: 2 / (2 sqrt(2)); a2 all zeros before -> NaN
    _assert_equal_or_both_nan(
        activation_similarity(before, after)["relu"],
        [4 / np.sqrt(30), 1 / np.sqrt(2), np.nan],
    )
    # (0, 1): after a0*a1 = (2, 1, 0), before (2, 0, 0): 4 / (sqrt(5) * 2) ; others NaN
    _assert_equal_or_both_nan(
        cross_activation_similarity(before, after)["relu"], [2 / np.sqrt(5), np.nan, np.nan]
    )


def test_all_zero_vectors_give_nan():
    zeros = {"relu": np.zeros((3, 2), dtype=np.uint8)}
    assert np.isnan(path_similarity(zeros, zeros)["relu"]).all()
    assert np.isnan(cross_path_similarity(zeros, zeros)["relu"]).all()
    np.testing.assert_array_equal(path_overlap(zeros)["relu"], [0, 0, 0])
    float_zeros = {"relu": np.zeros((3, 4), dtype=np.float16)}
    assert np.isnan(activation_similarity(float_zeros, float_zeros)["relu"]).all()
    assert np.isnan(cross_activation_similarity(float_zeros, float_zeros)["relu"]).all()


def test_early_mid_ratio():
    # mean(0.4, 0.6) / mean(0.8, 1.0) = 0.5 / 0.9
    assert early_mid_ratio([0.4, 0.6, 0.8, 1.0, 0.9], 2, 4) == pytest.approx(0.5 / 0.9)
    # to the end: 0.5 / mean(0.8, 1.0, 0.9)
    assert early_mid_ratio(np.array([0.4, 0.6, 0.8, 1.0, 0.9]), 2) == pytest.approx(0.5 / 0.9)
    with pytest.raises(ValueError, match="Both stages must hold epochs"):
        early_mid_ratio([0.4, 0.6], 2)
    with pytest.raises(ValueError, match="Both stages must hold epochs"):
        early_mid_ratio([0.4, 0.6, 0.7], 2, 2)


# --------------------------------------------------- pairs, chunks, errors


def test_pairs_none_is_triu_indices_order():
    rng = np.random.default_rng(3)
    before = {"a": np.packbits(rng.random((9, 30)) < 0.6, axis=1)}
    after = {"a": np.packbits(rng.random((9, 30)) < 0.6, axis=1)}
    triu = np.column_stack(np.triu_indices(9, 1))
    _assert_equal_or_both_nan(
        cross_path_similarity(before, after)["a"],
        cross_path_similarity(before, after, pairs=triu)["a"], rtol=0,
    )
    np.testing.assert_array_equal(path_overlap(after)["a"], path_overlap(after, pairs=triu)["a"])
    # few pairs take the row-wise sums, all pairs the Gram matrix: the same counts
    few = path_overlap(after, pairs=triu[[5, 0, 17]])["a"]
    np.testing.assert_array_equal(few, path_overlap(after)["a"][[5, 0, 17]])


def test_chunk_sizes_do_not_change_results(monkeypatch):
    rng = np.random.default_rng(4)
    before = {"a": np.packbits(rng.random((12, 100)) < 0.5, axis=1)}
    after = {"a": np.packbits(rng.random((12, 100)) < 0.5, axis=1)}
    act_before = {"a": rng.random((12, 37)).astype(np.float32)}
    act_after = {"a": rng.random((12, 37)).astype(np.float32)}

    def measures():
        return [
            path_similarity(before, after)["a"],
            cross_path_similarity(before, after)["a"],
            cross_path_similarity(before, after, pairs=SOME_PAIRS)["a"],
            path_overlap(after)["a"],
            neighbour_ranks(after, [3, 0])["a"],
            activation_similarity(act_before, act_after)["a"],
            cross_activation_similarity(act_before, act_after)["a"],
        ]

    large = measures()
    # 1 KiB: one byte column, a few rows or pairs per chunk
    monkeypatch.setattr(_measures, "_WORKING_MEMORY", 2**10)
    small = measures()
    for index, (got, expected) in enumerate(zip(small, large)):
        if index < 5:  # counts: exact
            np.testing.assert_array_equal(got, expected)
        else:  # float64 sums in another order
            _assert_equal_or_both_nan(got, expected, rtol=1e-13)


def test_measure_input_errors():
    paths = {"a": np.zeros((3, 2), dtype=np.uint8)}
    with pytest.raises(ValueError, match="same layers"):
        path_similarity(paths, {"b": paths["a"]})
    with pytest.raises(ValueError, match="same shape"):
        cross_path_similarity(paths, {"a": np.zeros((3, 3), dtype=np.uint8)})
    with pytest.raises(ValueError, match="packed bits"):
        path_overlap({"a": np.zeros((3, 2))})
    with pytest.raises(ValueError, match=r"pairs must index the 3 images"):
        path_overlap(paths, pairs=[[0, 3]])
    with pytest.raises(ValueError, match=r"pairs must be an \(m, 2\) integer array"):
        path_overlap(paths, pairs=[[0, 1, 2]])
    with pytest.raises(ValueError, match="queries must index the 3 images"):
        neighbour_ranks(paths, [5])
    assert path_overlap(paths, pairs=np.empty((0, 2), dtype=int))["a"].shape == (0,)


# ---------------------------------------- exact counts: every arithmetic, every device


def _random_epochs(n_images=23, n_units=1003, seed=5):
    """Packed paths of two 'epochs' with a few all-zero rows (NaN cosines)."""
    rng = np.random.default_rng(seed)
    before = rng.random((n_images, n_units)) < rng.uniform(0.05, 0.9, (n_images, 1))
    after = before ^ (rng.random((n_images, n_units)) < 0.2)
    before[3] = after[7] = False
    return (
        {"a": np.packbits(before, axis=1), "b": np.packbits(after[:, :517], axis=1)},
        {"a": np.packbits(after, axis=1), "b": np.packbits(before[:, :517], axis=1)},
    )


EPOCH_PAIRS = {
    "all": None,
    "some": np.array([[0, 1], [3, 7], [9, 2], [4, 4], [5, 0], [2, 9]]),
}


def _epoch(before, after, pairs, device):
    return _measures._path_epoch(before, after, pairs, np.array([0, 7, 3]), device)


def _assert_same_epoch(got, expected):
    (record, on_counts), (expected_record, expected_on) = got, expected
    assert record.keys() == expected_record.keys()
    for kind, layers in expected_record.items():
        for layer, array in layers.items():
            assert record[kind][layer].dtype == array.dtype, (kind, layer)
            np.testing.assert_array_equal(record[kind][layer], array, err_msg=f"{kind} {layer}")
    for layer, counts in expected_on.items():
        np.testing.assert_array_equal(on_counts[layer], counts)


@pytest.mark.parametrize("pairs", sorted(EPOCH_PAIRS))
def test_monitor_epoch_equals_the_public_measures(pairs):
    # the monitor's one-pass epoch gives the public functions' numbers, bit for bit
    before, after = _random_epochs()
    pairs = EPOCH_PAIRS[pairs]
    record, on_counts = _epoch(before, after, pairs, "cpu")
    expected = {
        "overlap": path_overlap(after, pairs),
        "neighbour_ranks": neighbour_ranks(after, [0, 7, 3]),
        "self_similarity": path_similarity(before, after),
        "cross_similarity": cross_path_similarity(before, after, pairs),
    }
    on = {layer: _bits(after)[layer].sum(1).astype(np.int64) for layer in after}
    _assert_same_epoch((record, on_counts), (expected, on))
    first, _ = _epoch(None, after, pairs, "cpu")
    assert sorted(first) == ["neighbour_ranks", "overlap"]


@pytest.mark.parametrize("pairs", sorted(EPOCH_PAIRS))
def test_float32_gemm_counts_equal_the_int8_ones(monkeypatch, pairs):
    # the GPU's arithmetic (float32 GEMMs, chunked below 2**24 terms), here on the CPU
    before, after = _random_epochs()
    expected = _epoch(before, after, EPOCH_PAIRS[pairs], "cpu")
    monkeypatch.setattr(_gram, "_int8_gemm", lambda device: False)
    _assert_same_epoch(_epoch(before, after, EPOCH_PAIRS[pairs], "cpu"), expected)
    monkeypatch.setattr(_gram, "_FLOAT32_EXACT_TERMS", 16)  # 2 bytes of units per chunk
    _assert_same_epoch(_epoch(before, after, EPOCH_PAIRS[pairs], "cpu"), expected)


def test_int8_gemm_counts_equal_bool_counts_on_a_full_layer():
    # 16384 units, as a ResNet stem of width 16 on 32 x 32 images: int32 sums far above 127
    bits = np.random.default_rng(6).random((40, 16384)) < 0.9
    packed = torch.from_numpy(np.packbits(bits, axis=1))
    gram = _gram.gram_rows(packed, np.arange(40), 2**26).numpy()
    np.testing.assert_array_equal(gram, bits.astype(np.int64) @ bits.T.astype(np.int64))
    assert gram.max() > 14000


@pytest.mark.parametrize("int8", [True, False], ids=["int8", "float32"])
def test_gram_matrix_equals_bool_counts(monkeypatch, int8):
    bits = np.random.default_rng(7).random((150, 300)) < 0.5
    monkeypatch.setattr(_gram, "_int8_gemm", lambda device: int8)
    for working_memory in (2**26, 2**12):  # one chunk of units, chunks of 8 units
        gram = _gram.gram_matrix(torch.from_numpy(np.packbits(bits, axis=1)), working_memory)
        np.testing.assert_array_equal(
            gram.numpy(), bits.astype(np.int64) @ bits.T.astype(np.int64)
        )


@pytest.mark.parametrize("n_units", [1, 7, 8, 13, 64])
def test_device_side_unpacking_equals_numpy_unpackbits(n_units):
    packed = np.packbits(np.random.default_rng(n_units).random((5, n_units)) < 0.5, axis=1)
    np.testing.assert_array_equal(
        _gram._unpackbits_torch(torch.from_numpy(packed)).numpy(), np.unpackbits(packed, axis=1)
    )


@pytest.mark.gpu
@pytest.mark.parametrize("pairs", sorted(EPOCH_PAIRS))
def test_cuda_path_measures_equal_the_cpu_ones(pairs):
    before, after = _random_epochs(n_images=70, n_units=20_000)
    expected = _epoch(before, after, EPOCH_PAIRS[pairs], "cpu")
    _assert_same_epoch(_epoch(before, after, EPOCH_PAIRS[pairs], "cuda"), expected)
