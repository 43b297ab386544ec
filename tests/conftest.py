import os
import sys
from pathlib import Path

import numpy as np
import pytest

# Headless plotting for every test that draws.
os.environ.setdefault("MPLBACKEND", "Agg")

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture
def shared_data():
    """Path to ../shared/data (real datasets); skip where it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real datasets not available: {SHARED_DATA} does not exist")
    return SHARED_DATA


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def _torch_threads_for_tests():
    """Torch's intra-op threads for the suite: ``SKPATCH_TEST_TORCH_THREADS``, default 1.

    One thread by default: the test networks are tiny and the CI cores are
    shared, so thread synchronisation costs more than it gains. Run the suite
    with ``SKPATCH_TEST_TORCH_THREADS=2`` too: float32 sums then run in another
    order, which is what the relative tolerances are for.
    """
    value = os.environ.get("SKPATCH_TEST_TORCH_THREADS", "1")
    if not value.isdigit() or int(value) < 1:
        raise pytest.UsageError(
            f"SKPATCH_TEST_TORCH_THREADS must be a positive integer, got {value!r}."
        )
    return int(value)


@pytest.fixture(autouse=True, scope="session")
def _torch_threads():
    """Set torch's thread count once for the session and restore it after."""
    try:
        import torch
    except ImportError:  # the suite's torch-free parts still run
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(_torch_threads_for_tests())
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _no_test_leaves_torch_threads_changed(_torch_threads):
    """Library code must not leave a process-wide thread setting changed."""
    torch = sys.modules.get("torch")
    before = torch.get_num_threads() if torch is not None else None
    yield
    torch = sys.modules.get("torch")
    if before is not None and torch is not None:
        assert torch.get_num_threads() == before, (
            f"torch.get_num_threads() changed from {before} to {torch.get_num_threads()}"
        )


# ---- GPU tests: the ``gpu`` marker -----------------------------------------


def _cuda_skip_reason():
    """Why the CUDA tests cannot run here, or None when a CUDA GPU is visible."""
    try:
        import torch
    except ImportError:
        return "torch is not installed"
    if not torch.cuda.is_available():
        return "no CUDA GPU: torch.cuda.is_available() is False (run on a GPU machine: benchmarks/gpu_check.py)"
    return None


def pytest_runtest_setup(item):
    # every test marked ``gpu`` (any file) skips with the reason where CUDA is absent
    if item.get_closest_marker("gpu") is not None:
        reason = _cuda_skip_reason()
        if reason is not None:
            pytest.skip(reason)


# ---- shared small configs and reference data ---------------------------------
# The pieces live in tests/_helpers.py (importable: ``from _helpers import ...``);
# these fixtures hand out fresh copies, so a test may change what it gets.


@pytest.fixture
def tiny_patch_net():
    """``TinyPatchNet``: a one-layer patch network class for ``module=``."""
    from _helpers import TinyPatchNet

    return TinyPatchNet


@pytest.fixture
def tiny_patch_cnn_params():
    """Fast seeded PatchCNNClassifier settings (tiny net, 1 epoch, CPU); add patch_size."""
    from _helpers import TINY_PATCH_CNN

    return dict(TINY_PATCH_CNN)


@pytest.fixture
def tiny_bagnet_params():
    """Fast seeded BagNetClassifier settings (BagNet-9, width 2, one block per stage, CPU)."""
    from _helpers import TINY_BAGNET

    return dict(TINY_BAGNET)


@pytest.fixture
def tiny_embedding_params():
    """Fast seeded PatchDictionaryEmbedding settings (3x3 patches, 16 data atoms, k=4)."""
    from _helpers import TINY_EMBEDDING

    return dict(TINY_EMBEDDING)


@pytest.fixture(scope="session")
def reference_images():
    """Seeded (24, 12, 12, 3) float32 images in [0, 1] and labels of 2 classes, read-only."""
    from _helpers import reference_images as make

    return make()


@pytest.fixture(scope="session")
def reference_gray_images():
    """Seeded (24, 12, 12) float32 gray images in [0, 1] and 2-class labels, read-only."""
    from _helpers import reference_images as make

    return make(channels=None, seed=1)


@pytest.fixture(scope="session")
def reference_logits(reference_images):
    """Patch logits ``(24, 2, 9, 9)`` of a tiny seeded PatchCNN (4x4 patches) fitted on
    ``reference_images`` on the CPU, read-only: real class evidence for inspection tests."""
    from _helpers import TINY_PATCH_CNN

    from skpatch import PatchCNNClassifier

    X, y = reference_images
    params = dict(TINY_PATCH_CNN, max_epochs=2, augment=None)
    logits = PatchCNNClassifier(patch_size=4, **params).fit(X, y).patch_logits(X)
    logits.flags.writeable = False
    return logits
