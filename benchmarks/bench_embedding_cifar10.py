"""CIFAR-10 (JPEG copy) accuracy of PatchDictionaryEmbedding + a linear head.

``Pipeline([PatchDictionaryEmbedding(...), StandardScaler(), <head>])``
fitted on the 50,000 training images of the JPEG copy of CIFAR-10
(``../shared/data/cifar-10-jpeg.tar.gz``) and scored on its 10,000 test
images, with ``<head>`` a plain scikit-learn linear classifier
(LogisticRegression, RidgeClassifier, LinearSVC or SGDClassifier), float32
features end to end (LinearSVC's liblinear makes its own float64 copy). Every stage is timed (loading, fitting the embedding,
encoding, the classifier, prediction); each configuration runs in its own
subprocess so that its peak resident memory is its own.

Usage::

    python benchmarks/bench_embedding_cifar10.py              # best configuration
    python benchmarks/bench_embedding_cifar10.py --quick      # ~1 minute smoke run
    python benchmarks/bench_embedding_cifar10.py --set '{"reg": 300, "embedding": {"pooling": 3}}'
    python benchmarks/bench_embedding_cifar10.py --search '[{}, {"embedding": {"alpha": 0.5}}]' \\
        --heads '[["ridge", 100], ["logistic", 0.002]]' --n-train 10000 --n-test 2000

Smaller runs (``--n-train``, ``--n-test``, ``--quick``) take a stratified,
seeded subset of each set: the same number of images of every class (the
files are sorted by class, so the first images of a set are not a proxy).
``--search`` runs each JSON override of the best configuration (a list) and
scores each fitted embedding with every head of ``--heads`` (pairs of a head
name and its regularization: ``C`` for logistic / linearsvc, ``alpha`` for
ridge / sgd), one table row per pair.

The stages are timed apart: the scaler is fitted in row blocks (the same
statistics, without the float64 temporaries of ``StandardScaler.fit`` on the
whole matrix). ``--set '{"pipeline": true}'`` runs the configuration as one
``make_pipeline(embedding, StandardScaler(copy=False), head)`` instead, as a
user writes it; its ``emb s`` column is then the whole ``fit``, ``emb GB`` the
peak after it.

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
    embedding=dict(patch_size=6, n_atoms=5600, encoding="soft_threshold", alpha=0.25,
                   both_signs=True, pooling=2, dictionary="data", flip_invariant=True,
                   power=0.5, patch_normalize=True, whiten_reg=0.3,
                   n_patches_fit=262144),
    # the head and its regularization: C for logistic / linearsvc, alpha for ridge / sgd
    head="ridge", reg=200,
)

HEADS = ("logistic", "ridge", "linearsvc", "sgd")


def stratified_subset(y, n, seed):
    """Indices of ``n`` images, ``n // n_classes`` of each class, seeded, sorted."""
    import numpy as np

    classes = np.unique(y)
    per_class, extra = divmod(n, len(classes))
    rng = np.random.default_rng(seed)
    keep = []
    for i, c in enumerate(classes):
        members = np.flatnonzero(y == c)
        take = per_class + (i < extra)
        if take > len(members):
            raise ValueError(f"n={n}: class {c} has only {len(members)} images")
        keep.append(rng.choice(members, take, replace=False))
    return np.sort(np.concatenate(keep))


def make_head(name, reg, max_iter=300):
    """A scikit-learn linear classifier; ``reg`` is C or alpha (see the docstring)."""
    from sklearn.linear_model import LogisticRegression, RidgeClassifier, SGDClassifier
    from sklearn.svm import LinearSVC

    if name == "logistic":
        return LogisticRegression(C=reg, max_iter=max_iter)
    if name == "ridge":  # X is centred by the scaler already: centre it in place, no copy
        return RidgeClassifier(alpha=reg, copy_X=False)
    if name == "linearsvc":
        return LinearSVC(C=reg, max_iter=max_iter, dual=True)
    if name == "sgd":
        return SGDClassifier(loss="hinge", alpha=reg, average=True, max_iter=max_iter,
                             tol=1e-4, random_state=0, n_jobs=-1)
    raise ValueError(f"head={name!r}: expected one of {HEADS}")


