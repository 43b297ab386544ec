"""Tests for skpatch.nn.bagnet (the torch modules) and BagNetClassifier."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from skpatch.extraction import extract_patches  # noqa: E402
from skpatch.nn.bagnet import bagnet9, bagnet17, bagnet33  # noqa: E402

CONSTRUCTORS = {9: bagnet9, 17: bagnet17, 33: bagnet33}
KERNEL3 = {9: (1, 1, 0, 0), 17: (1, 1, 1, 0), 33: (1, 1, 1, 1)}


def _randomize_batchnorm(model, seed=0):
    """Give every BatchNorm non-trivial statistics so eval mode is not identity."""
    gen = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            n = module.num_features
            module.running_mean.copy_(0.1 * torch.randn(n, generator=gen))
            module.running_var.copy_(0.5 + torch.rand(n, generator=gen))
            module.weight.data.copy_(0.5 + torch.rand(n, generator=gen))
            module.bias.data.copy_(0.1 * torch.randn(n, generator=gen))
    return model


def _tiny(patch_size, layers=(2, 1, 2, 1), n_classes=5, width=4, seed=0):
    torch.manual_seed(seed)
    model = CONSTRUCTORS[patch_size](n_classes=n_classes, width=width, layers=layers)
    return _randomize_batchnorm(model, seed).double().eval()


def _reference_state_dict_shapes(kernel3, layers=(3, 4, 6, 3), width=64, n_classes=1000):
    """Key names and shapes of the reference implementation, written from its spec."""
    shapes = {"conv1.weight": (width, 3, 1, 1), "conv2.weight": (width, width, 3, 3)}

    def bn(prefix, n):
        shapes.update({f"{prefix}.{k}": (n,) for k in ("weight", "bias", "running_mean", "running_var")})
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
    shapes = _reference_state_dict_shapes(KERNEL3[patch_size], layers=(2, 1, 2, 1), width=4, n_classes=7)
    gen = torch.Generator().manual_seed(patch_size)
    state = {
        k: (torch.tensor(3) if s == () else torch.rand(s, generator=gen)) for k, s in shapes.items()
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
    np.testing.assert_allclose(logits, alone, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("patch_size", [9, 17, 33])
def test_one_pixel_changes_only_windows_holding_it(patch_size):
    model = _tiny(patch_size, width=8)
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
    np.testing.assert_allclose(pooled.numpy(), evidence.mean(dim=(2, 3)).numpy(), rtol=1e-10)


def test_patch_logits_match_manual_fc_at_each_location():
    model = _tiny(17)
    x = torch.from_numpy(np.random.default_rng(3).random((2, 3, 33, 41)))
    with torch.no_grad():
        features = model.features(x)  # (n, D, gh, gw)
        expected = features.permute(0, 2, 3, 1) @ model.fc.weight.T + model.fc.bias
        np.testing.assert_allclose(
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
