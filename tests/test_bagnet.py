"""Tests for skpatch.nn.bagnet (the torch modules) and BagNetClassifier."""

import pickle
import re

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from _helpers import randomize_batchnorm, relu_calls  # noqa: E402

from skpatch.extraction import extract_patches  # noqa: E402
from skpatch.nn.bagnet import bagnet9, bagnet17, bagnet33  # noqa: E402

CONSTRUCTORS = {9: bagnet9, 17: bagnet17, 33: bagnet33}


KERNEL3 = {9: (1, 1, 0, 0), 17: (1, 1, 1, 0), 33: (1, 1, 1, 1)}


def assert_close_scaled(actual, expected, rtol):
    """``rtol`` relative, plus an absolute tolerance scaled by the largest magnitude.

    Other CPUs and thread counts sum in another order, so an entry near zero
    carries the rounding of the large terms summed into it.
    """
    expected = np.asarray(expected, dtype=np.float64)
    scale = float(np.max(np.abs(expected)))
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * scale)


def _randomize_batchnorm(net, seed=0):
    """Non-trivial BatchNorm statistics so eval mode is not close to identity."""
    return randomize_batchnorm(net, seed, shift=0.1)


def _tiny(patch_size, layers=(2, 1, 2, 1), n_classes=5, width=4, seed=0):
    torch.manual_seed(seed)
    model = CONSTRUCTORS[patch_size](n_classes=n_classes, width=width, layers=layers)
    return _randomize_batchnorm(model, seed).double().eval()


def _reference_state_dict_shapes(kernel3, layers=(3, 4, 6, 3), width=64, n_classes=1000):
    """Key names and shapes of the reference implementation, written from its spec."""
    shapes = {"conv1.weight": (width, 3, 1, 1), "conv2.weight": (width, width, 3, 3)}

    def bn(prefix, n):
        for k in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{prefix}.{k}"] = (n,)
        shapes[f"{prefix}.num_batches_tracked"] = ()

    bn("bn1", width)
    in_ch = width
    for stage in range(4):
        planes = width * 2**stage
        for i in range(layers[stage]):
            p = f"layer{stage + 1}.{i}"
            k = 3 if i < kernel3[stage] else 1
            shapes[f"{p}.conv1.weight"] = (planes, in_ch, 1, 1)
            shapes[f"{p}.conv2.weight"] = (planes, planes, k, k)
            shapes[f"{p}.conv3.weight"] = (4 * planes, planes, 1, 1)
            bn(f"{p}.bn1", planes)
            bn(f"{p}.bn2", planes)
            bn(f"{p}.bn3", 4 * planes)
            if i == 0:
                shapes[f"{p}.downsample.0.weight"] = (4 * planes, in_ch, 1, 1)
                bn(f"{p}.downsample.1", 4 * planes)
            in_ch = 4 * planes
    shapes["fc.weight"] = (n_classes, in_ch)
    shapes["fc.bias"] = (n_classes,)
    return shapes


@pytest.mark.parametrize(
    "patch_size, expected", [(9, 15_688_744), (17, 16_213_032), (33, 18_310_184)]
)
def test_parameter_counts_match_published(patch_size, expected):
    model = CONSTRUCTORS[patch_size](n_classes=1000)
    assert sum(p.numel() for p in model.parameters()) == expected


@pytest.mark.parametrize("patch_size", [9, 17, 33])
def test_reference_state_dict_loads_strictly(patch_size):
    shapes = _reference_state_dict_shapes(
        KERNEL3[patch_size], layers=(2, 1, 2, 1), width=4, n_classes=7
    )
    gen = torch.Generator().manual_seed(patch_size)
    state = {
        k: torch.tensor(3) if s == () else torch.rand(s, generator=gen)
        for k, s in shapes.items()
    }
    model = CONSTRUCTORS[patch_size](n_classes=7, width=4, layers=(2, 1, 2, 1))
    model.load_state_dict(state, strict=True)
    loaded = model.state_dict()
    assert set(loaded) == set(state)
    for key, value in state.items():
        assert torch.equal(loaded[key], value), key


@pytest.mark.parametrize("patch_size", [9, 17, 33])
def test_full_size_keys_and_shapes_match_reference(patch_size):
    shapes = _reference_state_dict_shapes(KERNEL3[patch_size])
    model = CONSTRUCTORS[patch_size]()
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == shapes
    assert model.bn1.momentum == 0.001


def test_state_dict_with_wrong_key_is_rejected():
    model = bagnet9(n_classes=3, width=4, layers=(1, 1, 1, 1))
    state = model.state_dict()
    state["layer1.0.shortcut.weight"] = state.pop("layer1.0.downsample.0.weight")
    with pytest.raises(RuntimeError, match="downsample"):
        model.load_state_dict(state, strict=True)