def _blocks(n, size=2048):
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def _peak_gb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def run_one(config, heads, n_train, n_test, threads, data):
    """Fit the embedding once, score each head; return a list of result dicts."""
    import numpy as np
    import torch
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    from skpatch import PatchDictionaryEmbedding
    from skpatch.datasets import load_cifar10

    torch.set_num_threads(threads)
    threadpool_limits(threads)
    start = time.perf_counter()
    X_train, y_train = load_cifar10(data, subset="train", return_X_y=True)
    X_test, y_test = load_cifar10(data, subset="test", return_X_y=True)
    if n_train < len(X_train):
        keep = stratified_subset(y_train, n_train, seed=0)
        X_train, y_train = X_train[keep], y_train[keep]
    if n_test < len(X_test):
        keep = stratified_subset(y_test, n_test, seed=1)
        X_test, y_test = X_test[keep], y_test[keep]
    loaded = time.perf_counter()
    if config.get("pipeline"):
        return [_run_pipeline(config, heads, X_train, y_train, X_test, y_test, start, loaded)]
    # as Pipeline.fit then .predict: the training features, the heads fitted, then the
    # test features (never both feature matrices and a head's working copies at once)
    embed = PatchDictionaryEmbedding(random_state=0, **config["embedding"])
    F = embed.fit_transform(X_train)
    del X_train
    # StandardScaler, fitted and applied in row blocks: its float64 statistics of the
    # whole matrix at once would hold two float64 copies of it (the same result)
    scaler = StandardScaler(copy=False)
    for rows in _blocks(len(F)):
        scaler.partial_fit(F[rows])
    for rows in _blocks(len(F)):
        F[rows] = scaler.transform(F[rows])
    embedded = time.perf_counter()
    embed_peak = _peak_gb()
    fitted = []
    for name, reg in heads:
        t0 = time.perf_counter()
        fitted.append(make_head(name, reg, config.get("max_iter", 300)).fit(F, y_train))
        # the process's peak so far: the embedding and the heads fitted up to this one
        fitted[-1].fit_s_, fitted[-1].peak_gb_ = time.perf_counter() - t0, _peak_gb()
    del F
    t0 = time.perf_counter()
    F = embed.transform(X_test)
    for rows in _blocks(len(F)):
        F[rows] = scaler.transform(F[rows])
    encoded_test = time.perf_counter() - t0
    results = []
    for (name, reg), head in zip(heads, fitted):
        t0 = time.perf_counter()
        accuracy = float(np.mean(head.predict(F) == y_test))
        predict_s = encoded_test + time.perf_counter() - t0
        results.append(dict(
            head=name, reg=reg, accuracy=accuracy,
            # the whole pipeline of this head: loading, embedding, this head, prediction
            seconds=(embedded - start) + head.fit_s_ + predict_s, load_s=loaded - start,
            embed_s=embedded - loaded, head_s=head.fit_s_, predict_s=predict_s,
            n_features=int(embed.n_features_out_), dtype=str(F.dtype),
            peak_gb=max(head.peak_gb_, _peak_gb()) if len(heads) == 1 else head.peak_gb_,
            embed_peak_gb=embed_peak,
        ))
    return results


def _run_pipeline(config, heads, X_train, y_train, X_test, y_test, start, loaded):
    """The configuration as one scikit-learn Pipeline, as a user writes it (one head)."""
    import numpy as np
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from skpatch import PatchDictionaryEmbedding

    if len(heads) != 1:
        raise ValueError(f'"pipeline": true runs one head, got {len(heads)}')
    (name, reg), = heads
    model = make_pipeline(PatchDictionaryEmbedding(random_state=0, **config["embedding"]),
                          StandardScaler(copy=False),
                          make_head(name, reg, config.get("max_iter", 300)))
    model.fit(X_train, y_train)
    fitted = time.perf_counter()
    fit_peak = _peak_gb()
    accuracy = float(np.mean(model.predict(X_test) == y_test))
    done = time.perf_counter()
    return dict(head=name, reg=reg, accuracy=accuracy, seconds=done - start,
                load_s=loaded - start, embed_s=fitted - loaded, head_s=float("nan"),
                predict_s=done - fitted, n_features=int(model[0].n_features_out_),
                dtype="float32", peak_gb=_peak_gb(), embed_peak_gb=fit_peak)


def run_child(config, heads, args):
    """Run one configuration in a fresh interpreter; return its result dicts."""
    cmd = [sys.executable, __file__, "--child", json.dumps(config),
           "--heads", json.dumps(heads),
           "--n-train", str(args.n_train), "--n-test", str(args.n_test),
           "--threads", str(args.threads), "--data", args.data]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"configuration {config} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    out = proc.stdout
    return json.loads(out.strip().splitlines()[-1])


