"""skpatch on a Dask LocalCluster: a distributed patch-size search, and streaming CIFAR-10.

1. **Grid search.** ``Pipeline([PatchDictionaryEmbedding, LogisticRegression])``
   over 4 patch sizes x 3 folds on a stratified CIFAR-10 (JPEG copy) subset,
   once in this single-threaded process (``n_jobs=1``) and under
   ``joblib.parallel_config(backend="dask", scatter=[X, y])`` on 2
   single-threaded worker processes, three times: on
   ``skpatch.scaling.cpu_cluster(2)`` (workers without the nanny's
   ``MALLOC_TRIM_THRESHOLD_``), on a ``LocalCluster`` with distributed's
   default worker environment (``MALLOC_TRIM_THRESHOLD_=65536``), and on a
   ``LocalCluster`` with that variable unset through the dask config (the
   scaling guide's recipe; the same environment as ``cpu_cluster``, so a
   second measurement of it). As the ceiling, two plain spawned processes
   each run half the grid (patch sizes 3 and 6, 4 and 5) without Dask: the
   speedup the two cores give this workload at all. ``cpu_cluster``'s
   search and the ceiling, whose ratio is the key figure, run twice each,
   alternating (A B B A), and their mean wall times count. Reports each
   speedup (serial wall time / that wall time, same run), whether the
   ``cv_results_`` are identical (every key but the four timing keys), and
   per fit (the 12 fits' mean) where it ran: the wall time
   (``cv_results_``), and the CPU time and minor page faults of the
   processes that ran it (``getrusage``; scoring and task handling
   included).
2. **Streaming.** The archive is unpacked into an image folder (60,000 JPEGs);
   ``load_image_folder(as_dask=True)`` lists it, a dictionary is fitted from
   a patch sample of the stream, and every image is embedded on the cluster
   (``cpu_cluster(2)``) and written with ``dask.array.to_npy_stack`` (one
   .npy per chunk, by the workers). Then the same with the folder repeated
   four times (hard links: 240,000 files, each decoded). Each scale runs on
   a fresh cluster, so each worker's peak resident memory (``ru_maxrss``,
   read on the workers) is that scale's. The first chunk's features are
   compared with the in-memory transform of the same images.

The last line is ``RESULT speedup_2_workers=<x> identical=<True|False>
worker_peak_gb=<x> time_ratio_4x=<x> speedup_2_workers_no_malloc_trim=<x>
ceiling_2_processes=<x> speedup_vs_ceiling=<x>
speedup_2_workers_distributed_default=<x>`` (``speedup_2_workers``: on
``cpu_cluster``; peak: the largest over workers and scales; ratio: 4x wall
time / 1x wall time; ``speedup_vs_ceiling``: ``speedup_2_workers /
ceiling_2_processes``). Run ``python benchmarks/bench_dask.py`` (about 10
minutes on 2 cores) or ``--quick`` (small sizes, a smoke test of the
script).
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


SETUPS = {
    "cpu_cluster": "skpatch.scaling.cpu_cluster",
    "default": "LocalCluster, distributed's default worker environment",
    "no_malloc_trim": "LocalCluster, MALLOC_TRIM_THRESHOLD_ unset in the dask config",
}


def _cluster(setup="cpu_cluster"):
    """2 single-threaded worker processes, set up as ``SETUPS[setup]`` says."""
    import dask
    from distributed import Client, LocalCluster

    from skpatch.scaling import cpu_cluster

    options = dict(dashboard_address=None, worker_dashboard_address=None)
    if setup == "cpu_cluster":
        cluster = cpu_cluster(2, **options)
    else:
        # a nanny writes its pre-spawn variables into this process's environment, which
        # later children inherit: start each setup from a clean one
        os.environ.pop("MALLOC_TRIM_THRESHOLD_", None)
        trim = ({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}
                if setup == "no_malloc_trim" else {})
        with dask.config.set(trim):
            cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, **options)
    return cluster, Client(cluster)


def _usage():
    """CPU seconds and minor page faults of this process so far (all its threads)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return np.array([usage.ru_utime + usage.ru_stime, usage.ru_minflt])


def _cluster_search(pipe, grid, X, y, setup):
    import joblib
    from sklearn.model_selection import GridSearchCV, StratifiedKFold

    cluster, client = _cluster(setup)
    try:
        client.run(_quiet)
        client.run(_warm_up, X[:60], y[:60])
        before = client.run(_usage)
        start = time.perf_counter()
        with joblib.parallel_config(backend="dask", scatter=[X, y]):
            search = GridSearchCV(pipe, grid, cv=StratifiedKFold(3), refit=False,
                                  n_jobs=-1).fit(X, y)
        wall = time.perf_counter() - start
        after = client.run(_usage)
        return search, wall, sum(after[w] - before[w] for w in after)
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
    before = _usage()
    search = GridSearchCV(pipe, grid, cv=StratifiedKFold(3), refit=False, n_jobs=1).fit(X, y)
    return search, _usage() - before


