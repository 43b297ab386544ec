"""Limit torch's intra-op threads in the calling thread only.

``torch.set_num_threads`` is no use inside a worker thread: besides the
calling thread's OpenMP setting it stores the count that every thread started
later begins with, a process-wide change. What decides torch's threads in a
thread is that thread's own state: its OpenMP ``nthreads`` (set by
``omp_set_num_threads``, through threadpoolctl, for every OpenMP runtime
loaded) and, where torch uses MKL, MKL's thread-local count
(``mkl_set_num_threads_local``, which torch itself sets when a thread first
runs torch code). :func:`limit_this_thread` sets both, after torch's own
first-use setup of the thread, which would otherwise overwrite them.
"""

import ctypes
import functools
import os
import sys

__all__ = ["limit_this_thread"]


@functools.cache
def _mkl_set_num_threads_local():
    """MKL's C ``MKL_Set_Num_Threads_Local`` used by torch, or None."""
    import torch

    if not torch.backends.mkl.is_available():
        return None
    lib_dir = os.path.join(os.path.dirname(torch.__file__), "lib")
    # torch's wheels link MKL statically into torch_cpu; other builds load mkl_rt
    candidates = [os.path.join(lib_dir, name) for name in
                  ("libtorch_cpu.so", "libtorch_cpu.dylib", "torch_cpu.dll")]
    candidates += ["libmkl_rt.so", "libmkl_rt.so.2", "mkl_rt.dll", "mkl_rt.2.dll"]
    for candidate in candidates:
        try:
            lib = ctypes.CDLL(candidate)
            setter = lib.MKL_Set_Num_Threads_Local
        except (OSError, AttributeError):
            continue
        setter.argtypes = [ctypes.c_int]
        setter.restype = ctypes.c_int
        return setter
    return None


@functools.cache
def _openmp_controller(faiss_loaded):
    """threadpoolctl's view of the loaded OpenMP runtimes (scanning them takes ~10 ms).

    Keyed on whether faiss, which brings its own OpenMP runtime, is loaded yet.
    """
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController().select(user_api="openmp")


def limit_this_thread(n_threads):
    """Run torch and OpenMP code of the calling thread on ``n_threads`` threads.

    Nothing outside the calling thread changes: other threads, and threads
    started later, keep their own counts. Meant for worker threads that the
    caller owns and discards.

    Parameters
    ----------
    n_threads : int
    """
    import torch

    torch.get_num_threads()  # torch's first-use setup of this thread, done now
    # omp_set_num_threads in each OpenMP runtime: the calling thread's setting only
    _openmp_controller("faiss" in sys.modules).limit(limits=int(n_threads))
    setter = _mkl_set_num_threads_local()
    if setter is not None:
        setter(int(n_threads))
