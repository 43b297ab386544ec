"""Scale out on Dask: a cluster with one worker process per GPU.

Everything else needs nothing from skpatch: scikit-learn's searches run on
any ``distributed`` cluster under ``joblib.parallel_config(backend="dask")``,
and the transformers and classifiers map dask arrays block by block (see the
"Scaling out" user guide). What this module adds is the GPU layout: one
single-threaded worker per GPU, each seeing only its own GPU (its
``CUDA_VISIBLE_DEVICES``), so that ``device='auto'`` in any estimator fitted
there picks that GPU as ``cuda`` (device 0 of the worker). dask-cuda's
``LocalCUDACluster`` is used when it is installed; otherwise the same layout
is built from ``distributed``'s own ``SpecCluster`` and ``Nanny`` workers.

Dask is optional: ``pip install "skpatch[dask]"``.
"""

from .utils._dask import import_distributed

__all__ = ["gpu_cluster", "gpu_worker_specs"]


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
    if isinstance(threads_per_worker, bool) or not isinstance(threads_per_worker, int) or threads_per_worker < 1:
        raise ValueError(f"threads_per_worker must be an int >= 1, got {threads_per_worker!r}.")
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
