import copy

import numpy as np
import pytest
import torch

import torch.nn.functional as F
from _helpers import randomize_batchnorm, relu_calls

from skpatch.nn import BasicBlock, CIFARResNet, resnet, resnet10, resnet18, resnet34



def assert_close_f32(actual, expected, rtol=1e-5):
    """float32: ``rtol`` relative plus an absolute tolerance scaled by the largest magnitude.

    Other CPUs and thread counts sum in another order, so an entry near zero
    carries the rounding of the large terms summed into it.
    """
    expected = np.asarray(expected, dtype=np.float64)
    np.testing.assert_allclose(actual, expected, rtol=rtol,
                               atol=rtol * float(np.max(np.abs(expected))))


def _n_params(module):
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize(
    "build, expected",
    # published parameter counts of the CIFAR ResNets (kuangliu/pytorch-cifar,
    # 10 classes): ResNet-18 11,173,962 and ResNet-34 21,282,122
    [(resnet18, 11_173_962), (resnet34, 21_282_122)],
)
def test_parameter_counts_match_published_cifar_resnets(build, expected):
    assert _n_params(build()) == expected


def test_width_scales_conv_parameters_quadratically():
    # every conv weight is (c_out, c_in, k, k) with both c proportional to width
    wide, narrow = resnet10(width=16), resnet10(width=8)
    conv = lambda m: sum(p.numel() for n, p in m.named_parameters()
                         if p.ndim == 4 and "stem" not in n)
    assert conv(wide) == 4 * conv(narrow)


def test_basic_block_matches_functional_reference():
    torch.manual_seed(0)
    block = BasicBlock(3, 5, stride=2).eval()
    for bn in (block.bn1, block.bn2, block.shortcut[1]):
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
    x = torch.randn(2, 3, 7, 7)

    def bn_eval(z, bn):
        shape = (1, -1, 1, 1)
        return ((z - bn.running_mean.view(shape)) / torch.sqrt(bn.running_var.view(shape) + bn.eps)
                * bn.weight.view(shape) + bn.bias.view(shape))

    out = F.relu(bn_eval(F.conv2d(x, block.conv1.weight, stride=2, padding=1), block.bn1))
    out = bn_eval(F.conv2d(out, block.conv2.weight, padding=1), block.bn2)
    short = bn_eval(F.conv2d(x, block.shortcut[0].weight, stride=2), block.shortcut[1])
    expected = F.relu(out + short)
    with torch.no_grad():
        assert_close_f32(block(x).numpy(), expected.detach().numpy(), rtol=1e-5)


