"""The one thread rule of every estimator that runs threads of its own.

An estimator that splits its work over threads takes ``n_jobs`` and asks
:func:`effective_n_threads` how many to use:

- ``n_jobs=None``: inside ``joblib.parallel_config(n_jobs=...)`` that setting;
  otherwise the process's thread limit, the smallest of the CPUs this process
  may use (``joblib.cpu_count()``), ``OMP_NUM_THREADS`` when set (a Dask
  worker sets it, as joblib's ``inner_max_num_threads`` does for its workers)
  and the threadpoolctl limits of the loaded BLAS / OpenMP libraries.
- an int: joblib's meaning (``-1`` all CPUs, ``-2`` all but one, ...).
- never more threads than there are tasks.

No function here changes a process-wide setting.
"""

import os
from concurrent.futures import ThreadPoolExecutor

__all__ = ["effective_n_threads", "thread_map"]


def _process_thread_limit():
    import joblib
    from threadpoolctl import threadpool_info

    limits = [joblib.cpu_count()]
    env = os.environ.get("OMP_NUM_THREADS", "")
    if env.strip().isdigit() and int(env) > 0:
        limits.append(int(env))
    limits += [
        info["num_threads"]
        for info in threadpool_info()
        if info.get("num_threads", 0) > 0 and info.get("user_api") in ("blas", "openmp")
    ]
    return max(1, min(limits))


def effective_n_threads(n_jobs=None, n_tasks=None):
    """Number of threads to run ``n_tasks`` independent tasks on.

    Parameters
    ----------
    n_jobs : int or None, default=None
        As in scikit-learn; see the module docstring for ``None``.
    n_tasks : int or None, default=None
        Upper bound (no idle threads); ``None`` for no bound.

    Returns
    -------
    n_threads : int
        At least 1.

    Examples
    --------
    >>> from skpatch.utils._parallel import effective_n_threads
    >>> effective_n_threads(4, n_tasks=3)
    3
    >>> effective_n_threads(1)
    1
    """
    from joblib import effective_n_jobs
    from joblib.parallel import get_active_backend

    if n_jobs is None:
        _, configured = get_active_backend()
        if configured is None:
            n_threads = _process_thread_limit()
        else:
            n_threads = effective_n_jobs(configured)
    else:
        n_threads = effective_n_jobs(n_jobs)
    if n_tasks is not None:
        n_threads = min(n_threads, int(n_tasks))
    return max(1, int(n_threads))


def thread_map(func, items, n_threads):
    """``[func(item) for item in items]``, on ``n_threads`` threads when > 1."""
    items = list(items)
    if n_threads <= 1 or len(items) <= 1:
        return [func(item) for item in items]
    with ThreadPoolExecutor(n_threads, thread_name_prefix="skpatch") as pool:
        return list(pool.map(func, items))
