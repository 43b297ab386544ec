import numpy as np
import pytest
import torch
import torch.nn.functional as F

from skpatch.nn import BasicBlock, CIFARResNet, resnet, resnet10, resnet18, resnet34

# the shared cores are oversubscribed; torch's spinning threads only slow down
torch.set_num_threads(1)


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
