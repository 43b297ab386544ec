"""Scale out on Dask: local clusters whose workers are set up for fits.

Everything else needs nothing from skpatch: scikit-learn's searches run on
any ``distributed`` cluster under ``joblib.parallel_config(backend="dask")``,
and the transformers and classifiers map dask arrays block by block (see the
"Scaling out" user guide). What this module adds is the workers' setup:

- :func:`cpu_cluster`: a ``LocalCluster`` of single-threaded worker
  processes whose C allocator keeps glibc's defaults. ``distributed``'s
  nanny starts workers with ``MALLOC_TRIM_THRESHOLD_=65536``, which freezes
  glibc's mmap threshold at 128 KiB: every array above that is mapped afresh
  and page-faulted in on each use, which costs a numpy / torch fit 10-25%
  more CPU time on a worker than in a plain process.
- :func:`gpu_cluster`: one single-threaded worker per GPU, each seeing only
  its own GPU (its ``CUDA_VISIBLE_DEVICES``), so that ``device='auto'`` in any
  estimator fitted there picks that GPU as ``cuda`` (device 0 of the worker).
  dask-cuda's ``LocalCUDACluster`` is used when it is installed; otherwise
  the same layout is built from ``distributed``'s own ``SpecCluster`` and
  ``Nanny`` workers.

Dask is optional: ``pip install "skpatch[dask]"``.
"""

import os
from contextlib import contextmanager
from numbers import Integral

from .utils._dask import import_distributed

__all__ = ["cpu_cluster", "gpu_cluster", "gpu_worker_specs"]

# the variables a nanny sets before it spawns a worker (distributed.nanny.pre-spawn-environ)
_THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
_MALLOC_TRIM = "MALLOC_TRIM_THRESHOLD_"


def _check_count(name, value, minimum, *, none_ok=False):
    """``value`` as an int >= ``minimum`` (None passes where ``none_ok``), or a ValueError naming it."""
    if value is None and none_ok:
        return None
    if isinstance(value, bool) or not isinstance(value, Integral) or value < minimum:
        expected = f"an int >= {minimum}" + (" or None" if none_ok else "")
        raise ValueError(f"{name} must be {expected}, got {value!r}.")
    return int(value)