@pytest.mark.parametrize("patch_size", [9, 17, 33])
def test_location_evidence_equals_network_on_patch_alone(patch_size):
    model = _tiny(patch_size)
    rng = np.random.default_rng(patch_size)
    images = rng.random((2, patch_size + 19, patch_size + 12, 3))  # (n, H, W, C)
    with torch.no_grad():
        logits = model.patch_logits(torch.from_numpy(images).permute(0, 3, 1, 2)).numpy()
    gh, gw = logits.shape[2:]
    assert (gh, gw) == ((19 // 8) + 1, (12 // 8) + 1)
    # slow reference: every q x q window at stride 8 through the network on its own
    patches = extract_patches(images, patch_size, stride=8)
    flat = np.ascontiguousarray(patches.reshape(-1, patch_size, patch_size, 3))
    with torch.no_grad():
        alone = model.patch_logits(torch.from_numpy(flat).permute(0, 3, 1, 2)).numpy()
    assert alone.shape[2:] == (1, 1)
    alone = alone.reshape(2, gh, gw, -1).transpose(0, 3, 1, 2)
    assert_close_scaled(logits, alone, rtol=1e-10)  # float64


@pytest.mark.parametrize("patch_size", [9, 17, 33])
def test_one_pixel_changes_only_windows_holding_it(patch_size):
    model = _tiny(patch_size, width=4)
    rng = np.random.default_rng(1)
    h, w = patch_size + 24, patch_size + 16
    image = torch.from_numpy(rng.random((1, 3, h, w)))
    with torch.no_grad():
        base = model.patch_logits(image)[0]
        for row, col in [(0, 0), (h // 2, w // 3), (h - 1, w - 1), (12, 20)]:
            changed_image = image.clone()
            changed_image[0, :, row, col] += 5.0
            changed = (model.patch_logits(changed_image)[0] != base).any(dim=0).numpy()
            gi, gj = np.arange(changed.shape[0]), np.arange(changed.shape[1])
            in_i = (8 * gi <= row) & (row < 8 * gi + patch_size)
            in_j = (8 * gj <= col) & (col < 8 * gj + patch_size)
            np.testing.assert_array_equal(changed, in_i[:, None] & in_j[None, :])


@pytest.mark.parametrize("patch_size", [9, 33])
def test_pooled_logits_are_mean_of_patch_logits(patch_size):
    model = _tiny(patch_size)
    x = torch.from_numpy(np.random.default_rng(2).random((3, 3, 50, 43)))
    with torch.no_grad():
        pooled = model(x)
        evidence = model.patch_logits(x)
        model.avg_pool = False
        assert torch.equal(model(x), evidence)
    assert pooled.shape == (3, 5)
    assert_close_scaled(pooled.numpy(), evidence.mean(dim=(2, 3)).numpy(), rtol=1e-10)


def test_patch_logits_match_manual_fc_at_each_location():
    model = _tiny(17)
    x = torch.from_numpy(np.random.default_rng(3).random((2, 3, 33, 41)))
    with torch.no_grad():
        features = model.features(x)  # (n, D, gh, gw)
        expected = features.permute(0, 2, 3, 1) @ model.fc.weight.T + model.fc.bias
        assert_close_scaled(
            model.patch_logits(x).numpy(), expected.permute(0, 3, 1, 2).numpy(), rtol=1e-10
        )


@pytest.mark.parametrize("patch_size", [9, 17, 33])
def test_images_smaller_than_receptive_field_raise(patch_size):
    model = _tiny(patch_size)
    with pytest.raises(ValueError, match=f"{patch_size}x{patch_size} receptive field"):
        model(torch.zeros(1, 3, patch_size - 1, 64, dtype=torch.float64))
    with pytest.raises(ValueError, match="4-D"):
        model(torch.zeros(3, 64, 64, dtype=torch.float64))


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="4 entries"):
        bagnet9(layers=(1, 1, 1))
    with pytest.raises(ValueError, match="positive"):
        bagnet9(layers=(1, 0, 1, 1))


# --------------------------------------------------------------------------- #
# BagNetClassifier
# --------------------------------------------------------------------------- #
from scipy.special import softmax  # noqa: E402
from sklearn.base import clone  # noqa: E402

from skpatch.classifiers import BagNetClassifier  # noqa: E402

TINY = dict(width=2, layers=(1, 1, 1, 1), max_epochs=2, batch_size=16, verbose=0,
            device="cpu", random_state=0)


@pytest.fixture(scope="module")
def toy_data():
    rng = np.random.default_rng(0)
    X = rng.random((40, 25, 33, 3)).astype(np.float32)
    y = np.repeat(np.array(["a", "b"]), 20)
    X[y == "b", :, :, 0] += 0.5  # a learnable colour cue
    return X, y


@pytest.fixture(scope="module")
def fitted(toy_data):
    X, y = toy_data
    return BagNetClassifier(9, **TINY).fit(X, y)


def _module_logits(clf, images):
    """Pooled logits of raw (n, h, w, C) images through the fitted network."""
    x = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
    with torch.no_grad():
        return clf.net_.module_.eval()(x).numpy()


def test_classifier_patch_logits_equal_network_on_each_patch(fitted, toy_data):
    X, _ = toy_data
    evidence = fitted.patch_logits(X[:3])
    assert evidence.shape == (3, 2, (25 - 9) // 8 + 1, (33 - 9) // 8 + 1)
    patches = extract_patches(X[:3], 9, stride=8)  # (n, gh, gw, 9, 9, C)
    n, gh, gw = patches.shape[:3]
    alone = _module_logits(fitted, patches.reshape(-1, 9, 9, 3)).reshape(n, gh, gw, 2)
    assert_close_scaled(evidence, alone.transpose(0, 3, 1, 2), rtol=1e-4)  # float32


@pytest.mark.parametrize("stride", [1, 2, (4, 2)])
def test_classifier_finer_stride_equals_network_on_each_patch(fitted, toy_data, stride):
    X, _ = toy_data
    sh, sw = (stride, stride) if isinstance(stride, int) else stride
    evidence = fitted.patch_logits(X[:2], stride=stride)
    patches = extract_patches(X[:2], 9, stride=(sh, sw))
    n, gh, gw = patches.shape[:3]
    alone = _module_logits(fitted, patches.reshape(-1, 9, 9, 3)).reshape(n, gh, gw, 2)
    assert_close_scaled(evidence, alone.transpose(0, 3, 1, 2), rtol=1e-4)  # float32


def test_inspection_works_on_bagnet(fitted, toy_data):
    from skpatch.inspection import blackout_scores, class_heatmap

    X, y = toy_data
    heatmap = class_heatmap(fitted, X[:2], classes=["b"])
    # 'same' padding: the map at pixel (r, c) is the evidence of the patch centred
    # there; the border holds what normalizes to zero (the training images' mean),
    # i.e. the normalized image padded with zeros, as the BagNet authors pad
    mean = X.mean(axis=(0, 1, 2), dtype=np.float64)
    std = X.std(axis=(0, 1, 2), dtype=np.float64)
    padded = np.pad((X[:2] - mean) / std, ((0, 0), (4, 4), (4, 4), (0, 0)))
    for r, c in [(10, 17), (0, 0), (2, 32), (24, 5)]:
        centred = np.ascontiguousarray(extract_patches(padded, 9, stride=1)[:, r, c])
        x = torch.from_numpy(centred.transpose(0, 3, 1, 2)).float()
        with torch.no_grad():
            expected = fitted.module_.core.eval()(x)[:, 1].numpy()
        assert_close_scaled(heatmap[:, 0, r, c], expected, rtol=1e-5)
    scores = blackout_scores(fitted, X, y, fractions=[0, 0.5], random_state=0)
    assert scores["accuracy"][0] == pytest.approx(fitted.score(X, y))


def test_classifier_proba_is_softmax_of_mean_evidence(fitted, toy_data):
    X, _ = toy_data
    proba = fitted.predict_proba(X)
    expected = softmax(fitted.patch_logits(X).mean(axis=(2, 3)), axis=1)
    # a logit error d moves a probability by at most d / 2: scale by the logits
    logit_scale = float(np.abs(_module_logits(fitted, X)).max())
    np.testing.assert_allclose(proba, expected, rtol=1e-5, atol=1e-4 * logit_scale)
    # the pooled forward pass of the whole image gives the same probabilities
    np.testing.assert_allclose(proba, softmax(_module_logits(fitted, X), axis=1),
                               rtol=1e-4, atol=1e-4 * logit_scale)
    np.testing.assert_array_equal(fitted.predict(X), fitted.classes_[proba.argmax(axis=1)])


def test_classifier_learns_colour_cue(fitted, toy_data):
    X, y = toy_data
    clf = clone(fitted).set_params(max_epochs=5, lr=0.1).fit(X, y)
    assert clf.score(X, y) >= 0.9


def test_classifier_results_do_not_depend_on_chunk_size(fitted, toy_data, monkeypatch):
    from skpatch.classifiers import _bagnet as classifiers
    from skpatch.classifiers._bagnet import _bagnet_activation_bytes

    X, _ = toy_data
    full = fitted.patch_logits(X)
    per_image = _bagnet_activation_bytes(fitted.module_.core, 25, 33)
    for n_images in (1, 2, 40):  # images per forward pass
        monkeypatch.setitem(classifiers._BAGNET_INFERENCE_BYTES, "cpu", n_images * per_image)
        # float32 convolution kernels round differently with the batch size: ulp level
        assert_close_scaled(fitted.patch_logits(X), full, rtol=1e-5)


def test_classifier_seeded_refit_and_pickle_are_identical(fitted, toy_data):
    import pickle

    X, y = toy_data
    full = fitted.patch_logits(X)
    np.testing.assert_array_equal(clone(fitted).fit(X, y).patch_logits(X), full)
    restored = pickle.loads(pickle.dumps(fitted))
    np.testing.assert_array_equal(restored.patch_logits(X), full)


def _reference_state(patch_size, width, layers, n_classes, seed=0):
    gen = torch.Generator().manual_seed(seed)
    shapes = _reference_state_dict_shapes(KERNEL3[patch_size], layers, width, n_classes)
    state = {}
    for key, shape in shapes.items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(100)
        elif key.endswith("running_var"):
            state[key] = 0.5 + torch.rand(shape, generator=gen)
        else:
            state[key] = 0.3 * torch.randn(shape, generator=gen)
    return state


def test_weights_load_frozen_backbone_and_imagenet_normalization(toy_data, tmp_path):
    X, y = toy_data
    state = _reference_state(9, 2, (1, 1, 1, 1), n_classes=1000)
    path = tmp_path / "bagnet9.pth"
    torch.save(state, path)
    clf = BagNetClassifier(9, weights=str(path), freeze_backbone=True, **{**TINY, "lr": 0.1})
    with pytest.warns(UserWarning, match="1000 classes but y has 2"):
        clf.fit(X, y)
    # reference: the loaded backbone on ImageNet-normalized input, with the trained fc
    reference = bagnet9(n_classes=2, width=2, layers=(1, 1, 1, 1))
    fitted_fc = clf.net_.module_.core.net.fc
    reference.load_state_dict(
        {**{k: v for k, v in state.items() if not k.startswith("fc.")},
         "fc.weight": fitted_fc.weight.detach(), "fc.bias": fitted_fc.bias.detach()}
    )
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    x = torch.from_numpy(X[:4].transpose(0, 3, 1, 2).copy())
    with torch.no_grad():
        expected = reference.eval().patch_logits((x - mean) / std).numpy()
    assert_close_scaled(clf.patch_logits(X[:4]), expected, rtol=1e-4)
    # heat maps pad with the ImageNet mean colour: the authors' zero-padded normalized image
    from skpatch.inspection import class_heatmap

    maps = class_heatmap(clf, X[:1], classes=["b"])[0, 0]
    authors = _authors_heatmap(reference, X[0], 1, 9, IMAGENET_MEAN, IMAGENET_STD)
    assert_close_scaled(maps, authors, rtol=1e-4)
    # the backbone, BatchNorm statistics included, did not move; fc did
    trained = clf.net_.module_.core.net.state_dict()
    for key, value in state.items():
        if not key.startswith("fc."):
            assert torch.equal(trained[key], value), key
    assert not torch.allclose(trained["fc.weight"], torch.zeros_like(trained["fc.weight"]))


def test_weights_with_matching_classes_keep_fc(toy_data, tmp_path):
    X, y = toy_data
    state = _reference_state(9, 2, (1, 1, 1, 1), n_classes=2, seed=1)
    path = tmp_path / "two_classes.pth"
    torch.save({f"module.{k}": v for k, v in state.items()}, path)  # DataParallel keys
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        clf = BagNetClassifier(9, weights=path, freeze_backbone=True,
                               **{**TINY, "lr": 1e-9, "max_epochs": 1}).fit(X, y)
    fc = clf.net_.module_.core.net.fc
    # lr=1e-9 moves the weights by about 1e-9 times a gradient of order 1
    assert_close_scaled(fc.weight.detach().numpy(), state["fc.weight"].numpy(), rtol=1e-6)


def test_weights_of_another_architecture_are_a_clear_error(toy_data, tmp_path):
    X, y = toy_data
    path = tmp_path / "wide.pth"
    torch.save(_reference_state(9, 4, (1, 1, 1, 1), n_classes=2), path)
    with pytest.raises(ValueError, match="does not match a BagNet-9 with width=2"):
        BagNetClassifier(9, weights=str(path), **TINY).fit(X, y)
    with pytest.raises(ValueError, match="is not a file"):
        BagNetClassifier(9, weights=str(tmp_path / "missing.pth"), **TINY).fit(X, y)
    with pytest.raises(ValueError, match="3 channels"):
        torch.save(_reference_state(9, 2, (1, 1, 1, 1), n_classes=2), path)
        BagNetClassifier(9, weights=str(path), **TINY).fit(X[..., 0], y)


def test_classifier_bad_inputs(fitted, toy_data):
    X, y = toy_data
    with pytest.raises(ValueError, match=r"25x33 are smaller than patch_size=33.*"
                                         r"pass patch_size=9 or 17\."):
        BagNetClassifier(33, **TINY).fit(X, y)
    with pytest.raises(ValueError, match="patch_size"):
        BagNetClassifier(10, **TINY).fit(X, y)
    with pytest.raises(ValueError, match="layers must be 4 positive ints"):
        BagNetClassifier(9, **{**TINY, "layers": (1, 1, 1)}).fit(X, y)
    with pytest.raises(ValueError, match="stride must be 1, 2, 4 or 8"):
        fitted.patch_logits(X[:2], stride=3)
    with pytest.raises(ValueError, match="fitted on images of shape"):
        fitted.predict(X[:, :20])
    with pytest.raises(ValueError, match="at least 2 classes"):
        clone(fitted).fit(X, np.zeros(len(X)))


class _TouchOnLoad:
    """Unpickling this runs ``Path.touch``: the kind of code a checkpoint can carry."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        import pathlib

        return (pathlib.Path.touch, (self.path,))


class _Box:
    """A custom class wrapping a tensor."""

    def __init__(self, tensor):
        self.tensor = tensor


def test_weights_with_other_objects_are_refused_without_running_them(toy_data, tmp_path):
    X, y = toy_data
    state = _reference_state(9, 2, (1, 1, 1, 1), n_classes=2)
    marker = tmp_path / "code_ran"
    for name, extra in [("payload.pth", _TouchOnLoad(marker)),
                        ("boxed.pth", _Box(torch.zeros(2)))]:
        path = tmp_path / name
        torch.save({**state, "extra": extra}, path)
        with pytest.raises(ValueError) as info:
            BagNetClassifier(9, weights=str(path), **TINY).fit(X, y)
        message = str(info.value)
        assert name in message
        assert "objects other than tensors" in message and "refused for safety" in message
        # torch's own advice would be to load the file with weights_only=False
        assert "weights_only=False" not in message
    assert not marker.exists()
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"garbage\.pth' is not a file of tensors"):
        BagNetClassifier(9, weights=garbage, **TINY).fit(X, y)
    tensor_only = tmp_path / "tensor.pth"
    torch.save(torch.zeros(3), tensor_only)
    with pytest.raises(ValueError, match=r"tensor\.pth' holds a Tensor, not a state dict"):
        BagNetClassifier(9, weights=tensor_only, **TINY).fit(X, y)


@pytest.mark.parametrize("shape, advice", [
    ((32, 32), r"32x32 are smaller than patch_size=33.*pass patch_size=9 or 17\."),
    ((16, 40), r"16x40 are smaller than patch_size=33.*pass patch_size=9\."),
    ((8, 8), r"8x8 are smaller than patch_size=33.*no BagNet fits: upsample or pad"),
])
def test_default_patch_size_on_small_images_says_what_fits(shape, advice):
    # CIFAR-10 images are 32x32; the default BagNet-33 needs 33x33
    X = np.zeros((4, *shape, 3), dtype=np.float32)
    with pytest.raises(ValueError, match=advice):
        BagNetClassifier(device="cpu", verbose=0).fit(X, [0, 1, 0, 1])


def test_classifier_trains_with_a_one_image_last_batch(toy_data):
    X, y = toy_data
    # 17 images of both classes in batches of 16: the last image joins the first batch
    clf = BagNetClassifier(9, **{**TINY, "max_epochs": 1}).fit(X[12:29], y[12:29])
    assert clf.history_[-1, "train_batch_count"] == 1
    with pytest.raises(ValueError, match=r"batch_size=1 cannot train module \(BagNet\)"):
        BagNetClassifier(9, **{**TINY, "batch_size": 1}).fit(X, y)


def test_frozen_backbone_trains_with_batch_size_one(toy_data, tmp_path):
    X, y = toy_data
    path = tmp_path / "two_classes.pth"
    torch.save(_reference_state(9, 2, (1, 1, 1, 1), n_classes=2), path)
    # only fc trains and the BatchNorm layers stay in eval mode: one image per step is fine
    clf = BagNetClassifier(9, weights=path, freeze_backbone=True,
                           **{**TINY, "batch_size": 1, "max_epochs": 1}).fit(X[18:22], y[18:22])
    assert clf.history_[-1, "train_batch_count"] == 4


# --- hook-ready activations: every ReLU its own nn.ReLU, called once per forward ---

import copy  # noqa: E402

from torch.nn import functional as F  # noqa: E402


def _shared_relu_reference(model, x):
    """The forward of the reference layout: one inplace ReLU reused per block."""
    x = F.relu(model.bn1(model.conv2(model.conv1(x))), inplace=True)
    for stage in (model.layer1, model.layer2, model.layer3, model.layer4):
        for block in stage:
            out = F.relu(block.bn1(block.conv1(x)), inplace=True)
            out = F.relu(block.bn2(block.conv2(out)), inplace=True)
            out = block.bn3(block.conv3(out))
            residual = x if block.downsample is None else block.downsample(x)
            h, w = out.shape[-2:]
            x = F.relu(out + residual[..., :h, :w], inplace=True)
    return model.fc(x.mean(dim=(2, 3)))


_relu_calls = relu_calls


@pytest.mark.parametrize("patch_size", [9, 17, 33])
def test_every_activation_is_its_own_relu_called_once(patch_size):
    # ResNet-50 layout: 1 stem ReLU + 3 per bottleneck x (3 + 4 + 6 + 3) blocks = 49
    model = CONSTRUCTORS[patch_size](n_classes=3, width=1).eval()
    counts, modules = _relu_calls(model, torch.randn(1, 3, patch_size, patch_size))
    assert len(counts) == 1 + 3 * 16 == 49
    assert len({id(m) for m in modules}) == 49  # no instance reused
    assert set(counts.values()) == {1}
    assert {name.rsplit(".", 1)[-1] for name in counts} == {"relu", "relu1", "relu2", "relu3"}
    # still the reference keys: ReLU modules add none
    assert _reference_state_dict_shapes(KERNEL3[patch_size], width=1, n_classes=3) == {
        k: tuple(v.shape) for k, v in model.state_dict().items()}


@pytest.mark.parametrize("patch_size", [9, 17, 33])
def test_outputs_equal_shared_relu_forward_bit_for_bit(patch_size):
    model = _tiny(patch_size)
    x = torch.randn(2, 3, 41, 45, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(model(x), _shared_relu_reference(model, x))
    # training mode, float32: batch statistics, and the same gradients
    model = model.float().train()
    reference = copy.deepcopy(model)
    model(x.float()).square().sum().backward()
    _shared_relu_reference(reference, x.float()).square().sum().backward()
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        assert torch.equal(p.grad, q.grad), name


def test_stem_hook_mask_equals_independent_computation():
    model = _tiny(17)
    x = torch.randn(2, 3, 25, 25, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    captured = {}

    def hook(module, inputs, output):
        captured["mask"] = output > 0
        captured["input"], captured["output"] = inputs[0], output

    handle = model.relu.register_forward_hook(hook)
    with torch.no_grad():
        model(x)
        pre_activation = model.bn1(model.conv2(model.conv1(x)))
    handle.remove()
    assert torch.equal(captured["mask"], pre_activation > 0)
    # not inplace: the kept input is the pre-activation, the kept output is not
    # overwritten by the rest of the forward
    assert (captured["input"] < 0).any()
    assert torch.equal(captured["input"], pre_activation)
    assert torch.equal(captured["output"], torch.relu(pre_activation))


# ---- per-fit randomness, batched inference, selected classes ---------------------


def test_classifier_seeded_fits_in_threads_equal_serial_fits(toy_data):
    import threading

    X, y = toy_data

    def make(seed):
        return BagNetClassifier(9, **{**TINY, "random_state": seed})

    serial = {seed: make(seed).fit(X, y).predict_proba(X) for seed in (0, 1)}
    fitted_in_threads, errors = {}, []
    barrier = threading.Barrier(2)

    def work(seed):
        try:
            barrier.wait()
            fitted_in_threads[seed] = make(seed).fit(X, y)
        except Exception as exc:  # re-raised below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(seed,)) for seed in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    state = torch.get_rng_state()
    for seed in (0, 1):
        # bit for bit (0.030 apart when fits shared torch's global generator)
        np.testing.assert_array_equal(fitted_in_threads[seed].predict_proba(X), serial[seed])
    assert torch.equal(torch.get_rng_state(), state)


def test_bagnet_initialization_equals_default_construction_with_that_seed():
    from skpatch.nn import build_initialized

    net = build_initialized(lambda: bagnet17(n_classes=3, width=2, layers=(1, 2, 1, 1)),
                            torch.Generator().manual_seed(3))
    with torch.random.fork_rng():
        torch.manual_seed(3)
        expected = bagnet17(n_classes=3, width=2, layers=(1, 2, 1, 1))
    for key, value in expected.state_dict().items():
        assert torch.equal(net.state_dict()[key], value), key


def test_activation_estimate_is_the_largest_activation_of_a_forward():
    from skpatch.classifiers._bagnet import _bagnet_activation_bytes

    net = bagnet33(n_classes=2, width=3, layers=(2, 1, 2, 1), in_channels=3).eval()
    sizes = []
    hooks = [m.register_forward_hook(lambda m, i, o: sizes.append(o.numel()))
             for m in net.modules() if m is not net]
    with torch.no_grad():
        net.patch_logits(torch.zeros(1, 3, 50, 41))
    for hook in hooks:
        hook.remove()
    # 4 float32 tensors of the largest size alive at once
    assert _bagnet_activation_bytes(net, 50, 41) == 4 * 4 * max(sizes + [3 * 50 * 41])


@pytest.fixture(scope="module")
def fitted_161():
    """A tiny BagNet-33 on 161x161 images: a 17x17 grid, 289 locations per image."""
    rng = np.random.default_rng(2)
    X = rng.random((20, 161, 161, 3)).astype(np.float32)
    y = np.tile([0, 1, 2, 3], 5)
    clf = BagNetClassifier(33, **{**TINY, "max_epochs": 1}).fit(X[:8], y[:8])
    return clf, X, y


def _count_forwards(clf, compute):
    """Batch sizes of the network's forward passes while ``compute()`` runs."""
    net = getattr(clf.module_.core, "net", clf.module_.core)
    batches = []
    handle = net.layer1.register_forward_hook(lambda m, i, o: batches.append(o.shape[0]))
    try:
        result = compute()
    finally:
        handle.remove()
    return result, batches


def test_inference_batches_many_images_per_forward(fitted_161, monkeypatch):
    from skpatch.classifiers import _bagnet as classifiers

    clf, X, _ = fitted_161
    batched, batches = _count_forwards(clf, lambda: clf.patch_logits(X))
    # the old sliding-window budget (256 patches) gave one image per forward: 20 passes
    assert batches == [20]
    # one image per forward, as before, gives the same evidence
    monkeypatch.setitem(classifiers._BAGNET_INFERENCE_BYTES, "cpu", 1)
    per_image, batches = _count_forwards(clf, lambda: clf.patch_logits(X))
    assert batches == [1] * 20
    assert_close_scaled(batched, per_image, rtol=1e-5)  # float32, batch-size rounding
    proba, batches = _count_forwards(clf, lambda: clf.predict_proba(X))
    assert batches == [1] * 20
    monkeypatch.undo()
    np.testing.assert_allclose(clf.predict_proba(X), proba, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("stride", [8, 4])
def test_heatmap_of_one_class_computes_only_its_row(fitted_161, monkeypatch, stride):
    from skpatch.inspection import class_heatmap

    clf, X, _ = fitted_161
    fc = clf.module_.core.fc
    full = clf.patch_logits(X[:3], stride=stride)
    widths = []
    conv2d = torch.nn.functional.conv2d

    def recording_conv2d(x, weight, *args, **kwargs):
        if weight.shape[1:] == (fc.in_features, 1, 1):  # the per-location fc
            widths.append(weight.shape[0])
        return conv2d(x, weight, *args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "conv2d", recording_conv2d)
    selected = clf._selected_patch_logits(X[:3], np.array([2]), stride=stride)
    assert widths and set(widths) == {1}  # only row 2 of fc was applied
    # the same numbers as the full maps' row (a 1x1 conv of one output channel)
    assert_close_scaled(selected, full[:, [2]], rtol=1e-5)
    widths.clear()
    maps = class_heatmap(clf, X[:2], classes=[3, 1], padding=0)
    assert set(widths) == {2}
    assert_close_scaled(maps, clf.patch_logits(X[:2], stride=1)[:, [3, 1]], rtol=1e-5)


# ---- BagNetClassifier.from_weights: official-style weights, no training -------------

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406])
IMAGENET_STD = np.array([0.229, 0.224, 0.225])


def _weights_file(tmp_path, patch_size, n_classes, layers=(2, 1, 2, 1), width=2, seed=0,
                  wrap=None, name=None):
    """A randomly initialised BagNet (non-trivial BatchNorm statistics) saved as weights."""
    net = _tiny(patch_size, layers=layers, n_classes=n_classes, width=width, seed=seed).float()
    state = net.state_dict()
    if wrap == "module":
        state = {f"module.{k}": v for k, v in state.items()}
    elif wrap == "checkpoint":  # torchvision's ImageNet training script
        state = {"epoch": 90, "arch": f"bagnet{patch_size}", "best_acc1": torch.tensor(0.5),
                 "state_dict": {f"module.{k}": v for k, v in state.items()}}
    path = tmp_path / (name or f"bagnet{patch_size}_{n_classes}_{wrap}.pth")
    torch.save(state, path)
    return path, net.double().eval()


def _imagenet_normalized(images):
    """(n, H, W, 3) in [0, 1] -> ImageNet-normalized float64 (n, 3, H, W) tensor."""
    x = (np.asarray(images, dtype=np.float64) - IMAGENET_MEAN) / IMAGENET_STD
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def _authors_heatmap(net, image, target, patch_size, mean, std):
    """``generate_heatmap_pytorch`` of the reference's bagnets/utils.py, rewritten in float64.

    Normalize the image, pad the *normalized* image with zeros ((q - 1) // 2
    before, the rest after), cut every q x q patch at stride 1 and run the
    network on each patch alone; the class ``target`` logit is the map.
    """
    x = ((np.asarray(image, dtype=np.float64) - mean) / std).transpose(2, 0, 1)
    channels, height, width = x.shape
    q, before = patch_size, (patch_size - 1) // 2
    padded = np.zeros((channels, height + q - 1, width + q - 1))
    padded[:, before:before + height, before:before + width] = x
    dtype = next(net.parameters()).dtype
    patches = torch.from_numpy(padded[None]).to(dtype).permute(0, 2, 3, 1)
    patches = patches.unfold(1, q, 1).unfold(2, q, 1)  # (1, H, W, C, q, q)
    patches = patches.contiguous().view(-1, channels, q, q)
    with torch.no_grad():
        logits = torch.cat([net.eval()(batch)[:, target] for batch in torch.split(patches, 500)])
    return logits.double().numpy().reshape(height, width)


@pytest.fixture(scope="module")
def weights_9(tmp_path_factory):
    return _weights_file(tmp_path_factory.mktemp("weights"), 9, n_classes=1000)


@pytest.mark.parametrize("patch_size, wrap", [(9, None), (17, "module"), (33, "checkpoint")])
def test_from_weights_reads_the_network_and_predicts_as_a_torch_forward(
    tmp_path, patch_size, wrap
):
    path, net = _weights_file(tmp_path, patch_size, n_classes=5, wrap=wrap)
    labels = ["e", "a", "d", "b", "c"]  # fc's order: kept, not sorted
    clf = BagNetClassifier.from_weights(path, classes=labels, device="cpu").set_params(verbose=0)
    assert (clf.patch_size, tuple(clf.layers), clf.width) == (patch_size, (2, 1, 2, 1), 2)
    assert clf.classes_.tolist() == labels and clf.device_ == "cpu"
    rng = np.random.default_rng(patch_size)
    for height, width in [(patch_size, patch_size), (patch_size + 31, patch_size + 17)]:
        X = rng.random((3, height, width, 3)).astype(np.float32)
        with torch.no_grad():
            pooled = net(_imagenet_normalized(X)).numpy()  # the plain torch forward
            evidence = net.patch_logits(_imagenet_normalized(X)).numpy()
        assert_close_scaled(clf.patch_logits(X), evidence, rtol=1e-5)
        scale = float(np.abs(pooled).max())
        np.testing.assert_allclose(clf.predict_proba(X), softmax(pooled, axis=1),
                                   rtol=1e-5, atol=1e-5 * scale)
        assert clf.predict(X).tolist() == [labels[k] for k in pooled.argmax(axis=1)]
    # uint8 images are scaled to [0, 1]
    X8 = rng.integers(0, 256, (2, patch_size + 8, patch_size, 3), dtype=np.uint8)
    with torch.no_grad():
        pooled = net(_imagenet_normalized(X8 / 255.0)).numpy()
    np.testing.assert_allclose(clf.predict_proba(X8), softmax(pooled, axis=1),
                               rtol=1e-5, atol=1e-5 * float(np.abs(pooled).max()))


def test_from_weights_defaults_to_the_1000_imagenet_indices(weights_9):
    path, net = weights_9
    clf = BagNetClassifier.from_weights(str(path), patch_size=9, device="cpu")
    np.testing.assert_array_equal(clf.classes_, np.arange(1000))
    assert clf.image_shape_ is None and clf.weights == str(path)
    fitted_state = clf.module_.core.state_dict()
    for key, value in net.float().state_dict().items():  # the file's values, untouched
        assert torch.equal(fitted_state[key], value), key
    net.double()


def test_from_weights_heatmap_is_the_authors_heatmap(tmp_path):
    from skpatch.inspection import class_heatmap

    for patch_size, (height, width) in [(9, (21, 25)), (17, (20, 18))]:
        path, net = _weights_file(tmp_path, patch_size, n_classes=4)
        clf = BagNetClassifier.from_weights(path, device="cpu").set_params(verbose=0)
        image = np.random.default_rng(patch_size).random((1, height, width, 3))
        maps = class_heatmap(clf, image, classes=[2, 0])
        for k, target in enumerate([2, 0]):
            expected = _authors_heatmap(net, image[0], target, patch_size,
                                        IMAGENET_MEAN, IMAGENET_STD)
            assert_close_scaled(maps[0, k], expected, rtol=1e-5)
        # the black border (pad_value=0) changes only pixels whose patch reaches the
        # padding (q // 2 rows and columns on each side), the outer ring far beyond rounding
        black = class_heatmap(clf, image, classes=[2], pad_value=0.0)[0, 0]
        half = patch_size // 2
        inside = (slice(half, height - half), slice(half, width - half))
        assert_close_scaled(black[inside], maps[0, 0][inside], rtol=1e-5)
        ring = np.concatenate([black[0] - maps[0, 0, 0], black[-1] - maps[0, 0, -1],
                               black[:, 0] - maps[0, 0, :, 0], black[:, -1] - maps[0, 0, :, -1]])
        assert np.median(np.abs(ring)) > 100 * 1e-5 * float(np.abs(maps[0, 0]).max())
        # and equals the authors' map on an image padded with black by hand
        before = (patch_size - 1) // 2
        padded = np.pad(image[0], ((before, patch_size - 1 - before),) * 2 + ((0, 0),))
        by_hand = _authors_heatmap(net, padded, 2, patch_size, IMAGENET_MEAN, IMAGENET_STD)
        inner = by_hand[before:before + height, before:before + width]
        assert_close_scaled(black, inner, rtol=1e-5)


def test_border_share_of_a_224_bagnet33_map():
    # pixels whose 33x33 'same' patch reaches the padding: the 26%
    inner = (224 - 33 + 1) ** 2
    assert 1 - inner / 224**2 == pytest.approx(0.2653, abs=1e-4)


def test_from_weights_blackout_and_score_with_unsorted_labels(tmp_path):
    from sklearn.metrics import accuracy_score

    from skpatch.inspection import blackout_scores

    path, _ = _weights_file(tmp_path, 9, n_classes=3)
    labels = np.array(["zebra", "ant", "moth"])
    clf = BagNetClassifier.from_weights(path, classes=labels, device="cpu").set_params(verbose=0)
    rng = np.random.default_rng(5)
    X = rng.random((12, 33, 33, 3))
    y = labels[rng.integers(0, 3, 12)]
    proba = clf.predict_proba(X)
    res = blackout_scores(clf, X, y, fractions=[0], alternate=False)
    column = {label: k for k, label in enumerate(labels)}
    expected_loss = -np.mean(np.log(proba[np.arange(12), [column[v] for v in y]]))
    assert res["log_loss"][0] == pytest.approx(expected_loss, rel=1e-6)
    assert res["accuracy"][0] == pytest.approx(accuracy_score(y, labels[proba.argmax(1)]))
    assert res["accuracy"][0] == pytest.approx(clf.score(X, y))


def test_from_weights_clones_pickles_and_fine_tunes(weights_9):
    import pickle

    from sklearn.exceptions import NotFittedError

    path, _ = weights_9
    clf = BagNetClassifier.from_weights(path, device="cpu").set_params(verbose=0)
    X = np.random.default_rng(6).random((4, 40, 40, 3)).astype(np.float32)
    restored = pickle.loads(pickle.dumps(clf))
    np.testing.assert_array_equal(restored.predict_proba(X), clf.predict_proba(X))
    np.testing.assert_array_equal(restored.classes_, clf.classes_)
    unfitted = clone(clf)
    assert unfitted.get_params() == clf.get_params()
    with pytest.raises(NotFittedError):
        unfitted.predict(X)
    # the clone fine-tunes from the same weights: frozen backbone, a new fc for 2 classes
    with pytest.warns(UserWarning, match="1000 classes but y has 2"):
        tuned = unfitted.set_params(freeze_backbone=True, max_epochs=1, batch_size=2,
                                    random_state=0).fit(X, [0, 1, 0, 1])
    trained = tuned.module_.core.net.state_dict()
    for key, value in clf.module_.core.state_dict().items():
        if not key.startswith("fc."):
            assert torch.equal(trained[key], value), key


def test_from_weights_bad_inputs(weights_9, tmp_path):
    path, _ = weights_9
    with pytest.raises(ValueError, match=r"patch_size=17, but weights=.*bagnet9.* holds a "
                                         r"BagNet-9.*pass patch_size=9 or None"):
        BagNetClassifier.from_weights(path, patch_size=17)
    with pytest.raises(ValueError, match=r"classes holds 3 labels .* fc layer of "
                                         r"weights=.* has 1000 outputs"):
        BagNetClassifier.from_weights(path, classes=["a", "b", "c"])
    with pytest.raises(ValueError, match="distinct labels"):
        BagNetClassifier.from_weights(
            _weights_file(tmp_path, 9, n_classes=2)[0], classes=["a", "a"])
    with pytest.raises(ValueError, match=r"missing\.pth' is not a file"):
        BagNetClassifier.from_weights(tmp_path / "missing.pth")
    with pytest.raises(ValueError, match="device"):
        BagNetClassifier.from_weights(path, device="tpu")
    other = tmp_path / "resnet_like.pth"
    torch.save({"conv1.weight": torch.zeros(4, 3, 7, 7), "fc.weight": torch.zeros(2, 8)}, other)
    with pytest.raises(ValueError, match=r"resnet_like\.pth' has no consecutive blocks layer1"):
        BagNetClassifier.from_weights(other)
    torch.save({"linear.weight": torch.zeros(2, 2)}, other)
    with pytest.raises(ValueError, match=r"resnet_like\.pth' has no 'conv1.weight' entry"):
        BagNetClassifier.from_weights(other)
    gray = tmp_path / "gray.pth"
    torch.save(bagnet9(n_classes=2, width=2, layers=(1, 1, 1, 1), in_channels=1).state_dict(),
               gray)
    with pytest.raises(ValueError, match=r"gray\.pth' takes 1 input channels"):
        BagNetClassifier.from_weights(gray)
    # 3x3 middle convs per stage of no BagNet: (1, 0, 0, 0)
    odd = bagnet9(n_classes=2, width=2, layers=(1, 1, 1, 1)).state_dict()
    odd["layer2.0.conv2.weight"] = torch.zeros(4, 4, 1, 1)
    torch.save(odd, other)
    with pytest.raises(ValueError, match=r"\(1, 0, 0, 0\) blocks with a 3x3 middle conv"):
        BagNetClassifier.from_weights(other)

    clf = BagNetClassifier.from_weights(path, device="cpu").set_params(verbose=0)
    X = np.random.default_rng(7).random((2, 40, 40, 3))
    with pytest.raises(ValueError, match=r"\[0, 1\].*look like 0\.\.255 pixels"):
        clf.predict_proba(X * 255)
    with pytest.raises(ValueError, match="look normalized already"):
        clf.patch_logits(_imagenet_normalized(X).numpy().transpose(0, 2, 3, 1))
    with pytest.raises(ValueError, match=r"size 8x40, smaller than the 9x9 patches"):
        clf.predict(X[:, :8])
    with pytest.raises(ValueError, match=r"1 channels.*\(n, H, W, 3\)"):
        clf.predict(X[..., 0])


def test_fit_with_weights_rejects_0_255_floats(toy_data, tmp_path):
    X, y = toy_data
    path, _ = _weights_file(tmp_path, 9, n_classes=2, layers=(1, 1, 1, 1))
    with pytest.raises(ValueError, match="look like 0..255 pixels"):
        BagNetClassifier(9, weights=path, **TINY).fit(X * 255, y)


def test_bagnet_diverging_training_is_an_error_naming_lr_and_epoch(toy_data):
    X, y = toy_data
    clf = BagNetClassifier(9, **{**TINY, "lr": 1e6})
    with pytest.raises(ValueError, match=r"non-finite|loss is .*nan|loss is .*inf") as raised:
        clf.fit(X, y)
    message = str(raised.value)
    assert "BagNetClassifier" in message and re.search(r"at epoch \d of 2", message)
    assert "lr=1000000.0" in message and "lower learning rate, e.g. lr=100000" in message
    assert not hasattr(clf, "net_")


def test_bagnet_inference_reads_the_fitted_network_after_set_params(fitted, toy_data, tmp_path):
    from skpatch.inspection import blackout_scores, class_heatmap

    X, y = toy_data
    clf = pickle.loads(pickle.dumps(fitted))

    def outputs():
        return (clf.patch_logits(X[:3], stride=1), clf.patch_logits(X[:3]),
                clf.patch_logits(X[:3], stride=2, padding="same"),
                class_heatmap(clf, X[:2], classes=["b"]), clf.predict_proba(X),
                clf.predict(X), clf.score(X, y),
                blackout_scores(clf, X, y, fractions=[0.5], random_state=0)["accuracy"])

    before = outputs()
    # set_params(patch_size=17) once made patch_logits(stride=1) fail (a negative dimension)
    clf.set_params(patch_size=17, width=8, layers=(2, 2, 2, 2),
                   weights=str(tmp_path / "absent.pth"), image_shape=(5, 5))
    for old, new in zip(before, outputs()):
        np.testing.assert_array_equal(new, old)
    np.testing.assert_array_equal(clf.predict_proba(X.reshape(len(X), -1)), before[4])


def test_bagnet_refit_without_weights_forgets_them(toy_data, tmp_path):
    from skpatch.nn.bagnet import InputAffine

    X, y = toy_data
    path, _ = _weights_file(tmp_path, 9, n_classes=2, layers=(1, 1, 1, 1), width=2)
    clf = BagNetClassifier(9, **{**TINY, "weights": str(path)}).fit(X, y)
    assert isinstance(clf.module_.core, InputAffine)
    with pytest.raises(ValueError, match="expect RGB images in"):
        clf.predict(2 * X)  # beyond [0, 1]: not what ImageNet weights take
    clf.set_params(weights=None).fit(X, y)
    assert not isinstance(clf.module_.core, InputAffine)
    assert clf.predict(2 * X).shape == (len(X),)  # no ImageNet range check left behind

    # from_weights takes any image size; a fit afterwards holds to its own images
    loaded = BagNetClassifier.from_weights(path, device="cpu").set_params(**TINY)
    assert loaded.image_shape_ is None
    loaded.set_params(weights=None).fit(X, y)
    assert loaded.image_shape_ == X.shape[1:]
    with pytest.raises(ValueError, match="fitted on images of shape"):
        loaded.predict(X[:, :17, :17])
