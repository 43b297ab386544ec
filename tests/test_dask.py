"""skpatch on Dask: grid searches on a real LocalCluster, lazy transforms, streaming folders.

Every cluster test runs on one ``distributed.LocalCluster`` of two
single-threaded worker *processes*, started by the module fixture and shut
down after the module, so each fit, transform and decode here was pickled to
another process and back. The reference is always the same computation in
this process without Dask (``n_jobs=1``, in-memory arrays): results must be
equal bit for bit, not close.
"""

import pickle
import sys
import tarfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

da = pytest.importorskip("dask.array", reason="needs the skpatch[dask] extra")
distributed = pytest.importorskip("distributed", reason="needs the skpatch[dask] extra")

import dask  # noqa: E402
import joblib  # noqa: E402
from sklearn.base import clone  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.model_selection import GridSearchCV, StratifiedKFold  # noqa: E402
from sklearn.pipeline import Pipeline  # noqa: E402

from _helpers import TINY_BAGNET, TINY_EMBEDDING, TINY_PATCH_CNN, reference_images  # noqa: E402
from skpatch import (  # noqa: E402
    BagNetClassifier,
    PatchBoundPredictor,
    PatchCNNClassifier,
    PatchDictionaryEmbedding,
    PatchExtractor,
    PatchOrderer,
)
from skpatch.datasets import load_image_folder, load_patch_size_results  # noqa: E402

TESTS_DIR = str(Path(__file__).resolve().parent)
CIFAR_ARCHIVE = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar-10-jpeg.tar.gz"
# cv_results_ keys that measure the machine, not the search
TIMING_KEYS = {"mean_fit_time", "std_fit_time", "mean_score_time", "std_score_time"}


def _add_to_path(path):
    if path not in sys.path:
        sys.path.insert(0, path)


@pytest.fixture(scope="module")
def client():
    """Two single-threaded worker processes, as in the issue; shut down after the module."""
    cluster = distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
        worker_dashboard_address=None, timeout=120,
    )
    client = distributed.Client(cluster, timeout=120)
    # the tiny test networks live in tests/_helpers.py: the workers must import it too
    client.run(_add_to_path, TESTS_DIR)
    try:
        yield client
    finally:
        client.close()
        cluster.close()


