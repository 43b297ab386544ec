"""Do CIFAR-10 patches cluster? The covering check of Brutzkus et al.'s assumption.

For dictionaries of growing size, :func:`skpatch.diagnostics.patch_covering`
fits k-means atoms on 6x6x3 patches of 80% of the CIFAR-10 training images
(JPEG copy, ``../shared/data/cifar-10-jpeg.tar.gz``) and measures the
distance of patches of the other 20% of the images to their nearest atom,
against the same for Gaussian patches of the same mean and covariance. Twice:
whitened as PatchDictionaryEmbedding whitens by default (ZCA,
``whiten_reg=1e-3``, inside the square root) and raw (centred pixels in
[0, 1], no whitening).

Usage::

    python benchmarks/bench_covering.py                    # full run, ~3 minutes on 1 thread
    python benchmarks/bench_covering.py --quick            # ~1 minute smoke run
    python benchmarks/bench_covering.py --plot covering.png

The table gives, per space and dictionary size, the median (and 10%-90%
quantiles) of the held-out distance divided by the RMS norm of the centred
fit patches, real and Gaussian, and the ratio of the medians; then the
held-out mean squared distance over the squared RMS norm (the k-means
distortion, 1 at one atom) and its ratio. The last line is::

    RESULT median_ratio_whitened_1=<x> mse_ratio_whitened_1=<x> ... seconds=<x>

with ``median_ratio_<space>_<K>`` the real median distance over the Gaussian
one and ``mse_ratio_<space>_<K>`` the real mean squared distance over the
Gaussian one at ``K`` atoms (below 1: real patches are covered better), for
K = 1 (the baseline: the mean patch alone), 1024 and the largest size.
"""

import argparse
import os
import sys
import time

DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data",
                    "cifar-10-jpeg.tar.gz")
SPACES = {
    "whitened": dict(whiten="zca", whiten_reg=1e-3),
    "raw": dict(whiten=None),
}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="sizes up to 1024 and 16,384 fit patches (~1 minute)")
    parser.add_argument("--sizes", type=int, nargs="+", default=None,
                        help="dictionary sizes (default 1 16 64 256 1024 4096)")
    parser.add_argument("--n-fit", type=int, default=None,
                        help="fit patches (default 131,072; --quick 16,384)")
    parser.add_argument("--n-held-out", type=int, default=10000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--plot", default=None, help="save the plot to this path")
    parser.add_argument("--data", default=DATA)
    args = parser.parse_args(argv)
    sizes = tuple(args.sizes or ((1, 16, 64, 256, 1024) if args.quick
                                 else (1, 16, 64, 256, 1024, 4096)))
    n_fit = args.n_fit or (16384 if args.quick else 131072)

    import numpy as np
    from threadpoolctl import threadpool_limits

    from skpatch.datasets import load_cifar10
    from skpatch.diagnostics import patch_covering

    threadpool_limits(args.threads)  # BLAS and faiss's OpenMP, for this process
    start = time.perf_counter()
    images = load_cifar10(args.data, subset="train").images
    print(f"loaded {len(images)} CIFAR-10 (JPEG copy) training images "
          f"({time.perf_counter() - start:.1f}s); 6x6x3 patches, {n_fit} fit patches "
          f"from 80% of the images, {args.n_held_out} held-out patches from the other "
          f"20%, k-means (faiss, 25 iterations), {args.threads} thread(s)", flush=True)

    results, keys = {}, {}
    for space, settings in SPACES.items():
        began = time.perf_counter()
        result = patch_covering(images, patch_size=6, n_atoms=sizes, n_fit=n_fit,
                                n_held_out=args.n_held_out, random_state=args.seed,
                                **settings)
        results[space] = result
        levels = list(result.quantiles)
        lo, mid, hi = levels.index(0.1), levels.index(0.5), levels.index(0.9)
        distortion_ratio = result.real_distortion / result.gaussian_distortion
        print(f"\n{space}: scale (RMS norm of the centred fit patches) = {result.scale:.4g}; "
              f"{time.perf_counter() - began:.1f}s")
        print(f"{'atoms':>6} | {'real median [10%, 90%]':>24} | "
              f"{'Gaussian median [10%, 90%]':>26} | {'ratio':>5} | "
              f"{'real MSE':>8} | {'Gauss MSE':>9} | {'ratio':>5}")
        for i, size in enumerate(result.n_atoms):
            real, gauss = result.real_quantiles[i], result.gaussian_quantiles[i]
            print(f"{size:>6} | {real[mid]:.3f} [{real[lo]:.3f}, {real[hi]:.3f}]{'':>5} | "
                  f"{gauss[mid]:.3f} [{gauss[lo]:.3f}, {gauss[hi]:.3f}]{'':>7} | "
                  f"{result.median_ratio[i]:5.3f} | {result.real_distortion[i]:8.3f} | "
                  f"{result.gaussian_distortion[i]:9.3f} | {distortion_ratio[i]:5.3f}")
        for size in sorted({s for s in (1, 1024, sizes[-1]) if s in sizes}):
            i = list(result.n_atoms).index(size)
            keys[f"median_ratio_{space}_{size}"] = result.median_ratio[i]
            keys[f"mse_ratio_{space}_{size}"] = distortion_ratio[i]
        sys.stdout.flush()

    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        from skpatch.plotting import plot_patch_covering

        fig, axes = plt.subplots(1, 2, figsize=(11, 4), layout="constrained")
        for ax, (space, result) in zip(axes, results.items()):
            plot_patch_covering(result, ax=ax)
            ax.set_title(f"CIFAR-10 (JPEG copy) 6x6x3 patches, {space}")
        fig.savefig(args.plot, dpi=120)
        print(f"\nplot saved to {args.plot}")

    keys["seconds"] = time.perf_counter() - start
    print("\nRESULT " + " ".join(f"{key}={value:.4f}" for key, value in keys.items()))


if __name__ == "__main__":
    main()
