"""skpatch on a Dask LocalCluster: a distributed patch-size search, and streaming CIFAR-10.

1. **Grid search.** ``Pipeline([PatchDictionaryEmbedding, LogisticRegression])``
   over 4 patch sizes x 3 folds on a stratified CIFAR-10 (JPEG copy) subset,
   once in this single-threaded process (``n_jobs=1``) and once under
   ``joblib.parallel_config(backend="dask", scatter=[X, y])`` on a
   ``LocalCluster`` of 2 single-threaded worker processes. Reports the
   speedup (serial wall time / cluster wall time, same run) and whether the
   ``cv_results_`` are identical (every key but the four timing keys).
   As a peer, two plain spawned processes each run half the grid (patch
   sizes 3 and 6, 4 and 5) without Dask: the speedup the two cores give
   this workload at all.
2. **Streaming.** The archive is unpacked into an image folder (60,000 JPEGs);
   ``load_image_folder(as_dask=True)`` lists it, a dictionary is fitted from
   a patch sample of the stream, and every image is embedded on the cluster
   and written with ``dask.array.to_npy_stack`` (one .npy per chunk, by the
   workers). Then the same with the folder repeated four times (hard links:
   240,000 files, each decoded). Each scale runs on a fresh cluster, so each
   worker's peak resident memory (``ru_maxrss``, read on the workers) is that
   scale's. The first chunk's features are compared with the in-memory
   transform of the same images.

The last line is ``RESULT speedup_2_workers=<x> identical=<True|False>
worker_peak_gb=<x> time_ratio_4x=<x> speedup_2_workers_no_malloc_trim=<x>``
(peak: the largest over workers and scales; ratio: 4x wall time / 1x wall
time; the last key: the search again on workers started without the
nanny's ``MALLOC_TRIM_THRESHOLD_=65536``, which makes each fit here about
25% slower). Run
``python benchmarks/bench_dask.py`` (about 10 minutes on 2 cores) or
``--quick`` (small sizes, a smoke test of the script).
"""

import os

# one thread per process everywhere, set before numpy / torch load their pools
for _name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_name] = "1"

import argparse  # noqa: E402
import resource  # noqa: E402
import shutil  # noqa: E402
import tarfile  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar-10-jpeg.tar.gz"
TIMING_KEYS = {"mean_fit_time", "std_fit_time", "mean_score_time", "std_score_time"}


def _peak_rss_gb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def _cluster(malloc_trim=True):
    """2 single-threaded worker processes; ``malloc_trim=False`` unsets the nanny's
    ``MALLOC_TRIM_THRESHOLD_`` (see the scaling guide's pitfalls)."""
    import dask
    from distributed import Client, LocalCluster

    # a nanny writes its pre-spawn variables into this process's environment, which
    # later children inherit: start each setup from a clean one
    os.environ.pop("MALLOC_TRIM_THRESHOLD_", None)
    trim = {} if malloc_trim else {"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}
    with dask.config.set(trim):
        cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                               dashboard_address=None, worker_dashboard_address=None)
    return cluster, Client(cluster)


def _cluster_search(pipe, grid, X, y, malloc_trim):
    import joblib
    from sklearn.model_selection import GridSearchCV, StratifiedKFold

    cluster, client = _cluster(malloc_trim)
    try:
        client.run(_quiet)
        client.run(_warm_up, X[:60], y[:60])
        start = time.perf_counter()
        with joblib.parallel_config(backend="dask", scatter=[X, y]):
            search = GridSearchCV(pipe, grid, cv=StratifiedKFold(3), refit=False,
                                  n_jobs=-1).fit(X, y)
        return search, time.perf_counter() - start
    finally:
        client.close()
        cluster.close()


def _same_cv_results(a, b):
    for key in a:
        if key in TIMING_KEYS:
            continue
        if key == "params":
            if a[key] != b[key]:
                return False
        elif not np.array_equal(np.asarray(a[key]), np.asarray(b[key])):
            return False
    return a.keys() == b.keys()


def _quiet():
    """LogisticRegression's ConvergenceWarning off (here and on each worker): a search's noise."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning

    warnings.filterwarnings("ignore", category=ConvergenceWarning)


def _warm_up(X, y):
    """One small fit of the benchmarked pipeline: loads torch, faiss and skpatch here."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    from skpatch import PatchDictionaryEmbedding

    make_pipeline(PatchDictionaryEmbedding(n_atoms=16, n_patches_fit=2000, random_state=0),
                  LogisticRegression(max_iter=20)).fit(X, y)