@contextmanager
def _like_a_worker():
    """Torch on one thread here too, as on the workers (OMP_NUM_THREADS=1 there).

    float32 sums run in another order on another number of threads; the
    reference must run on the workers' one thread to be comparable bit for bit.
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _images(n=24, size=12):
    X, y = reference_images(n, size, size)
    return np.array(X), np.array(y)


def _assert_same_cv_results(serial, distributed_run):
    assert serial.keys() == distributed_run.keys()
    for key in serial:
        if key in TIMING_KEYS:
            continue
        a, b = serial[key], distributed_run[key]
        if key == "params":
            assert a == b
        elif isinstance(a, np.ma.MaskedArray):
            assert list(a) == list(b), key
        else:
            np.testing.assert_array_equal(a, b, err_msg=key)


def _searches():
    """(search, X, y) for every estimator of the package: a grid over patch size."""
    X, y = _images()
    X20, y20 = _images(n=24, size=20)
    cv = StratifiedKFold(3)
    linear = LogisticRegression(max_iter=300)
    yield "PatchExtractor", GridSearchCV(
        Pipeline([("patches", PatchExtractor(flatten=True)), ("clf", linear)]),
        {"patches__patch_size": [3, 5]}, cv=cv,
    ), X, y
    yield "PatchOrderer", GridSearchCV(
        Pipeline([("order", PatchOrderer(patch_size=3, flatten=True, border="keep")), ("clf", linear)]),
        {"order__patch_size": [3, 4]}, cv=cv,
    ), X, y
    yield "PatchDictionaryEmbedding", GridSearchCV(
        Pipeline([("embed", PatchDictionaryEmbedding(**TINY_EMBEDDING)), ("clf", linear)]),
        {"embed__patch_size": [2, 3]}, cv=cv,
    ), X, y
    yield "PatchCNNClassifier", GridSearchCV(
        PatchCNNClassifier(**dict(TINY_PATCH_CNN, max_epochs=2)), {"patch_size": [4, 6]}, cv=cv,
    ), X, y
    yield "BagNetClassifier", GridSearchCV(
        BagNetClassifier(**TINY_BAGNET), {"patch_size": [9, 17]}, cv=cv,
    ), X20, y20
    Xb, yb = load_patch_size_results(return_X_y=True)
    # the bound has no patch size parameter (patch sizes are its input rows): search the formula
    yield "PatchBoundPredictor", GridSearchCV(
        PatchBoundPredictor(), {"formula": ["paper", "code"], "alpha": [2.0, 3.0]}, cv=3,
    ), Xb, yb


SEARCHES = {name: (search, X, y) for name, search, X, y in _searches()}


@pytest.mark.parametrize("name", list(SEARCHES))
def test_grid_search_on_the_cluster_equals_n_jobs_1(client, name):
    search, X, y = SEARCHES[name]
    with _like_a_worker():
        serial = clone(search).set_params(n_jobs=1).fit(X, y)
    # the refit of the best candidate runs here, in this process: on one thread too
    with distributed.get_task_stream(client) as stream, _like_a_worker():
        with joblib.parallel_config(backend="dask"):
            on_cluster = clone(search).set_params(n_jobs=-1).fit(X, y)
    workers = {task["worker"] for task in stream.data}
    assert len(workers) == 2, f"the fits ran on {workers}, not on both workers"
    _assert_same_cv_results(serial.cv_results_, on_cluster.cv_results_)
    assert serial.best_params_ == on_cluster.best_params_
    X_eval = X[:6]
    with _like_a_worker():
        _assert_same_predictions(serial, on_cluster, X_eval)


def _assert_same_predictions(a, b, X_eval):
    if hasattr(a, "predict_proba"):
        np.testing.assert_array_equal(a.predict_proba(X_eval), b.predict_proba(X_eval))
    else:
        np.testing.assert_array_equal(a.predict(X_eval), b.predict(X_eval))


def _fit(estimator, X, y):
    return estimator.fit(X, y)


def _worker_facts():
    import torch

    from skpatch.utils._parallel import effective_n_threads

    return {
        "torch_threads": torch.get_num_threads(),
        "skpatch_threads": effective_n_threads(None),
        "cuda_initialized": torch.cuda.is_initialized(),
    }


@pytest.mark.parametrize("name", list(SEARCHES))
def test_fitted_on_a_worker_equals_fitted_here(client, name):
    """A fit is a Dask task: sent to a worker process, fitted there, sent back."""
    search, X, y = SEARCHES[name]
    estimator = clone(search.estimator)
    with _like_a_worker():
        here = clone(estimator).fit(X, y)
    remote = client.submit(_fit, clone(estimator), X, y, pure=False).result()
    assert type(remote) is type(here)
    X_eval = X[:8]
    again = pickle.loads(pickle.dumps(remote))  # and it travels again: pickled here, used here
    with _like_a_worker():
        np.testing.assert_array_equal(here.predict(X_eval), remote.predict(X_eval))
        _assert_same_predictions(here, remote, X_eval)
        _assert_same_predictions(here, again, X_eval)


def test_workers_run_one_thread_each_and_no_cuda(client):
    """No oversubscription: one task per worker thread, one thread per task."""
    X, y = _images()
    client.submit(_fit, PatchCNNClassifier(**TINY_PATCH_CNN), X, y, pure=False).result()
    facts = client.run(_worker_facts)
    assert len(facts) == 2
    for fact in facts.values():
        assert fact == {"torch_threads": 1, "skpatch_threads": 1, "cuda_initialized": False}


# ----------------------------------------------------------- dask arrays


def _counting_array(X, chunk, calls):
    """A dask array of ``X`` that records each block it materialises in ``calls``."""

    def block(start):
        calls.append(start)
        return X[start : start + chunk]

    blocks = [
        da.from_delayed(dask.delayed(block)(start), shape=X[start : start + chunk].shape, dtype=X.dtype)
        for start in range(0, len(X), chunk)
    ]
    return da.concatenate(blocks)


def _transformers():
    return {
        "PatchExtractor": PatchExtractor(patch_size=3, stride=2),
        "PatchExtractor-flat": PatchExtractor(patch_size=3, flatten=True),
        "PatchExtractor-max_patches": PatchExtractor(patch_size=3, max_patches=7, random_state=0),
        "PatchOrderer": PatchOrderer(patch_size=3, border="keep"),
        "PatchOrderer-flat": PatchOrderer(patch_size=4, flatten=True),
        "PatchDictionaryEmbedding": PatchDictionaryEmbedding(**TINY_EMBEDDING),
        "PatchDictionaryEmbedding-triangle": PatchDictionaryEmbedding(
            **dict(TINY_EMBEDDING, encoding="triangle", n_neighbors=16, pooling=1)
        ),
        "PatchDictionaryEmbedding-soft_threshold": PatchDictionaryEmbedding(
            **dict(TINY_EMBEDDING, encoding="soft_threshold", both_signs=True, pooling=(3, 2))
        ),
    }


@pytest.mark.parametrize("name", list(_transformers()))
def test_transform_of_a_dask_array_is_lazy_and_bit_identical(client, name):
    X, _ = _images(n=26)
    X = (X * 255).round().astype(np.uint8)
    fitted = _transformers()[name].fit(X)
    expected = fitted.transform(X)
    calls = []
    X_lazy = _counting_array(X, 5, calls)
    with dask.config.set(scheduler="sync"):
        out = fitted.transform(X_lazy)
        assert isinstance(out, da.Array) and calls == []  # nothing decoded yet
        assert out.shape == expected.shape and out.dtype == expected.dtype
        assert out.chunks[0] == (5, 5, 5, 5, 5, 1)
        np.testing.assert_array_equal(out.compute(), expected)
    assert sorted(calls) == [0, 5, 10, 15, 20, 25]  # each block exactly once
    on_cluster = client.compute(fitted.transform(da.from_array(X, chunks=(7, 12, 12, 3))))
    np.testing.assert_array_equal(on_cluster.result(), expected)


def test_random_patches_of_a_dask_array_are_the_in_memory_draw():
    """max_patches: positions drawn once for all rows, not once per block (which would repeat)."""
    X, _ = _images(n=23)
    for random_state in (0, 7):
        extractor = PatchExtractor(patch_size=4, max_patches=0.2, random_state=random_state)
        expected = extractor.transform(X)
        with dask.config.set(scheduler="sync"):
            out = extractor.transform(da.from_array(X, chunks=(4, 12, 12, 3))).compute()
        np.testing.assert_array_equal(out, expected)
    # blocks of equal size do not get equal draws
    assert not np.array_equal(out[:4], out[4:8])


@pytest.mark.parametrize("estimator", [
    PatchExtractor(patch_size=3, flatten=True), PatchOrderer(patch_size=3, flatten=True),
], ids=["PatchExtractor", "PatchOrderer"])
def test_stateless_transformers_fit_on_a_stream(client, estimator):
    X, _ = _images(n=14)
    in_memory = clone(estimator).fit(X)
    streamed = clone(estimator).fit(da.from_array(X, chunks=(5, 12, 12, 3)))
    assert streamed.image_shape_ == in_memory.image_shape_ == (12, 12, 3)
    assert streamed.n_features_in_ == in_memory.n_features_in_
    lazy = clone(estimator).fit_transform(da.from_array(X, chunks=(5, 12, 12, 3)))
    np.testing.assert_array_equal(client.compute(lazy).result(), in_memory.transform(X))
    nan = da.from_array(np.where(X > 0.9, np.nan, X), chunks=(5, 12, 12, 3))
    with pytest.raises(ValueError, match="NaN"):
        clone(estimator).fit(nan)


def test_transform_of_rows_and_of_split_image_axes(client):
    """Rows ``(n, H*W*C)`` and arrays chunked inside an image give the same result."""
    X, _ = _images(n=20)
    embed = PatchDictionaryEmbedding(**TINY_EMBEDDING).fit(X)
    expected = embed.transform(X)
    split = da.from_array(X, chunks=(6, 5, 7, 2))  # blocks cut through the images
    np.testing.assert_array_equal(client.compute(embed.transform(split)).result(), expected)
    rows = da.from_array(X.reshape(20, -1), chunks=(8, 100))
    rows_fit = PatchDictionaryEmbedding(**TINY_EMBEDDING, image_shape=(12, 12, 3)).fit(X.reshape(20, -1))
    np.testing.assert_array_equal(
        client.compute(rows_fit.transform(rows)).result(), rows_fit.transform(X.reshape(20, -1))
    )


def test_unknown_chunk_sizes_are_an_error_naming_the_fix():
    X, _ = _images(n=10)
    lazy = da.from_array(X, chunks=(5, 12, 12, 3))
    lazy = lazy[lazy[:, 0, 0, 0] >= 0]  # boolean mask: row chunks unknown
    embed = PatchDictionaryEmbedding(**TINY_EMBEDDING).fit(X)
    with pytest.raises(ValueError, match="compute_chunk_sizes"):
        embed.transform(lazy)


def test_dictionary_fitted_from_a_stream_equals_the_in_memory_fit(client):
    """fit(dask array): the same sampled patches, whitening and atoms, computed on the workers."""
    X, _ = _images(n=30)
    X = (X * 255).round().astype(np.uint8)
    params = dict(TINY_EMBEDDING, dictionary="kmeans", n_patches_fit=1500)
    in_memory = PatchDictionaryEmbedding(**params).fit(X)
    stream = _counting_array(X, 4, [])
    with dask.config.set(scheduler=client.get):
        streamed = PatchDictionaryEmbedding(**params).fit(stream)
    for attribute in ("mean_", "whitening_", "atoms_"):
        np.testing.assert_array_equal(getattr(in_memory, attribute), getattr(streamed, attribute))
    peak = float(np.float32(X.max()) / np.float32(255))  # the scaled peak, as fit computes it
    assert streamed._fit_input_scale == in_memory._fit_input_scale == ("uint8", peak)
    assert streamed.image_shape_ == in_memory.image_shape_ and streamed.n_features_in_ == 432
    np.testing.assert_array_equal(
        client.compute(streamed.transform(da.from_array(X, chunks=8))).result(), in_memory.transform(X)
    )
    # fit_transform on a stream: the lazy transform of the stream
    lazy = PatchDictionaryEmbedding(**params).fit_transform(da.from_array(X, chunks=8))
    assert isinstance(lazy, da.Array)
    np.testing.assert_array_equal(client.compute(lazy).result(), in_memory.transform(X))


def test_stream_fit_checks_the_values_without_materialising(client):
    X, _ = _images(n=12)
    bad = da.from_array(np.where(X > 0.9, np.nan, X).astype(np.float64), chunks=4)
    with dask.config.set(scheduler=client.get), pytest.raises(ValueError, match="NaN"):
        PatchDictionaryEmbedding(**TINY_EMBEDDING).fit(bad)
    huge = da.from_array(X.astype(np.float64) * 1e300, chunks=4)
    with dask.config.set(scheduler=client.get), pytest.raises(ValueError, match="float32 range"):
        PatchDictionaryEmbedding(**TINY_EMBEDDING).fit(huge)
    with pytest.raises(ValueError, match="dask array of images"):
        PatchDictionaryEmbedding(**TINY_EMBEDDING).fit(da.zeros((4, 12, 12, 3, 1), chunks=2))


@pytest.mark.parametrize("name", ["PatchCNNClassifier", "BagNetClassifier"])
def test_classifiers_predict_block_by_block(client, name):
    search, X, y = SEARCHES[name]
    fitted = clone(search.estimator).fit(X, y)
    lazy = da.from_array(X, chunks=(5,) + X.shape[1:])
    with _like_a_worker():
        _assert_block_predictions(client, fitted, X, lazy)


def _assert_block_predictions(client, fitted, X, lazy):
    for method in ("predict", "predict_proba", "predict_log_proba"):
        out = getattr(fitted, method)(lazy)
        assert isinstance(out, da.Array) and out.chunks[0] == (5, 5, 5, 5, 4)
        computed = client.compute(out).result()
        # each block is one in-memory call: bit for bit the same as calling on those rows
        per_block = np.concatenate([getattr(fitted, method)(X[i : i + 5]) for i in range(0, len(X), 5)])
        np.testing.assert_array_equal(computed, per_block)
        # float32 convolutions pick their kernels by batch size: the whole X agrees to rounding
        whole = getattr(fitted, method)(X)
        if method == "predict":
            np.testing.assert_array_equal(computed, whole)
        else:
            np.testing.assert_allclose(computed, whole, rtol=1e-5, atol=1e-6 * np.abs(whole).max())


def test_missing_dask_is_an_import_error_naming_the_extra(monkeypatch):
    from skpatch.utils import _dask

    monkeypatch.setitem(sys.modules, "dask.array", None)
    with pytest.raises(ImportError, match=r"skpatch\[dask\]"):
        _dask.import_dask_array()
    monkeypatch.setitem(sys.modules, "distributed", None)
    with pytest.raises(ImportError, match=r"skpatch\[dask\]"):
        _dask.import_distributed()


def test_import_skpatch_does_not_load_dask():
    import subprocess

    code = "import sys, skpatch, skpatch.datasets; print(any(m.startswith(('dask', 'distributed')) for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# ------------------------------------------------------- streaming image folders


def _write_folder(root, n_per_class=(4, 3), size=(5, 6), grey_index=None):
    """PNG class folders ``root/<class>/<i>.png`` of known pixels; returns them in load order."""
    from PIL import Image

    rng = np.random.default_rng(1)
    expected = []
    for label, n_images in enumerate(n_per_class):
        folder = root / f"class{label}"
        folder.mkdir(parents=True)
        for i in range(n_images):
            pixels = rng.integers(0, 256, size + (3,), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f"{i:02d}.png")
            expected.append(pixels)
    return np.stack(expected)


def _tar(folder, archive, mode):
    with tarfile.open(archive, mode) as tar:
        for path in sorted(folder.rglob("*.png")):
            tar.add(path, arcname=str(path.relative_to(folder.parent)))
    return archive


@pytest.mark.parametrize("form", ["folder", "tar", "tar.gz"])
def test_image_folder_as_dask_equals_the_in_memory_load(client, tmp_path, form):
    pixels = _write_folder(tmp_path / "images")
    path = {
        "folder": lambda: tmp_path / "images",
        "tar": lambda: _tar(tmp_path / "images", tmp_path / "images.tar", "w"),
        "tar.gz": lambda: _tar(tmp_path / "images", tmp_path / "images.tar.gz", "w:gz"),
    }[form]()
    in_memory = load_image_folder(path)
    lazy = load_image_folder(path, as_dask=True, chunk_size=3)
    assert isinstance(lazy.images, da.Array) and lazy.images.chunks[0] == (3, 3, 1)
    np.testing.assert_array_equal(lazy.target, [0, 0, 0, 0, 1, 1, 1])
    np.testing.assert_array_equal(lazy.target, in_memory.target)
    assert list(lazy.target_names) == ["class0", "class1"]
    assert list(lazy.filenames) == list(in_memory.filenames)
    decoded = client.compute(lazy.images).result()  # decoded by the worker processes
    np.testing.assert_array_equal(decoded, in_memory.images)
    np.testing.assert_array_equal(decoded, pixels)  # PNG is lossless: the pixels written


def test_image_folder_as_dask_decodes_per_chunk_with_resize(tmp_path):
    from PIL import Image

    _write_folder(tmp_path / "images", n_per_class=(2, 2), size=(9, 7))
    Image.fromarray(np.full((4, 4), 200, np.uint8)).save(tmp_path / "images" / "class1" / "grey.png")
    in_memory = load_image_folder(tmp_path / "images", size=(6, 5))
    lazy = load_image_folder(tmp_path / "images", size=(6, 5), as_dask=True, chunk_size=2)
    with dask.config.set(scheduler="sync"):
        np.testing.assert_array_equal(lazy.images.compute(), in_memory.images)
    # without size, an image of another shape is an error naming it when its chunk is decoded
    lazy = load_image_folder(tmp_path / "images", as_dask=True, chunk_size=2)
    with dask.config.set(scheduler="sync"), pytest.raises(ValueError, match="grey.png"):
        lazy.images.compute()


def test_image_folder_as_dask_bad_arguments(tmp_path):
    _write_folder(tmp_path / "images")
    archive = _tar(tmp_path / "images", tmp_path / "images.tar", "w")
    with pytest.raises(ValueError, match="cache"):
        load_image_folder(archive, as_dask=True, cache=True, cache_dir=tmp_path / "cache")
    for bad in (0, 2.5, True):
        with pytest.raises(ValueError, match="chunk_size"):
            load_image_folder(archive, as_dask=True, chunk_size=bad)
    with pytest.raises(ValueError, match="as_dask must be True or False"):
        load_image_folder(archive, as_dask="yes")
    lazy = load_image_folder(archive, as_dask=True, chunk_size=4)
    with open(archive, "r+b") as file:  # the archive shrinks after listing
        file.truncate(2048)
    with dask.config.set(scheduler="sync"), pytest.raises(ValueError, match="images.tar"):
        lazy.images.compute()


@pytest.mark.skipif(not CIFAR_ARCHIVE.exists(), reason="needs ../shared/data/cifar-10-jpeg.tar.gz")
def test_cifar10_jpeg_streamed_and_embedded_on_the_cluster(client):
    """The real archive, decoded by the workers, embedded block by block: equals in memory."""
    lazy = load_image_folder(CIFAR_ARCHIVE, subset="test", as_dask=True, chunk_size=1000)
    assert lazy.images.shape == (10000, 32, 32, 3)
    images = lazy.images[:2000]
    in_memory = load_image_folder(CIFAR_ARCHIVE, subset="test").images[:2000]
    params = dict(patch_size=6, n_atoms=64, n_neighbors=8, pooling=2, n_patches_fit=20000, random_state=0)
    with dask.config.set(scheduler=client.get):
        streamed = PatchDictionaryEmbedding(**params).fit(images)
    fitted = PatchDictionaryEmbedding(**params).fit(in_memory)
    np.testing.assert_array_equal(streamed.atoms_, fitted.atoms_)
    out = client.compute(streamed.transform(images)).result()
    np.testing.assert_array_equal(out, fitted.transform(in_memory))
    np.testing.assert_array_equal(lazy.target[:2000], np.repeat(np.arange(10), 1000)[:2000])


# ------------------------------------------------------------ one worker per GPU


def _gpu_worker_env():
    import os

    import torch

    return (os.environ["CUDA_VISIBLE_DEVICES"], os.environ["OMP_NUM_THREADS"],
            torch.get_num_threads(), torch.cuda.is_initialized())


def test_gpu_cluster_gives_each_worker_its_own_gpu():
    """The SpecCluster layout (no dask-cuda): each worker process sees only its GPU id.

    Runs on a CPU machine too: the ids need not exist for the variable to be set.
    """
    from skpatch.scaling import gpu_cluster

    with gpu_cluster(["3", "5"], use_dask_cuda=False, dashboard_address=None) as cluster:
        with distributed.Client(cluster, set_as_default=False) as gpu_client:
            facts = gpu_client.run(_gpu_worker_env)
            threads = {info["nthreads"] for info in gpu_client.scheduler_info()["workers"].values()}
    assert sorted(facts.values()) == [("3", "1", 1, False), ("5", "1", 1, False)]
    assert threads == {1}


def test_gpu_cluster_bad_arguments(monkeypatch):
    from skpatch.scaling import gpu_cluster, gpu_worker_specs

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "-1")  # no GPU visible, whatever the machine
    with pytest.raises(RuntimeError, match="no GPU"):
        gpu_cluster()
    with pytest.raises(ValueError, match="gpus is empty"):
        gpu_worker_specs([])
    with pytest.raises(ValueError, match="each GPU once"):
        gpu_worker_specs([0, 0])
    with pytest.raises(ValueError, match="threads_per_worker"):
        gpu_worker_specs([0], threads_per_worker=0)
    with pytest.raises(ValueError, match="use_dask_cuda"):
        gpu_cluster([0], use_dask_cuda="yes")
    specs = gpu_worker_specs(["1", "2"], threads_per_worker=2, env={"X": "y"})
    assert specs["gpu-2"]["options"]["env"] == {
        "CUDA_VISIBLE_DEVICES": "2", "OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2",
        "OPENBLAS_NUM_THREADS": "2", "X": "y",
    }
    # a numpy integer is an int (as scikit-learn's parameters take them)
    assert gpu_worker_specs(["1"], threads_per_worker=np.int64(3))["gpu-1"]["options"]["env"][
        "OMP_NUM_THREADS"] == "3"


def _cpu_worker_facts():
    """The environment a worker process started with, its threads, and whether malloc reuses."""
    import os
    import resource

    import torch
    from threadpoolctl import threadpool_info

    from skpatch.utils._parallel import effective_n_threads

    with open("/proc/self/environ", "rb") as f:  # what glibc read when the process started
        started = dict(item.split(b"=", 1) for item in f.read().split(b"\0") if b"=" in item)
    faults = []
    for _ in range(4):  # a 2 MiB array made and freed: reused, or mapped and faulted in anew
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        block = np.ones(2**18)
        del block
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    return dict(
        trim=started.get(b"MALLOC_TRIM_THRESHOLD_"),
        threads_env={name: os.environ.get(name) for name in
                     ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")},
        pools={info["num_threads"] for info in threadpool_info()},
        torch_threads=torch.get_num_threads(), skpatch_threads=effective_n_threads(None),
        last_faults=faults[-1],
    )


_GLIBC_LINUX = sys.platform.startswith("linux") and __import__("platform").libc_ver()[0] == "glibc"


@pytest.mark.skipif(not _GLIBC_LINUX, reason="glibc's malloc on Linux")
def test_cpu_cluster_workers_reuse_freed_memory_one_thread_each(monkeypatch):
    """No MALLOC_TRIM_THRESHOLD_ in the workers (freed arrays are reused), one thread per task.

    This process sets both the trim threshold and OMP_NUM_THREADS=4: neither
    reaches the workers, and both are this process's again afterwards.
    """
    from skpatch.scaling import cpu_cluster

    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "65536")
    monkeypatch.setenv("OMP_NUM_THREADS", "4")
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    with cpu_cluster(2, dashboard_address=None, worker_dashboard_address=None) as cluster:
        import os

        after_start = {name: os.environ.get(name) for name in
                       ("MALLOC_TRIM_THRESHOLD_", "OMP_NUM_THREADS", "MKL_NUM_THREADS")}
        with distributed.Client(cluster, set_as_default=False) as cpu_client:
            facts = cpu_client.run(_cpu_worker_facts)
            threads = {info["nthreads"] for info in cpu_client.scheduler_info()["workers"].values()}
    assert after_start == {"MALLOC_TRIM_THRESHOLD_": "65536", "OMP_NUM_THREADS": "4",
                           "MKL_NUM_THREADS": None}
    assert len(facts) == 2 and threads == {1}
    for fact in facts.values():
        assert fact["trim"] is None
        assert fact["threads_env"] == dict.fromkeys(
            ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"), "1")
        assert fact["pools"] == {1}
        assert (fact["torch_threads"], fact["skpatch_threads"]) == (1, 1)
        assert fact["last_faults"] < 32, fact  # the freed 2 MiB were reused


@pytest.mark.skipif(not _GLIBC_LINUX, reason="glibc's malloc on Linux")
def test_cpu_cluster_malloc_trim_threshold_as_asked():
    """distributed's own setting on request: then every 2 MiB array is faulted in anew."""
    from skpatch.scaling import cpu_cluster

    with cpu_cluster(1, malloc_trim_threshold=65536, dashboard_address=None,
                     worker_dashboard_address=None) as cluster:
        with distributed.Client(cluster, set_as_default=False) as cpu_client:
            (fact,) = cpu_client.run(_cpu_worker_facts).values()
    assert fact["trim"] == b"65536"
    assert fact["last_faults"] > 256, fact  # 512 pages of 4 KiB