def _plain_search(pipe, X, y):
    """Two plain spawned processes, each searching half the grid alone: the ceiling."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    halves = [{"embed__patch_size": [3, 6]}, {"embed__patch_size": [4, 5]}]
    os.environ.pop("MALLOC_TRIM_THRESHOLD_", None)
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        list(pool.map(_warm_up, [X[:60]] * 2, [y[:60]] * 2))
        start = time.perf_counter()
        done = list(pool.map(_half_search, [pipe] * 2, halves, [X] * 2, [y] * 2))
        wall = time.perf_counter() - start
    fit_s = float(np.mean([search.cv_results_["mean_fit_time"] for search, _ in done]))
    return wall, fit_s, sum(usage for _, usage in done)


def grid_search(args):
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
    n_fits = 4 * 3
    _quiet()
    _warm_up(X[:60], y[:60])  # imports and first-call setup out of the timing, both sides
    before = _usage()
    start = time.perf_counter()
    serial = search.set_params(n_jobs=1).fit(X, y)
    serial_s = time.perf_counter() - start
    runs = {"this process, n_jobs=1": [(serial_s, serial, _usage() - before)]}
    names = {"plain": "2 plain processes, half the grid each (no Dask; the ceiling)",
             **{setup: f"2 workers: {label}" for setup, label in SETUPS.items()}}
    # cpu_cluster and the ceiling, whose ratio is the key figure, alternate A B B A on
    # this shared machine: a load that drifts during the run weighs on both alike
    for setup in ("cpu_cluster", "plain", "plain", "cpu_cluster", "default", "no_malloc_trim"):
        if setup == "plain":
            run = _plain_search(pipe, X, y)
        else:
            found, wall, usage = _cluster_search(pipe, grid, X, y, setup)
            run = (wall, found, usage)
        runs.setdefault(names[setup], []).append(run)
    identical = all(_same_cv_results(serial.cv_results_, found.cv_results_)
                    for done in runs.values() for _, found, _ in done
                    if not isinstance(found, float))
    print(f"grid search: {len(X)} images, 4 patch sizes x 3 folds, {args.n_atoms} atoms "
          f"(load average {os.getloadavg()[0]:.1f} at the end)")
    print("  per fit (mean of the 12): wall time where it ran (cv_results_), and CPU time "
          "and minor page faults of the processes that ran it; two runs: their mean")
    speedups = {}
    for name, done in runs.items():
        wall = float(np.mean([run[0] for run in done]))
        fit_s = float(np.mean([found if isinstance(found, float)
                               else np.mean(found.cv_results_["mean_fit_time"])
                               for _, found, _ in done]))
        usage = np.mean([run[2] for run in done], axis=0)
        speedups[name] = serial_s / wall
        each = f" ({' / '.join(f'{run[0]:.1f}' for run in done)})" if len(done) > 1 else ""
        print(f"  {name:72s} {wall:6.1f} s  speedup {serial_s / wall:4.2f}x  |  fit {fit_s:.2f} s, "
              f"CPU {usage[0] / n_fits:.2f} s, {usage[1] / n_fits / 1e3:5.0f}k faults{each}")
    speedup, ceiling, default, no_trim = (speedups[names[setup]] for setup in
                                          ("cpu_cluster", "plain", "default", "no_malloc_trim"))
    print(f"  speedup on cpu_cluster / ceiling: {speedup / ceiling:.0%}; "
          f"on distributed's default workers / ceiling: {default / ceiling:.0%}")
    print(f"  cv_results_ identical:  {identical}")
    print("  mean_test_score:", np.round(serial.cv_results_["mean_test_score"], 4))
    return dict(speedup=speedup, ceiling=ceiling, default=default, no_trim=no_trim,
                identical=identical)


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

    cluster, client = _cluster("cpu_cluster")
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

    search = grid_search(args)
    work = Path(tempfile.mkdtemp(prefix="bench_dask_", dir=args.workdir))
    try:
        rows, ratio = streaming(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    peak = max(row["peak_gb"] for row in rows.values())
    identical = search["identical"] and all(row["identical"] for row in rows.values())
    print(f"client process peak {_peak_rss_gb():.2f} GB")
    print(f"\nRESULT speedup_2_workers={search['speedup']:.2f} identical={identical} "
          f"worker_peak_gb={peak:.2f} time_ratio_4x={ratio:.2f} "
          f"speedup_2_workers_no_malloc_trim={search['no_trim']:.2f} "
          f"ceiling_2_processes={search['ceiling']:.2f} "
          f"speedup_vs_ceiling={search['speedup'] / search['ceiling']:.2f} "
          f"speedup_2_workers_distributed_default={search['default']:.2f}")


if __name__ == "__main__":
    main()