def _half_search(pipe, grid, X, y):
    from sklearn.model_selection import GridSearchCV, StratifiedKFold

    _quiet()
    return GridSearchCV(pipe, grid, cv=StratifiedKFold(3), refit=False, n_jobs=1).fit(X, y)


def grid_search(args):
    import joblib
    import torch
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV, StratifiedKFold, train_test_split
    from sklearn.pipeline import Pipeline

    from skpatch import PatchDictionaryEmbedding
    from skpatch.datasets import load_cifar10

    torch.set_num_threads(1)
    images, labels = load_cifar10(args.data, subset="test", return_X_y=True)
    X, _, y, _ = train_test_split(images, labels, train_size=args.n_search,
                                  stratify=labels, random_state=0)
    pipe = Pipeline([
        ("embed", PatchDictionaryEmbedding(n_atoms=args.n_atoms, n_neighbors=0.25, stride=2,
                                           pooling=2, n_patches_fit=50000, random_state=0)),
        ("clf", LogisticRegression(max_iter=300)),
    ])
    grid = {"embed__patch_size": [3, 4, 5, 6]}
    search = GridSearchCV(pipe, grid, cv=StratifiedKFold(3), refit=False)
    _quiet()
    _warm_up(X[:60], y[:60])  # imports and first-call setup out of the timing, both sides
    start = time.perf_counter()
    serial = search.set_params(n_jobs=1).fit(X, y)
    serial_s = time.perf_counter() - start
    distributed, cluster_s = _cluster_search(pipe, grid, X, y, malloc_trim=True)
    no_trim, no_trim_s = _cluster_search(pipe, grid, X, y, malloc_trim=False)
    # the hardware's own ceiling: two plain processes, each searching half the grid alone
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    halves = [{"embed__patch_size": [3, 6]}, {"embed__patch_size": [4, 5]}]
    os.environ.pop("MALLOC_TRIM_THRESHOLD_", None)
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        list(pool.map(_warm_up, [X[:60]] * 2, [y[:60]] * 2))
        start = time.perf_counter()
        list(pool.map(_half_search, [pipe] * 2, halves, [X] * 2, [y] * 2))
        plain_s = time.perf_counter() - start
    identical = (_same_cv_results(serial.cv_results_, distributed.cv_results_)
                 and _same_cv_results(serial.cv_results_, no_trim.cv_results_))
    print(f"grid search: {len(X)} images, 4 patch sizes x 3 folds, {args.n_atoms} atoms")
    print(f"  1 process, n_jobs=1     {serial_s:7.1f} s")
    print(f"  2 worker processes      {cluster_s:7.1f} s   speedup {serial_s / cluster_s:.2f}x"
          "   (distributed's default worker environment)")
    print(f"  2 worker processes      {no_trim_s:7.1f} s   speedup {serial_s / no_trim_s:.2f}x"
          "   (MALLOC_TRIM_THRESHOLD_ unset)")
    print(f"  2 plain processes, half the grid each (no Dask; the ceiling): {plain_s:.1f} s, "
          f"speedup {serial_s / plain_s:.2f}x")
    print(f"  cv_results_ identical:  {identical}")
    print("  mean_test_score:", np.round(serial.cv_results_["mean_test_score"], 4))
    # what each fit took where it ran (cv_results_' own timings, mean over the 12 fits)
    fit_s = {name: float(np.mean(search.cv_results_["mean_fit_time"]))
             for name, search in (("this process", serial), ("default workers", distributed),
                                  ("workers, MALLOC_TRIM_THRESHOLD_ unset", no_trim))}
    print("  mean fit time: " + ", ".join(f"{name} {t:.2f} s" for name, t in fit_s.items())
          + f"  (default / this process: {fit_s['default workers'] / fit_s['this process']:.2f})")
    return serial_s / cluster_s, serial_s / no_trim_s, identical