@contextmanager
def _worker_spawn_environ(variables):
    """Workers spawned inside see exactly ``variables`` (None: unset) of their set.

    A nanny takes its pre-spawn variables from the dask config, except where
    this process's environment already sets them, and writes them into this
    process's environment before spawning (the worker inherits it). Here the
    config says what the workers get, the variables are taken out of this
    process's environment while the workers start, and this process's
    environment is put back as it was afterwards.
    """
    import dask

    saved = {name: os.environ.pop(name, None) for name in variables}
    config = {f"distributed.nanny.pre-spawn-environ.{name}": value
              for name, value in variables.items()}
    try:
        with dask.config.set(config):
            yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def cpu_cluster(n_workers=None, *, threads_per_worker=1, malloc_trim_threshold=None,
                **cluster_kwargs):
    """A local cluster of worker processes set up for CPU fits.

    A ``distributed.LocalCluster`` of worker processes (each with its nanny)
    whose environment differs from ``distributed``'s default in one
    variable: glibc's ``MALLOC_TRIM_THRESHOLD_`` is not set (distributed
    sets it to 65536). Setting it at all disables glibc's dynamic mmap
    threshold, so every freed array above 128 KiB goes back to the system and
    the next one is mapped and page-faulted in afresh; a
    :class:`~skpatch.PatchDictionaryEmbedding` pipeline's fit then takes
    10-25% more CPU time on a worker than in a plain process. Without
    it, workers reuse freed memory as any Python process does (their resident
    size reads higher after a large task). BLAS, OpenMP and torch run one
    thread per task (``OMP_NUM_THREADS``, ``MKL_NUM_THREADS`` and
    ``OPENBLAS_NUM_THREADS`` are 1, as distributed sets them), whatever this
    process's environment says.

    Parameters
    ----------
    n_workers : int, default=None
        Worker processes; default one per ``threads_per_worker`` CPUs this
        process may use (``joblib.cpu_count()``), at least one.
    threads_per_worker : int, default=1
        Task threads of each worker; each task runs its BLAS and torch on
        one thread.
    malloc_trim_threshold : int or None, default=None
        ``MALLOC_TRIM_THRESHOLD_`` of the workers (bytes); None leaves it
        unset (glibc's dynamic thresholds). ``65536`` gives distributed's
        default.
    **cluster_kwargs
        Passed to ``distributed.LocalCluster`` (e.g.
        ``dashboard_address=None``, ``memory_limit``); ``processes`` must be
        left True.

    Returns
    -------
    cluster : distributed.LocalCluster
        Connect with ``distributed.Client(cluster)``; close it when done (it
        is a context manager).

    Notes
    -----
    The environment is the workers' when they start. A worker that its
    nanny restarts later (after a crash, or ``Client.restart``) inherits
    this process's environment of that moment, ``MALLOC_TRIM_THRESHOLD_``
    included if this process sets it. For a cluster started elsewhere, set
    ``distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_`` to null
    in the dask config of the machines that start the workers.

    Examples
    --------
    >>> import joblib
    >>> from distributed import Client
    >>> from skpatch.scaling import cpu_cluster
    >>> with cpu_cluster(2, dashboard_address=None) as cluster, Client(cluster):  # doctest: +SKIP
    ...     with joblib.parallel_config(backend="dask", scatter=[X, y]):
    ...         search.fit(X, y)
    """
    distributed = import_distributed()
    import joblib

    threads_per_worker = _check_count("threads_per_worker", threads_per_worker, 1)
    n_workers = _check_count("n_workers", n_workers, 1, none_ok=True)
    if n_workers is None:
        n_workers = max(1, joblib.cpu_count() // threads_per_worker)
    malloc_trim_threshold = _check_count("malloc_trim_threshold", malloc_trim_threshold, 0,
                                         none_ok=True)
    if not cluster_kwargs.pop("processes", True):
        raise ValueError(
            "cpu_cluster starts worker processes (their environment is what it sets); "
            "use distributed.LocalCluster(processes=False) for threads."
        )
    if cluster_kwargs.get("asynchronous"):
        raise ValueError(
            "cpu_cluster starts its workers before it returns; asynchronous=True would "
            "start them later, outside the environment it sets."
        )
    variables = {name: "1" for name in _THREAD_VARIABLES}
    variables[_MALLOC_TRIM] = None if malloc_trim_threshold is None else str(malloc_trim_threshold)
    with _worker_spawn_environ(variables):
        return distributed.LocalCluster(n_workers=n_workers, threads_per_worker=threads_per_worker,
                                        processes=True, **cluster_kwargs)


def _visible_gpus():
    """Indices of the GPUs this process may hand out, without initialising CUDA."""
    import os

    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() != "":
        return [gpu.strip() for gpu in visible.split(",") if gpu.strip() not in ("", "-1")]
    import torch

    # device_count asks NVML / the driver; it creates no CUDA context here
    return [str(i) for i in range(torch.cuda.device_count())]


def gpu_worker_specs(gpus, *, threads_per_worker=1, env=None, **worker_options):
    """Worker specifications of a ``SpecCluster``: one Nanny per GPU.

    Parameters
    ----------
    gpus : sequence of int or str
        GPU indices (or UUIDs) as ``CUDA_VISIBLE_DEVICES`` names them.
    threads_per_worker : int, default=1
        Task threads of each worker. One task per GPU is the safe default:
        two fits on one GPU share its memory.
    env : dict or None, default=None
        More environment variables for every worker.
    **worker_options
        Passed to each ``distributed.Nanny`` (e.g. ``memory_limit``).

    Returns
    -------
    specs : dict
        ``{"gpu-<id>": {"cls": Nanny, "options": {...}}}``.

    Examples
    --------
    >>> from skpatch.scaling import gpu_worker_specs
    >>> specs = gpu_worker_specs([0, 1])  # doctest: +SKIP
    >>> specs["gpu-1"]["options"]["env"]["CUDA_VISIBLE_DEVICES"]  # doctest: +SKIP
    '1'
    """
    distributed = import_distributed()
    threads_per_worker = _check_count("threads_per_worker", threads_per_worker, 1)
    gpus = [str(gpu) for gpu in gpus]
    if not gpus:
        raise ValueError("gpus is empty: expected at least one GPU index.")
    if len(set(gpus)) != len(gpus):
        raise ValueError(f"gpus must name each GPU once, got {gpus}.")
    specs = {}
    for gpu in gpus:
        worker_env = {
            # the worker sees one GPU, as 'cuda' / 'cuda:0'
            "CUDA_VISIBLE_DEVICES": gpu,
            # one CPU thread per task thread, as distributed sets for CPU workers
            "OMP_NUM_THREADS": str(threads_per_worker),
            "MKL_NUM_THREADS": str(threads_per_worker),
            "OPENBLAS_NUM_THREADS": str(threads_per_worker),
        }
        worker_env.update(env or {})
        options = dict(nthreads=threads_per_worker, env=worker_env, name=f"gpu-{gpu}",
                       resources={"GPU": 1}, host="127.0.0.1")
        options.update(worker_options)
        specs[f"gpu-{gpu}"] = {"cls": distributed.Nanny, "options": options}
    return specs


def gpu_cluster(gpus=None, *, threads_per_worker=1, use_dask_cuda="auto", **cluster_kwargs):
    """A local cluster with one worker process per GPU.

    Parameters
    ----------
    gpus : sequence of int or str, default=None
        GPUs to use; default every visible GPU (``CUDA_VISIBLE_DEVICES`` if
        set, else all that torch counts).
    threads_per_worker : int, default=1
        Task threads per worker.
    use_dask_cuda : {'auto', True, False}, default='auto'
        Use ``dask_cuda.LocalCUDACluster`` when it is installed ('auto'), or
        insist (True: an ImportError without it), or never (False).
    **cluster_kwargs
        Passed to the cluster (e.g. ``dashboard_address=None``).

    Returns
    -------
    cluster : distributed.deploy.Cluster
        Connect with ``distributed.Client(cluster)``; close it when done
        (it is a context manager).

    Raises
    ------
    RuntimeError
        When no GPU is visible.
    """
    distributed = import_distributed()
    if use_dask_cuda not in ("auto", True, False):
        raise ValueError(f"use_dask_cuda must be 'auto', True or False, got {use_dask_cuda!r}.")
    gpus = _visible_gpus() if gpus is None else [str(gpu) for gpu in gpus]
    if not gpus:
        raise RuntimeError(
            "gpu_cluster found no GPU (torch.cuda.device_count() is 0 and "
            "CUDA_VISIBLE_DEVICES names none); use distributed.LocalCluster on a CPU machine."
        )
    if use_dask_cuda:
        try:
            from dask_cuda import LocalCUDACluster
        except ImportError:
            if use_dask_cuda is True:
                raise ImportError(
                    "use_dask_cuda=True needs dask-cuda: pip install dask-cuda "
                    "(or pass use_dask_cuda='auto' to fall back to distributed's SpecCluster)."
                ) from None
        else:
            return LocalCUDACluster(
                CUDA_VISIBLE_DEVICES=",".join(gpus), threads_per_worker=threads_per_worker,
                **cluster_kwargs,
            )
    from distributed import Scheduler

    scheduler_options = {
        "dashboard_address": cluster_kwargs.pop("dashboard_address", ":0"),
        "host": cluster_kwargs.pop("host", "127.0.0.1"),
    }
    specs = gpu_worker_specs(gpus, threads_per_worker=threads_per_worker)
    return distributed.SpecCluster(
        workers=specs, scheduler={"cls": Scheduler, "options": scheduler_options}, **cluster_kwargs
    )