def _merge(base, overrides):
    config = json.loads(json.dumps(base))
    overrides = dict(overrides)
    config["embedding"].update(overrides.pop("embedding", {}))
    config.update(overrides)
    return config


HEADER = (f"{'encoding':<14} {'dict':<6} {'atoms':>5} {'k':>4} {'alpha':>5} "
          f"{'both':>5} {'pool':>6} {'flip':>5} {'power':>5} {'pnorm':>5} "
          f"{'wreg':>6} {'head':>9} {'reg':>7} {'dim':>6} {'accuracy':>8} "
          f"{'total s':>7} {'emb s':>6} {'head s':>6} {'emb GB':>6} {'peak GB':>7}")


def _row(config, r):
    emb = config["embedding"]
    soft = emb.get("encoding", "hard") == "soft_threshold"
    pool = emb.get("pooling", 2)
    pool = "x".join(map(str, pool)) if isinstance(pool, (list, tuple)) else str(pool)
    return (f"{emb.get('encoding', 'hard'):<14} {emb.get('dictionary', 'kmeans'):<6} "
            f"{emb['n_atoms']:>5} {'-' if soft else emb.get('n_neighbors', 0.25):>4} "
            f"{emb.get('alpha', 0.25) if soft else '-':>5} "
            f"{str(emb.get('both_signs', False)):>5} {pool:>6} "
            f"{str(emb.get('flip_invariant', False)):>5} {emb.get('power', 1.0):>5} "
            f"{str(emb.get('patch_normalize', False)):>5} {emb.get('whiten_reg', 1e-3):>6} "
            f"{r['head']:>9} {r['reg']:>7} {r['n_features']:>6} {r['accuracy']:>8.2%} "
            f"{r['seconds']:>7.0f} {r['embed_s']:>6.0f} {r['head_s']:>6.0f} {r['embed_peak_gb']:>6.2f} {r['peak_gb']:>7.2f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="2,000 train / 1,000 test images (stratified), 256 atoms")
    parser.add_argument("--n-train", type=int, default=50000)
    parser.add_argument("--n-test", type=int, default=10000)
    parser.add_argument("--threads", type=int, default=2,
                        help="torch/BLAS threads (default 2: the whole 2-core machine)")
    parser.add_argument("--set", default="{}",
                        help='JSON overrides of the best configuration, e.g. '
                             '\'{"reg": 300, "embedding": {"pooling": 3}}\'')
    parser.add_argument("--search", default=None,
                        help="a JSON list of overrides (as --set), one table block each")
    parser.add_argument("--heads", default=None,
                        help='JSON list of [head, reg] pairs scored on each embedding, e.g. '
                             '\'[["logistic", 0.002], ["ridge", 1000]]\' (default: the '
                             "configuration's own head and reg)")
    parser.add_argument("--data", default=DATA)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()

    def parse(option, text):
        try:
            return json.loads(text)
        except json.JSONDecodeError as error:
            parser.error(f"{option}: expected JSON, got {text!r} ({error})")

    if args.child:
        results = run_one(json.loads(args.child), json.loads(args.heads),
                          args.n_train, args.n_test, args.threads, args.data)
        print(json.dumps(results))
        return

    best = _merge(BEST, parse("--set", args.set))
    if args.quick:
        args.n_train, args.n_test = min(args.n_train, 2000), min(args.n_test, 1000)
        best["embedding"].update(n_atoms=256, n_patches_fit=65536)
    configs = [best]
    if args.search:
        configs = [_merge(best, o) for o in parse("--search", args.search)]

    print(f"CIFAR-10 (JPEG copy): {args.n_train} train / {args.n_test} test images "
          f"(stratified when fewer than all), {args.threads} thread(s), "
          f"{os.cpu_count()} CPUs\n")
    print(HEADER, flush=True)
    first = None
    for config in configs:
        heads = parse("--heads", args.heads) if args.heads else [[config["head"], config["reg"]]]
        for name, _ in heads:
            if name not in HEADS:
                parser.error(f"--heads: unknown head {name!r}; expected one of {HEADS}")
        results = run_child(config, heads, args)
        first = first or results[0]
        for r in results:
            print(_row(config, r), flush=True)
    print(f"\nRESULT accuracy={first['accuracy']:.4f} seconds={first['seconds']:.1f} "
          f"peak_gb={first['peak_gb']:.2f}")


if __name__ == "__main__":
    main()