def test_cpu_cluster_bad_arguments():
    from skpatch.scaling import cpu_cluster

    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="threads_per_worker"):
            cpu_cluster(1, threads_per_worker=bad)
        with pytest.raises(ValueError, match="n_workers"):
            cpu_cluster(bad)
    for bad in (-1, 1.5, True, "65536"):
        with pytest.raises(ValueError, match="malloc_trim_threshold"):
            cpu_cluster(1, malloc_trim_threshold=bad)
    with pytest.raises(ValueError, match="processes"):
        cpu_cluster(1, processes=False)
    with pytest.raises(ValueError, match="asynchronous"):
        cpu_cluster(1, asynchronous=True)


def _fit_on_this_worker(estimator, X, y):
    import os

    import torch

    fitted = estimator.fit(X, y)
    index = getattr(fitted, "index_", None)
    return fitted, dict(
        visible=os.environ["CUDA_VISIBLE_DEVICES"], device=fitted.device_,
        gpu=torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        index=type(index).__name__ if index is not None else None,
    )


@pytest.mark.gpu
def test_patch_cnn_search_spread_over_the_gpus():
    """One worker per GPU; device='auto' fits on the worker's own GPU; the search agrees."""
    from skpatch.scaling import gpu_cluster

    X, y = _images(n=24)
    estimator = PatchCNNClassifier(**dict(TINY_PATCH_CNN, device="auto", max_epochs=2))
    with gpu_cluster(dashboard_address=None) as cluster:
        with distributed.Client(cluster, set_as_default=False) as gpu_client:
            workers = list(gpu_client.scheduler_info()["workers"])
            runs = [gpu_client.submit(_fit_on_this_worker, clone(estimator), X, y,
                                      workers=[w], pure=False).result() for w in workers]
            with joblib.parallel_config(backend="dask", client=gpu_client):
                search = GridSearchCV(clone(estimator), {"patch_size": [4, 6]}, cv=3,
                                      n_jobs=-1, refit=False).fit(X, y)
    facts = [fact for _, fact in runs]
    assert all(fact["device"] == "cuda" for fact in facts)
    assert len({fact["visible"] for fact in facts}) == len(workers)  # each its own GPU
    serial = GridSearchCV(clone(estimator), {"patch_size": [4, 6]}, cv=3, refit=False).fit(X, y)
    # cuDNN may sum in another order per process: a fold's accuracy may move by one image
    np.testing.assert_allclose(search.cv_results_["mean_test_score"],
                               serial.cv_results_["mean_test_score"], atol=1 / 8 + 1e-9)


