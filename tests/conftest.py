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
