"""CIFAR-10 (JPEG copy) accuracy of PatchDictionaryEmbedding + a linear head.

``Pipeline([PatchDictionaryEmbedding(...), StandardScaler(),
LogisticRegression(...)])`` fitted on the 50,000 training images of the JPEG
copy of CIFAR-10 (``../shared/data/cifar-10-jpeg.tar.gz``) and scored on its
10,000 test images. Every stage is timed (loading, fitting the embedding,
encoding, the classifier, prediction); each configuration runs in its own
subprocess so that its peak resident memory is its own.

Usage::

    python benchmarks/bench_embedding_cifar10.py              # best configuration
    python benchmarks/bench_embedding_cifar10.py --variants   # encoding x dictionary table
    python benchmarks/bench_embedding_cifar10.py --quick      # ~1 minute smoke run
    python benchmarks/bench_embedding_cifar10.py --set '{"C": 0.001, "embedding": {"pooling": 4}}'

The last line is ``RESULT accuracy=<x> seconds=<x> peak_gb=<x>`` for the
best configuration (or the first row of the table).
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time

DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data",
                    "cifar-10-jpeg.tar.gz")

# the best configuration found (see docs/benchmarks.md for the search)
BEST = dict(
    embedding=dict(patch_size=6, n_atoms=1536, n_neighbors=384, encoding="hard",
                   both_signs=True, pooling=3, dictionary="kmeans",
                   flip_invariant=True, power=0.5, n_patches_fit=262144),
    C=0.002,
)

# the slides' table: Phi_hard / Phi_full with data (k-means) and Gaussian atoms
VARIANTS = [
    ("hard", "kmeans"), ("hard", "data"), ("hard", "gaussian"),
    ("full", "kmeans"), ("full", "gaussian"), ("triangle", "kmeans"),
]


def run_one(config, n_train, n_test, threads, data):
    """Fit and score one configuration in this process; return a result dict."""
    import numpy as np
    import torch
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    from skpatch import PatchDictionaryEmbedding
    from skpatch.datasets import load_cifar10

    torch.set_num_threads(threads)
    threadpool_limits(threads)
    start = time.perf_counter()
    X_train, y_train = load_cifar10(data, subset="train", return_X_y=True)
    X_test, y_test = load_cifar10(data, subset="test", return_X_y=True)
    if n_train < len(X_train):  # seeded stratified-enough subset for quick runs
        keep = np.random.default_rng(0).permutation(len(X_train))[:n_train]
        X_train, y_train = X_train[keep], y_train[keep]
    X_test, y_test = X_test[:n_test], y_test[:n_test]
    loaded = time.perf_counter()
    model = Pipeline([
        ("embed", PatchDictionaryEmbedding(random_state=0, **config["embedding"])),
        ("scale", StandardScaler(copy=False)),
        ("clf", LogisticRegression(C=config["C"], max_iter=config.get("max_iter", 300))),
    ])
    model.fit(X_train, y_train)
    fitted = time.perf_counter()
    accuracy = float(model.score(X_test, y_test))
    done = time.perf_counter()
    return dict(
        accuracy=accuracy, seconds=done - start, load_s=loaded - start,
        fit_s=fitted - loaded, predict_s=done - fitted,
        n_features=int(model["embed"].n_features_out_),
        peak_gb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2,
    )


def run_child(config, args):
    """Run one configuration in a fresh interpreter; return its result dict."""
    cmd = [sys.executable, __file__, "--child", json.dumps(config),
           "--n-train", str(args.n_train), "--n-test", str(args.n_test),
           "--threads", str(args.threads), "--data", args.data]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def _row(name, config, result):
    emb = config["embedding"]
    return (f"{name:<24} {emb['n_atoms']:>5} {emb['n_neighbors']:>5} "
            f"{str(emb.get('both_signs', False)):>5} {emb.get('pooling', 2):>4} "
            f"{str(emb.get('flip_invariant', False)):>5} {emb.get('power', 1.0):>5} "
            f"{config['C']:>6} {result['n_features']:>6} {result['accuracy']:>8.2%} "
            f"{result['seconds']:>8.0f} {result['fit_s']:>7.0f} {result['peak_gb']:>7.2f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="2,000 train / 1,000 test images, 256 atoms")
    parser.add_argument("--variants", action="store_true",
                        help="the encoding x dictionary table instead of the best run")
    parser.add_argument("--n-train", type=int, default=50000)
    parser.add_argument("--n-test", type=int, default=10000)
    parser.add_argument("--threads", type=int, default=2,
                        help="torch/BLAS threads (default 2: the whole 2-core machine)")
    parser.add_argument("--set", default="{}",
                        help='JSON overrides of the best configuration, e.g. '
                             '\'{"C": 0.001, "embedding": {"pooling": 4}}\'')
    parser.add_argument("--data", default=DATA)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        result = run_one(json.loads(args.child), args.n_train, args.n_test,
                         args.threads, args.data)
        print(json.dumps(result))
        return

    best = json.loads(json.dumps(BEST))
    overrides = json.loads(args.set)
    best["embedding"].update(overrides.pop("embedding", {}))
    best.update(overrides)
    if args.quick:
        args.n_train, args.n_test = min(args.n_train, 2000), min(args.n_test, 1000)
        best["embedding"].update(n_atoms=256, n_neighbors=64, n_patches_fit=65536)
    configs = [("best", best)]
    if args.variants:
        configs = []
        for encoding, dictionary in VARIANTS:
            config = json.loads(json.dumps(best))
            config["embedding"].update(encoding=encoding, dictionary=dictionary,
                                       both_signs=False)
            if encoding == "full":
                config["embedding"].update(n_full_components=4)
            if encoding == "triangle":
                config["embedding"].update(n_neighbors=config["embedding"]["n_atoms"])
            configs.append((f"{encoding} / {dictionary}", config))

    print(f"CIFAR-10 (JPEG copy): {args.n_train} train / {args.n_test} test images, "
          f"{args.threads} thread(s), {os.cpu_count()} CPUs\n")
    print(f"{'encoding / dictionary':<24} {'atoms':>5} {'k':>5} {'both':>5} {'pool':>4} "
          f"{'flip':>5} {'power':>5} {'C':>6} {'dim':>6} {'accuracy':>8} {'total s':>8} {'fit s':>7} {'peak GB':>7}")
    results = []
    for name, config in configs:
        result = run_child(config, args)
        results.append(result)
        print(_row(name, config, result), flush=True)
    first = results[0]
    print(f"\nRESULT accuracy={first['accuracy']:.4f} seconds={first['seconds']:.1f} "
          f"peak_gb={first['peak_gb']:.2f}")


if __name__ == "__main__":
    main()