@pytest.mark.gpu
def test_embedding_index_on_the_workers_gpu():
    from skpatch.scaling import gpu_cluster
    from skpatch.utils import _faiss

    if not _faiss._faiss_has_gpu(_faiss.import_faiss()):
        pytest.skip("faiss has no GPU support here (faiss-cpu): pip uninstall -y faiss-cpu && pip install faiss-gpu")
    X, _ = _images(n=24)
    with gpu_cluster(dashboard_address=None) as cluster:
        with distributed.Client(cluster, set_as_default=False) as gpu_client:
            worker = list(gpu_client.scheduler_info()["workers"])[0]
            fitted, fact = gpu_client.submit(
                _fit_on_this_worker, PatchDictionaryEmbedding(**dict(TINY_EMBEDDING, device="auto")),
                X, None, workers=[worker], pure=False,
            ).result()
    assert fact["device"] == "cuda" and "Gpu" in fact["index"]
    on_cpu = PatchDictionaryEmbedding(**dict(TINY_EMBEDDING, device="cpu")).fit(X)
    np.testing.assert_array_equal(fitted.atoms_, on_cpu.atoms_)  # 'data' atoms: numpy alone
    assert np.mean(fitted.transform(X) == on_cpu.transform(X)) > 0.999  # near-ties aside