@pytest.mark.parametrize("size", [1, 4, 8, 13, 32])
def test_any_input_size_and_no_max_pool(size):
    net = resnet10(n_classes=7, in_channels=2, width=4).eval()
    x = torch.randn(3, 2, size, size)
    with torch.no_grad():
        feats = net.features(x)
        logits = net(x)
    # stride 1 stem, no max-pool, three stride-2 stages: ceil(size / 8)
    assert feats.shape[2:] == (-(-size // 8), -(-size // 8))
    # the head is global average pooling then the linear layer
    expected = net.fc(feats.mean(dim=(2, 3))).detach()
    assert_close_f32(logits.numpy(), expected.numpy(), rtol=1e-5)


def test_block_layout_per_depth():
    for depth, blocks in [(10, (1, 1, 1, 1)), (18, (2, 2, 2, 2)), (34, (3, 4, 6, 3))]:
        net = resnet(depth, width=4)
        assert tuple(len(stage) for stage in net.stages) == blocks
    assert isinstance(resnet(18), CIFARResNet)


def test_unknown_depth_is_an_error():
    with pytest.raises(ValueError, match="depth must be one of"):
        resnet(50)


# --- hook-ready activations: every ReLU its own nn.ReLU, called once per forward ---


def _randomized(net, seed=0):
    """Non-trivial BatchNorm statistics so eval mode is not close to identity."""
    return randomize_batchnorm(net, seed, shift=0.2)


def _functional_reference(net, x):
    """The forward of the code before activations were modules: ``torch.relu``."""
    x = torch.relu(net.stem[1](net.stem[0](x)))
    for stage in net.stages:
        for block in stage:
            out = torch.relu(block.bn1(block.conv1(x)))
            out = block.bn2(block.conv2(out))
            x = torch.relu(out + block.shortcut(x))
    return net.fc(torch.flatten(net.pool(x), 1))


_count_relu_calls = relu_calls


@pytest.mark.parametrize("depth, n_activations",
                         # 1 stem + 2 per BasicBlock: blocks 4, 8, 16
                         [(10, 1 + 2 * 4), (18, 1 + 2 * 8), (34, 1 + 2 * 16)])
def test_every_activation_is_its_own_relu_called_once(depth, n_activations):
    net = resnet(depth, n_classes=3, width=2).eval()
    counts, modules = _count_relu_calls(net, torch.randn(1, 3, 4, 4))
    assert len(counts) == n_activations
    assert len({id(m) for m in modules}) == n_activations  # no instance reused
    assert set(counts.values()) == {1}
    # and no activation left functional: each block calls its own two modules
    for stage in net.stages:
        for block in stage:
            assert isinstance(block.relu1, torch.nn.ReLU)
            assert block.relu1 is not block.relu2


def test_relu_modules_keep_state_dict_keys():
    """The keys of the layout before activations were modules, written out."""
    bn_keys = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    expected = {"stem.0.weight", "fc.weight", "fc.bias"}
    expected |= {f"stem.1.{k}" for k in bn_keys}
    for stage in range(4):
        for block in range(2):
            prefix = f"stages.{stage}.{block}"
            expected |= {f"{prefix}.conv1.weight", f"{prefix}.conv2.weight"}
            expected |= {f"{prefix}.bn{i}.{k}" for i in (1, 2) for k in bn_keys}
            if stage > 0 and block == 0:  # stride 2 and wider: a projection shortcut
                expected.add(f"{prefix}.shortcut.0.weight")
                expected |= {f"{prefix}.shortcut.1.{k}" for k in bn_keys}
    assert set(resnet18(width=4).state_dict()) == expected


@pytest.mark.parametrize("depth", [10, 18])
def test_outputs_equal_functional_relu_forward_bit_for_bit(depth):
    torch.manual_seed(0)
    net = _randomized(resnet(depth, n_classes=4, in_channels=2, width=4)).eval()
    x = torch.randn(3, 2, 9, 9)
    with torch.no_grad():
        assert torch.equal(net(x), _functional_reference(net, x))
    # training mode: batch statistics, and the same gradients
    net.train()
    reference = copy.deepcopy(net)
    net(x).square().sum().backward()
    _functional_reference(reference, x).square().sum().backward()
    for (name, p), q in zip(net.named_parameters(), reference.parameters()):
        assert torch.equal(p.grad, q.grad), name


def test_stem_hook_mask_equals_independent_computation():
    torch.manual_seed(0)
    net = _randomized(resnet10(n_classes=3, width=4)).eval()
    x = torch.randn(2, 3, 6, 6)
    captured = {}

    def hook(module, inputs, output):
        captured["mask"] = output > 0
        captured["input"], captured["output"] = inputs[0], output

    handle = net.stem[2].register_forward_hook(hook)
    with torch.no_grad():
        net(x)
        pre_activation = net.stem[1](net.stem[0](x))
    handle.remove()
    assert torch.equal(captured["mask"], pre_activation > 0)
    # not inplace: the kept input is the pre-activation, the kept output is not
    # overwritten by the rest of the forward
    assert (captured["input"] < 0).any()
    assert torch.equal(captured["input"], pre_activation)
    assert torch.equal(captured["output"], torch.relu(pre_activation))
