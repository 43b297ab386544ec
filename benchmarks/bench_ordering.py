"""Speed of the POR patch ordering (issue 4).

Times :func:`skpatch.ordering.order_patches` with mutual information on
50,000 CIFAR-shaped uint8 images (the CIFAR-10 JPEG copy's training set when
``../shared/data`` holds it, else uniform random images), with 8x8 and 4x4
patches, and a direct per-image Python implementation of the same algorithm
(numpy histograms per patch pair, greedy chain in Python) on the first few
hundred of the same images. The speedup is the ratio of per-image times
measured in this run on those same images; the two implementations must
return the same permutations (checked and printed).

Usage::

    python benchmarks/bench_ordering.py          # full: 50,000 images
    python benchmarks/bench_ordering.py --quick  # 5,000 images, about a minute

Ends with ``RESULT mi8_seconds=... mi4_seconds=... speedup_vs_python=...``.
"""

import argparse
import os
import platform
import time
from pathlib import Path

import numpy as np

from skpatch.ordering import order_patches

N_BINS = 16
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar-10-jpeg.tar.gz"


def load_images(n_images):
    if SHARED.exists():
        from skpatch.datasets import load_cifar10

        images = load_cifar10(SHARED, subset="train").images[:n_images]
        return np.ascontiguousarray(images), "CIFAR-10 (JPEG copy) training images"
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n_images, 32, 32, 3), dtype=np.uint8)
    return images, "uniform random uint8 images (shared data absent)"


def _entropy(counts, n_pixels):
    p = counts[counts > 0] / n_pixels
    return float(-(p * np.log2(p)).sum())


def python_mutual_information(patch_a, patch_b):
    """MI (bits) of two (ph, pw, C) uint8 patches, per channel then averaged."""
    edges = np.linspace(0.0, 1.0, N_BINS + 1)
    values = []
    for channel in range(patch_a.shape[-1]):
        a = patch_a[..., channel].ravel() / 255.0
        b = patch_b[..., channel].ravel() / 255.0
        h_a = _entropy(np.histogram(a, edges)[0], a.size)
        h_b = _entropy(np.histogram(b, edges)[0], b.size)
        joint = np.histogram2d(a, b, [edges, edges])[0]
        values.append(h_a + h_b - _entropy(joint.ravel(), a.size))
    return float(np.mean(values))


def python_order(image, patch_size):
    """The POR greedy chain, written directly: one image, one pair at a time."""
    grid = image.shape[0] // patch_size
    patches = [
        image[r * patch_size : (r + 1) * patch_size, c * patch_size : (c + 1) * patch_size]
        for r in range(grid)
        for c in range(grid)
    ]
    order = [0]
    remaining = list(range(1, len(patches)))
    while remaining:
        scores = [python_mutual_information(patches[order[-1]], patches[j]) for j in remaining]
        # equal MIs (common: few pixels, few bins) tie; the lowest index wins
        best = remaining[int(np.argmax(np.round(scores, 9)))]
        order.append(best)
        remaining.remove(best)
    return np.array(order)


def time_vectorized(images, patch_size, n_jobs):
    start, cpu = time.perf_counter(), time.process_time()
    _, permutation = order_patches(images, patch_size, n_bins=N_BINS, n_jobs=n_jobs)
    return time.perf_counter() - start, time.process_time() - cpu, permutation


def time_python(images, patch_size):
    start, cpu = time.perf_counter(), time.process_time()
    permutation = np.stack([python_order(image, patch_size) for image in images])
    return time.perf_counter() - start, time.process_time() - cpu, permutation


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="5,000 images")
    args = parser.parse_args()
    n_images = 5_000 if args.quick else 50_000
    n_python = {8: 40, 4: 10} if args.quick else {8: 150, 4: 30}

    images, source = load_images(n_images)
    print(f"skpatch POR ordering benchmark: {len(images)} {source}, 32x32x3 uint8")
    print(
        f"machine: {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs (shared with concurrent jobs), numpy {np.__version__}"
    )
    print(f"measure=mutual_information, n_bins={N_BINS}, order='similar', reference=0\n")

    rows, results = [], {}
    for patch_size in (8, 4):
        seconds, cpu, permutation = time_vectorized(images, patch_size, n_jobs=2)
        k = n_python[patch_size]
        # one thread on the same k images as the single-threaded Python loop
        _, sub_cpu, sub_perm = time_vectorized(images[:k], patch_size, n_jobs=1)
        py_seconds, py_cpu, py_perm = time_python(images[:k], patch_size)
        agree = float(np.mean(np.all(py_perm == sub_perm, axis=1)))
        same = bool(np.array_equal(sub_perm, permutation[:k]))
        speedup = (py_seconds / k) / (seconds / len(images))
        speedup_cpu = (py_cpu / k) / (cpu / len(images))
        results[patch_size] = (seconds, speedup)
        rows.append(
            (patch_size, len(images), seconds, cpu, k, 1e3 * py_seconds / k,
             1e3 * py_cpu / k, speedup, speedup_cpu, agree, same)
        )

    header = (
        f"{'patch':>6} {'images':>7} {'wall s':>8} {'cpu s':>8} {'py images':>9} "
        f"{'py wall ms/im':>13} {'py cpu ms/im':>12} {'speedup wall':>12} "
        f"{'speedup cpu':>11} {'same perm as py':>15} {'subset == full':>14}"
    )
    print(header)
    print("-" * len(header))
    for size, n, sec, cpu, k, py_ms, py_cpu_ms, speedup, speedup_cpu, agree, same in rows:
        print(
            f"{size}x{size:<4} {n:>7} {sec:>8.2f} {cpu:>8.2f} {k:>9} {py_ms:>13.1f} "
            f"{py_cpu_ms:>12.1f} {speedup:>12.0f} {speedup_cpu:>11.0f} {agree:>15.0%} "
            f"{str(same):>14}"
        )
    print(
        "\nvectorized: order_patches(n_jobs=2) on all images; python: a direct "
        "per-image loop on the first images. cpu s = process CPU time (both "
        "threads), less sensitive than wall time to other jobs on the machine. "
        "speedup = python per-image time / vectorized per-image time, both "
        "measured in this run. Targets on 50,000 images: mi8 <= 30 s, "
        "mi4 <= 120 s, speedup >= 50."
    )
    speedup = min(results[8][1], results[4][1])
    print(
        f"RESULT mi8_seconds={results[8][0]:.2f} mi4_seconds={results[4][0]:.2f} "
        f"speedup_vs_python={speedup:.1f}"
    )


if __name__ == "__main__":
    main()