@pytest.mark.gpu
def test_index_over_all_gpus_equals_the_cpu_index():
    from skpatch.utils import _faiss

    faiss = _faiss.import_faiss()
    if not _faiss._faiss_has_gpu(faiss):
        pytest.skip("faiss has no GPU support here (faiss-cpu): pip uninstall -y faiss-cpu && pip install faiss-gpu")
    rng = np.random.default_rng(0)
    atoms = rng.standard_normal((4096, 108)).astype(np.float32)
    queries = rng.standard_normal((5000, 108)).astype(np.float32)
    sharded = _faiss.build_index(atoms, use_gpu=True, all_gpus=True)
    cpu = _faiss.build_index(atoms, use_gpu=False)
    for k in (1, 16):
        gpu_dist, gpu_idx = _faiss.index_search(sharded, queries, k)
        cpu_dist, cpu_idx = _faiss.index_search(cpu, queries, k)
        np.testing.assert_allclose(gpu_dist, cpu_dist, rtol=1e-4, atol=1e-4 * np.abs(cpu_dist).max())
        assert np.mean(gpu_idx == cpu_idx) > 0.999
    restored = _faiss.deserialize_index(_faiss.serialize_index(sharded))
    np.testing.assert_array_equal(_faiss.index_search(restored, queries, 4)[1],
                                  _faiss.index_search(cpu, queries, 4)[1])


