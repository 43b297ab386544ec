"""Small shared pieces of the test suite: tiny networks, seeded images, tolerances.

Import them in a test module with ``from _helpers import ...`` (pytest puts
``tests/`` on ``sys.path``); ``conftest.py`` wraps the data and settings in
fixtures. Nothing here imports torch at import time: ``import _helpers``
stays as cheap as ``import skpatch``.
"""

import numpy as np

__all__ = [
    "TinyPatchNet",
    "TINY_PATCH_CNN",
    "TINY_BAGNET",
    "TINY_EMBEDDING",
    "reference_images",
    "fitted_torch_module",
    "max_abs_error",
    "assert_close_to_scale",
]


class TinyPatchNet:
    """A one-layer patch network, built on first call (torch stays lazy).

    Pass the class itself as ``module=`` of a ``PatchCNNClassifier``: the
    classifier calls it with ``(n_classes, in_channels)``. Hook-ready (its
    ReLU is a module), no BatchNorm, so it trains on any batch size.
    """

    def __new__(cls, n_classes, in_channels):
        import torch

        return torch.nn.Sequential(
            torch.nn.Conv2d(in_channels, 8, 1), torch.nn.ReLU(),
            torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, n_classes),
        )


# fast, seeded settings; copy them into an estimator with **, override as needed
TINY_PATCH_CNN = dict(
    module=TinyPatchNet, max_epochs=1, batch_size=8, lr=0.05, device="cpu",
    verbose=0, random_state=0,
)
TINY_BAGNET = dict(
    patch_size=9, width=2, layers=(1, 1, 1, 1), max_epochs=1, batch_size=8,
    device="cpu", verbose=0, random_state=0,
)
TINY_EMBEDDING = dict(
    patch_size=3, n_atoms=16, n_neighbors=4, dictionary="data", pooling=2,
    random_state=0,
)


def reference_images(n_images=24, height=12, width=12, channels=3, *, seed=0):
    """Seeded float32 images in [0, 1] and labels of 2 classes a network can learn.

    Class 1 images carry a bright 4x4 square at a random place, class 0 a
    dark one, over uniform noise. Returns ``(X, y)`` with ``X`` of shape
    ``(n, H, W, C)`` (``(n, H, W)`` when ``channels`` is None), both read-only
    so that a test cannot change what the next one sees.
    """
    rng = np.random.default_rng(seed)
    shape = (n_images, height, width) + (() if channels is None else (channels,))
    images = rng.uniform(0.25, 0.75, size=shape).astype(np.float32)
    y = np.arange(n_images) % 2
    tops = rng.integers(0, height - 3, n_images)
    lefts = rng.integers(0, width - 3, n_images)
    for i, (top, left) in enumerate(zip(tops, lefts)):
        images[i, top : top + 4, left : left + 4] = 0.95 if y[i] else 0.05
    images.flags.writeable = False
    y.flags.writeable = False
    return images, y


def fitted_torch_module(estimator):
    """The trained ``torch.nn.Module`` of a fitted patch classifier.

    ``module_`` is the fitted attribute (skorch's name); older fits keep it
    on the skorch net as ``net_.module_``.
    """
    module = getattr(estimator, "module_", None)
    if module is None or isinstance(module, (str, type)):
        module = estimator.net_.module_
    return module


def max_abs_error(actual, expected):
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    return float(np.max(np.abs(actual - expected))) if actual.size else 0.0


def assert_close_to_scale(actual, expected, rtol, *, what="values"):
    """``max |actual - expected| <= rtol * max(|expected|)``: a tolerance relative
    to the compared magnitudes, not to each entry (small entries carry the
    rounding error of the large ones they were summed with)."""
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    scale = float(np.max(np.abs(expected))) if expected.size else 0.0
    error = max_abs_error(actual, expected)
    assert error <= rtol * max(scale, np.finfo(np.float32).tiny), (
        f"{what}: max abs error {error:.3g} exceeds {rtol:g} x scale {scale:.3g}"
    )


def randomize_batchnorm(net, seed=0, shift=0.1):
    """Give every BatchNorm2d non-trivial statistics, so eval mode is not near identity.

    Running means and biases are ``shift`` times a standard normal, running
    variances and weights 0.5 plus a uniform draw, all from a generator of ``seed``.
    """
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                n = module.num_features
                module.running_mean.copy_(shift * torch.randn(n, generator=gen))
                module.running_var.copy_(0.5 + torch.rand(n, generator=gen))
                module.weight.copy_(0.5 + torch.rand(n, generator=gen))
                module.bias.copy_(shift * torch.randn(n, generator=gen))
    return net


def relu_calls(net, x):
    """Forward-hook calls of each ``nn.ReLU`` name in one no-grad forward, and the modules.

    ``named_modules(remove_duplicate=False)``: a module registered under two
    names shows up under both, so sharing cannot hide.
    """
    import torch

    relus = [(name, m) for name, m in net.named_modules(remove_duplicate=False)
             if isinstance(m, torch.nn.ReLU)]
    counts = dict.fromkeys((name for name, _ in relus), 0)
    handles = []
    for name, module in relus:
        def hook(module, inputs, output, name=name):
            counts[name] += 1

        handles.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad():
            net(x)
    finally:
        for handle in handles:
            handle.remove()
    return counts, [m for _, m in relus]


def near_ties(emb, X, rel=1e-5):
    """Patches (per sign) of a fitted embedding (stride 1) whose k-th and (k+1)-th
    scores lie within ``rel`` of the largest score, in float64.

    Two search paths score in GEMMs of other shapes, whose float32 sums of d
    terms differ by about d * 2**-24 relative (1.6e-6 for 3x3x3 patches): only
    these patches may pick other neighbours on another CPU.
    """
    windows = np.lib.stride_tricks.sliding_window_view(X, emb._patch_size, axis=(1, 2))
    rows = windows.transpose(0, 1, 2, 4, 5, 3).reshape(-1, emb.atoms_.shape[1]).astype(np.float64)
    mean, whitening = emb.mean_.astype(np.float64), emb.whitening_.astype(np.float64)
    atoms = emb.atoms_.astype(np.float64)
    whitened = [(rows - mean) @ whitening]
    if emb.both_signs == "raw":
        whitened.append((-rows - mean) @ whitening)
    elif emb.both_signs:
        whitened.append(-whitened[0])
    k, n_ties = emb.n_neighbors, 0
    for q in whitened:
        scores = np.sort(2 * q @ atoms.T - (atoms**2).sum(axis=1), axis=1)[:, ::-1]
        gaps = scores[:, k - 1] - scores[:, k]
        n_ties += int((gaps <= rel * np.abs(scores).max()).sum())
    return n_ties
