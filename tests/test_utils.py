"""The device rule (utils/_device.py) and the thread rule (utils/_parallel.py)."""

import threading
import warnings

import joblib
import pytest
from threadpoolctl import threadpool_limits

from skpatch.utils import _device
from skpatch.utils._device import check_device_param, resolve_device, runtime_device
from skpatch.utils._parallel import effective_n_threads, thread_map

torch = pytest.importorskip("torch")


@pytest.mark.parametrize("bad", ["gpu", "cuda:", "cuda:x", "CPU", 0, None])
def test_device_param_must_be_a_known_string(bad):
    with pytest.raises(ValueError, match="device must be 'auto', 'cpu', 'cuda' or 'cuda:N'"):
        check_device_param(bad)


def test_auto_follows_cuda_availability():
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == "cpu"


@pytest.mark.parametrize("n_gpus", [0, 2])
def test_explicit_absent_device_is_an_error(monkeypatch, n_gpus):
    monkeypatch.setattr(_device, "_cuda_count", lambda: n_gpus)
    with pytest.raises(ValueError, match=r"device='cuda:2' but .*use device='auto'"):
        resolve_device("cuda:2")
    if n_gpus:
        assert resolve_device("cuda:1") == "cuda:1"
        assert resolve_device("auto") == "cuda"
    else:
        with pytest.raises(ValueError, match="no CUDA GPU is available"):
            resolve_device("cuda")


def test_a_model_fitted_on_an_absent_gpu_runs_on_the_cpu_with_a_warning(monkeypatch):
    monkeypatch.setattr(_device, "_cuda_count", lambda: 1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert runtime_device("cuda:0", "Owner") == "cuda:0"
        assert runtime_device("cpu", "Owner") == "cpu"
    with pytest.warns(UserWarning, match="Owner was fitted on device 'cuda:1'.*on the CPU"):
        assert runtime_device("cuda:1", "Owner") == "cpu"


def test_thread_count_follows_n_jobs_like_joblib():
    assert effective_n_threads(1) == 1
    assert effective_n_threads(-1) == joblib.cpu_count()
    assert effective_n_threads(-1, n_tasks=1) == 1
    assert effective_n_threads(5, n_tasks=3) == 3
    with joblib.parallel_config(n_jobs=3):
        assert effective_n_threads() == 3
        assert effective_n_threads(1) == 1  # an explicit n_jobs wins
    with joblib.parallel_config(n_jobs=1):
        assert effective_n_threads() == 1


def test_default_thread_count_honours_process_limits(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    with threadpool_limits(limits=1):  # what a worker's threadpoolctl limit looks like
        assert effective_n_threads() == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # what a Dask worker sets
    assert effective_n_threads() == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "64")
    assert effective_n_threads() <= joblib.cpu_count()


def test_thread_map_keeps_order_and_uses_threads():
    idents = set()
    barrier = threading.Barrier(2, timeout=10)

    def work(i):
        idents.add(threading.get_ident())
        if i < 2:
            barrier.wait()  # both threads must be running at once to pass
        return i * i

    assert thread_map(work, range(6), 2) == [i * i for i in range(6)]
    assert len(idents) == 2
    idents.clear()
    assert thread_map(lambda i: idents.add(threading.get_ident()) or i + 1, range(4), 1) == [
        1, 2, 3, 4
    ]
    assert idents == {threading.get_ident()}  # one thread: runs in the caller's