@pytest.mark.gpu
def test_embedding_with_its_index_over_all_gpus_encodes_as_on_the_cpu():
    from skpatch.utils import _faiss

    if not _faiss._faiss_has_gpu(_faiss.import_faiss()):
        pytest.skip("faiss has no GPU support here (faiss-cpu): pip uninstall -y faiss-cpu && pip install faiss-gpu")
    X, _ = _images(n=24)
    params = dict(TINY_EMBEDDING, knn_backend="faiss")
    sharded = PatchDictionaryEmbedding(**params, device="cuda", index_gpus="all").fit(X)
    on_cpu = PatchDictionaryEmbedding(**params, device="cpu").fit(X)
    np.testing.assert_array_equal(sharded.atoms_, on_cpu.atoms_)
    assert np.mean(sharded.transform(X) == on_cpu.transform(X)) > 0.999  # near-ties aside
    again = pickle.loads(pickle.dumps(sharded))  # the index travels as a CPU index
    assert np.mean(again.transform(X) == on_cpu.transform(X)) > 0.999


def test_code_maps_of_a_dask_array_are_lazy_and_bit_identical():
    X, _ = _images(n=13)
    embed = PatchDictionaryEmbedding(**dict(TINY_EMBEDDING, pooling=(3, 2), both_signs="raw")).fit(X)
    lazy = embed.transform_maps(da.from_array(X, chunks=(4, 12, 12, 3)))
    assert isinstance(lazy, da.Array)
    with dask.config.set(scheduler="sync"):
        np.testing.assert_array_equal(lazy.compute(), embed.transform_maps(X))