def _unpack(archive, root, limit=None):
    """``root/{train,test}/<class>/<file>.jpg`` from the archive (or its first ``limit``)."""
    n = 0
    with tarfile.open(archive, mode="r|*") as tar:
        for member in tar:
            if not member.isfile():
                continue
            parts = Path(member.name).parts[-3:]
            target = root.joinpath(*parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(tar.extractfile(member).read())
            n += 1
            if limit is not None and n >= limit:
                break
    return n


def _repeat(root, repeated, times):
    """``repeated/copy<i>/...``: hard links to every file of ``root``, ``times`` times."""
    for i in range(times):
        for path in root.rglob("*.jpg"):
            target = repeated / f"copy{i}" / path.relative_to(root)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.link(path, target)


def _stream(folder, args, out_dir):
    """Fit from a stream sample, embed every image to .npy files; time and worker peaks."""
    import dask.array as da

    from skpatch import PatchDictionaryEmbedding
    from skpatch.datasets import load_image_folder

    cluster, client = _cluster()
    try:
        start = time.perf_counter()
        data = load_image_folder(folder, as_dask=True, chunk_size=args.chunk_size)
        listed_s = time.perf_counter() - start
        embed = PatchDictionaryEmbedding(n_atoms=args.n_atoms, n_neighbors=0.25, patch_size=6,
                                         stride=2, pooling=2, n_patches_fit=100000,
                                         random_state=0)
        start = time.perf_counter()
        embed.fit(data.images)
        fit_s = time.perf_counter() - start
        start = time.perf_counter()
        da.to_npy_stack(out_dir, embed.transform(data.images), axis=0)
        transform_s = time.perf_counter() - start
        peaks = client.run(_peak_rss_gb)
        first = np.load(Path(out_dir) / "0.npy")
        chunk = data.images[: args.chunk_size].compute()
    finally:
        client.close()
        cluster.close()
    identical = np.array_equal(first, embed.transform(chunk))
    return dict(n=data.images.shape[0], listed_s=listed_s, fit_s=fit_s,
                transform_s=transform_s, peak_gb=max(peaks.values()), identical=identical)


def streaming(args, work):
    root = work / "cifar10"
    n_files = _unpack(args.data, root, limit=args.n_stream)
    _repeat(root, work / "cifar10x4", 4)
    rows = {}
    for name, folder in (("1x", root), ("4x", work / "cifar10x4")):
        out = work / f"features_{name}"
        rows[name] = _stream(folder, args, out)
        shutil.rmtree(out)
        r = rows[name]
        total = r["listed_s"] + r["fit_s"] + r["transform_s"]
        print(f"streaming {name}: {r['n']} images; list {r['listed_s']:.1f} s, fit from the "
              f"stream {r['fit_s']:.1f} s, embed + write {r['transform_s']:.1f} s "
              f"({r['n'] / r['transform_s']:.0f} images/s); all {total:.1f} s; "
              f"worker peak {r['peak_gb']:.2f} GB; first chunk identical: {r['identical']}")
    assert rows["1x"]["n"] == n_files and rows["4x"]["n"] == 4 * n_files
    ratio = rows["4x"]["transform_s"] / rows["1x"]["transform_s"]
    print(f"4x the images in {ratio:.2f}x the embedding time")
    return rows, ratio


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke test")
    parser.add_argument("--data", default=str(DATA))
    parser.add_argument("--workdir", default=None,
                        help="where the image folders are unpacked (default: a temp dir)")
    args = parser.parse_args()
    args.n_search = 300 if args.quick else 3000
    args.n_atoms = 64 if args.quick else 256
    args.n_stream = 3000 if args.quick else None
    args.chunk_size = 500 if args.quick else 2000

    speedup, speedup_no_trim, identical = grid_search(args)
    work = Path(tempfile.mkdtemp(prefix="bench_dask_", dir=args.workdir))
    try:
        rows, ratio = streaming(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    peak = max(row["peak_gb"] for row in rows.values())
    identical = identical and all(row["identical"] for row in rows.values())
    print(f"client process peak {_peak_rss_gb():.2f} GB")
    print(f"\nRESULT speedup_2_workers={speedup:.2f} identical={identical} "
          f"worker_peak_gb={peak:.2f} time_ratio_4x={ratio:.2f} "
          f"speedup_2_workers_no_malloc_trim={speedup_no_trim:.2f}")


if __name__ == "__main__":
    main()
