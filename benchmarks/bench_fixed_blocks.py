"""What the fixed-shape GEMM blocks cost: PatchDictionaryEmbedding.transform with and without them.

Every GEMM of the encoding runs on blocks of a fixed number of rows (the last
one zero-padded), so that ``transform`` is bit-identical whatever the chunk
size on every BLAS code path (``skpatch/utils/_blocks.py``). This script
times ``transform`` of random 32x32x3 uint8 images under a 1024-atom data
dictionary of 6x6 patches, one torch thread, with the blocks ('blocked') and
with one plain ``torch.addmm`` per chunk in their place ('plain'), the two
interleaved and the best of ``--repeats`` kept. The RESULT line gives the
ratios blocked / plain (1.0 = free). The two ``hard`` rows are controls:
their paths (the k = 1 nearest-atom search, and on a CPU with numba the
compiled top-k kernel) pad their own fixed blocks and never call the GEMM
helper swapped here, so both sides run the same code and their ratios show
the machine's noise; ``triangle`` (GEMM search and whitening) is the measure. Run ``python benchmarks/bench_fixed_blocks.py``
or ``--quick``.
"""

import argparse
import time

import numpy as np


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="100 images, 3 repeats")
    parser.add_argument("--repeats", type=int, default=None)
    args = parser.parse_args()

    import torch
    from threadpoolctl import threadpool_limits

    import skpatch.embedding._encoder as encoder
    from skpatch import PatchDictionaryEmbedding

    torch.set_num_threads(1)
    threadpool_limits(1)
    n_images = 100 if args.quick else 400
    repeats = args.repeats or (3 if args.quick else 5)
    images = (np.random.default_rng(0).random((n_images, 32, 32, 3)) * 255).astype(np.uint8)

    def plain(bias, rows, weight, block_rows, out=None):
        return torch.addmm(torch.zeros(weight.shape[1]) if bias is None else bias, rows, weight)

    blocked = encoder.blocked_addmm
    ratios = {}
    print(f"{n_images} images 32x32x3, 6x6 patches, 1024 atoms, best of {repeats}")
    print(f"{'encoding':<14}{'k':>5}{'blocked s':>12}{'plain s':>10}{'ratio':>8}")
    for encoding, k in [("hard", 1), ("hard", 256), ("triangle", 10)]:
        emb = PatchDictionaryEmbedding(
            patch_size=6, n_atoms=1024, n_neighbors=k, encoding=encoding, dictionary="data",
            knn_backend="gemm", random_state=0, n_jobs=1,
        ).fit(images[:50])
        best = {"blocked": np.inf, "plain": np.inf}
        outputs = {}
        for _ in range(repeats):
            for name, gemm in (("blocked", blocked), ("plain", plain)):
                encoder.blocked_addmm = gemm
                try:
                    start = time.perf_counter()
                    outputs[name] = emb.transform(images)
                    best[name] = min(best[name], time.perf_counter() - start)
                finally:
                    encoder.blocked_addmm = blocked
        ratio = best["blocked"] / best["plain"]
        ratios[f"{encoding}_k{k}"] = ratio
        # the same codes up to the GEMM's rounding (selections may flip on exact near-ties)
        agree = np.mean(np.isclose(outputs["blocked"], outputs["plain"], rtol=1e-5, atol=1e-6))
        print(f"{encoding:<14}{k:>5}{best['blocked']:>12.3f}{best['plain']:>10.3f}{ratio:>8.3f}"
              f"   (features agreeing: {agree:.4f})")
    print("\nRESULT " + " ".join(f"ratio_{key}={value:.3f}" for key, value in ratios.items()))


if __name__ == "__main__":
    main()
