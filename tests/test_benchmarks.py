"""The CIFAR-10 benchmark's proxy subsets are stratified (the archive is class-ordered)."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

_SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_embedding_cifar10.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_embedding_cifar10", _SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_stratified_subset_takes_every_class_equally(bench):
    # labels sorted by class, as the JPEG archive lists its test images
    y = np.repeat(np.arange(10), 1000)
    keep = bench.stratified_subset(y, 2000, seed=1)
    assert np.array_equal(np.bincount(y[keep], minlength=10), np.full(10, 200))
    assert np.array_equal(keep, np.unique(keep))  # sorted, no repeats
    # the first 2,000 images, what a "first n" proxy scores on, hold two classes only
    assert np.count_nonzero(np.bincount(y[:2000], minlength=10)) == 2
    # seeded: the same draw for the same seed, another for another seed
    assert np.array_equal(keep, bench.stratified_subset(y, 2000, seed=1))
    assert not np.array_equal(keep, bench.stratified_subset(y, 2000, seed=2))


def test_stratified_subset_spreads_the_remainder_and_checks_sizes(bench):
    y = np.repeat(np.arange(3), [5, 5, 2])
    keep = bench.stratified_subset(y, 7, seed=0)  # 7 = 3 * 2 + 1: class 0 gets the extra one
    assert np.array_equal(np.bincount(y[keep], minlength=3), [3, 2, 2])
    with pytest.raises(ValueError, match="class 2 has only 2 images"):
        bench.stratified_subset(y, 9, seed=0)

