"""Patch extraction throughput: skpatch against scikit-learn and a plain copy.

On CIFAR-shaped uint8 images (n, 32, 32, 3), stride 1, patch sizes 6 and 8:

* skpatch ``PatchExtractor(flatten=True)`` (a C-contiguous uint8 copy),
* skpatch's zero-copy patch-grid view (``flatten=False``),
* scikit-learn's ``PatchExtractor`` (float64 output, one row per patch),
* a per-image loop over ``sklearn.feature_extraction.image.extract_patches_2d``,
* a plain ``ndarray.copy()`` of as many bytes as the flattened output: the
  memory-bandwidth floor any materializing extractor has to pay.

Then random sampling, ``max_patches`` patches per image (``--max-patches``,
100 by default) on the same images: skpatch's ``PatchExtractor(max_patches=m,
flatten=True)`` (distinct positions per image, one gather; and the same with
the ``(n, m, ph, pw, C)`` output) against scikit-learn's
``PatchExtractor(patch_size=..., max_patches=m)``, which loops over images in
Python and draws positions with replacement.

Each timing is the best of ``--repeats`` runs. scikit-learn's two methods
allocate float64 output (8x the bytes), so they run on the first
``--sklearn-images`` images (2,000 by default; pass 10000 for all, about
16 GB for patch 8) and are compared in patches per second.

Run: ``python benchmarks/bench_extraction.py`` (``--quick`` for a smoke run).
Ends with ``RESULT speedup_vs_sklearn=<x> ratio_to_copy=<x>
speedup_max_patches_vs_sklearn=<x>`` (patch 6, flatten=True): the throughput
ratio to scikit-learn's PatchExtractor, the time of ``flatten=True`` over the
time of the plain copy, and the throughput ratio to scikit-learn's
PatchExtractor with ``max_patches`` (patches per second, both seeded).
"""

import argparse
import platform
import time

import numpy as np
import sklearn
from sklearn.feature_extraction.image import PatchExtractor as SklearnPatchExtractor
from sklearn.feature_extraction.image import extract_patches_2d

from skpatch import PatchExtractor


def best_time(func, repeats):
    best = np.inf
    for _ in range(repeats):
        start = time.perf_counter()
        out = func()
        best = min(best, time.perf_counter() - start)
        del out
    return best


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1,000 images, 1 repeat")
    parser.add_argument("--n-images", type=int, default=10_000)
    parser.add_argument("--sklearn-images", type=int, default=2_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-patches", type=int, default=100)
    args = parser.parse_args()
    if args.quick:
        args.n_images, args.sklearn_images, args.repeats = 1_000, 300, 1

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(args.n_images, 32, 32, 3), dtype=np.uint8)
    small = images[: args.sklearn_images]
    print(
        f"{args.n_images} uint8 images 32x32x3 (scikit-learn methods on "
        f"{len(small)}), stride 1, best of {args.repeats}; numpy {np.__version__}, "
        f"scikit-learn {sklearn.__version__}, {platform.processor() or platform.machine()}"
    )
    header = f"{'patch':>5}  {'method':<36} {'images':>6} {'seconds':>8} {'Mpatches/s':>11} {'vs sklearn':>10}"
    print(header)
    print("-" * len(header))
    results = {}
    for patch in (6, 8):
        n_patches = (32 - patch + 1) ** 2
        out_bytes = args.n_images * n_patches * patch * patch * 3
        source = np.ones(out_bytes, dtype=np.uint8)
        flat = PatchExtractor(patch, flatten=True)
        view = PatchExtractor(patch)
        sk = SklearnPatchExtractor(patch_size=(patch, patch), max_patches=None)
        rows = [
            ("skpatch PatchExtractor(flatten=True)", args.n_images, lambda: flat.transform(images)),
            ("skpatch patch-grid view", args.n_images, lambda: view.transform(images)),
            ("plain copy of the same bytes", args.n_images, lambda: source.copy()),
            ("sklearn PatchExtractor", len(small), lambda: sk.transform(small)),
            (
                "sklearn extract_patches_2d loop",
                len(small),
                lambda: [extract_patches_2d(image, (patch, patch)) for image in small],
            ),
        ]
        rates = {}
        for name, count, func in rows:
            seconds = best_time(func, args.repeats)
            rates[name] = count * n_patches / seconds
            results[(patch, name)] = (seconds, rates[name])
        sk_rate = rates["sklearn PatchExtractor"]
        for name, count, _ in rows:
            seconds, rate = results[(patch, name)]
            print(
                f"{patch:>5}  {name:<36} {count:>6} {seconds:>8.3f} {rate / 1e6:>11.2f} "
                f"{rate / sk_rate:>9.1f}x"
            )
        del source
    speedup = (
        results[(6, "skpatch PatchExtractor(flatten=True)")][1]
        / results[(6, "sklearn PatchExtractor")][1]
    )
    ratio_to_copy = (
        results[(6, "skpatch PatchExtractor(flatten=True)")][0]
        / results[(6, "plain copy of the same bytes")][0]
    )
    print(
        f"patch 6, flatten=True: {speedup:.1f}x scikit-learn's PatchExtractor "
        f"(target >= 10x), {ratio_to_copy:.2f}x the plain copy's time (target <= 2x)"
    )
    speedup_sampled = bench_max_patches(images, small, args)
    print(
        f"RESULT speedup_vs_sklearn={speedup:.2f} ratio_to_copy={ratio_to_copy:.3f} "
        f"speedup_max_patches_vs_sklearn={speedup_sampled:.2f}"
    )


def bench_max_patches(images, small, args):
    """Random sampling of ``max_patches`` per image; returns the patch-6 speedup."""
    m = args.max_patches
    print()
    print(f"max_patches={m} per image, seeded, best of {args.repeats}")
    header = f"{'patch':>5}  {'method':<42} {'images':>6} {'seconds':>8} {'Mpatches/s':>11} {'vs sklearn':>10}"
    print(header)
    print("-" * len(header))
    speedups = {}
    for patch in (6, 8):
        flat = PatchExtractor(patch, max_patches=m, random_state=0, flatten=True)
        grid = PatchExtractor(patch, max_patches=m, random_state=0)
        sk = SklearnPatchExtractor(patch_size=(patch, patch), max_patches=m, random_state=0)
        rows = [
            ("skpatch PatchExtractor(flatten=True)", len(images), lambda: flat.transform(images)),
            ("skpatch PatchExtractor, (n, m, ph, pw, C)", len(images), lambda: grid.transform(images)),
            ("sklearn PatchExtractor", len(small), lambda: sk.transform(small)),
        ]
        rates = {}
        for name, count, func in rows:
            seconds = best_time(func, args.repeats)
            rates[name] = (seconds, count * m / seconds)
        sk_rate = rates["sklearn PatchExtractor"][1]
        for name, count, _ in rows:
            seconds, rate = rates[name]
            print(
                f"{patch:>5}  {name:<42} {count:>6} {seconds:>8.3f} {rate / 1e6:>11.2f} "
                f"{rate / sk_rate:>9.1f}x"
            )
        speedups[patch] = rates["skpatch PatchExtractor(flatten=True)"][1] / sk_rate
    print(
        f"patch 6, max_patches={m}, flatten=True: {speedups[6]:.1f}x scikit-learn's "
        "PatchExtractor(max_patches=...) (target >= 10x)"
    )
    return speedups[6]


if __name__ == "__main__":
    main()
