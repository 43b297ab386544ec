import os
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
