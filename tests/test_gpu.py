"""CPU-vs-CUDA equality of every GPU path: crops, a training step, patch logits,
faiss search, the GEMM neighbour selection and the embedding codes.

Every test here is marked ``gpu`` (run them alone with ``pytest -m gpu``) and
skips with a reason where no CUDA GPU is visible (conftest.py); the faiss test
also needs faiss built with GPU support. ``benchmarks/gpu_check.py`` runs this
file and the GPU throughput figures in one go on a machine with a GPU.

The CUDA side runs with TF32 off (``fp32_precision = 'ieee'``, restored after
each test) and ``amp=False``: float32 on both devices, so the tolerances are
float32 rounding of sums taken in another order, relative to the magnitudes
compared (not per entry). Only public APIs are used, except the faiss helpers
of ``skpatch.utils._faiss``, which have no public face.
"""

import contextlib
import importlib
import pickle
import warnings

import numpy as np
import pytest

from _helpers import (
    TINY_BAGNET,
    TINY_EMBEDDING,
    TINY_PATCH_CNN,
    assert_close_to_scale,
    fitted_torch_module,
    reference_images,
)

torch = pytest.importorskip("torch")

pytestmark = pytest.mark.gpu

# the device compared with the CPU (one name, so a dry run can point it elsewhere)
GPU = "cuda"
GPU_TYPE = torch.device(GPU).type

# float32 sums in another order: 1e-4 of the scale for one pass, 1e-3 after
# a few SGD steps (each step feeds the last one's rounding back in)
INFERENCE_RTOL = 1e-4
TRAINING_RTOL = 1e-3


@contextlib.contextmanager
def _float32_matmuls():
    """TF32 off for cuDNN convolutions and CUDA matmuls; the previous settings restored."""
    conv = getattr(getattr(torch.backends.cudnn, "conv", None), "fp32_precision", None)
    if conv is not None:  # torch >= 2.9: the fp32_precision API (never mix it with allow_tf32)
        matmul = torch.backends.cuda.matmul.fp32_precision
        torch.backends.cudnn.conv.fp32_precision = "ieee"
        torch.backends.cuda.matmul.fp32_precision = "ieee"
        try:
            yield
        finally:
            torch.backends.cudnn.conv.fp32_precision = conv
            torch.backends.cuda.matmul.fp32_precision = matmul
    else:
        saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
        try:
            yield
        finally:
            torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


@pytest.fixture(autouse=True)
def _ieee_float32():
    with _float32_matmuls():
        yield


@contextlib.contextmanager
def _as_on_a_cpu_only_machine(monkeypatch):
    """torch (and skorch, and skpatch's device rule) see no CUDA GPU inside the block."""
    with monkeypatch.context() as patch:
        patch.setattr(torch.cuda, "is_available", lambda: False)
        patch.setattr(torch.cuda, "device_count", lambda: 0)
        with warnings.catch_warnings():
            # "fitted on device 'cuda' ... running on the CPU": expected here
            warnings.simplefilter("ignore", UserWarning)
            warnings.simplefilter("ignore", RuntimeWarning)
            yield


def _import_first(name, *modules):
    for module_name in modules:
        try:
            value = getattr(importlib.import_module(module_name), name, None)
        except ImportError:
            continue
        if value is not None:
            return value
    pytest.fail(f"{name} is in none of {modules}: update tests/test_gpu.py")


# ---- random crops -------------------------------------------------------------


def _random_crop():
    # it moved to skpatch.nn; the old private home still re-exports it
    return _import_first("random_crop", "skpatch.nn", "skpatch.classifiers._base")


def _crop(random_crop, x, size, seed):
    generator = torch.Generator(device=x.device).manual_seed(seed)
    try:
        return random_crop(x, size, generator=generator)
    except TypeError:  # an older signature without generator: the global one, forked
        devices = [x.device.index or 0] if x.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            return random_crop(x, size)


def _unique_images(n, channels, height, width):
    # every value distinct: a crop's first value says where it was cut
    values = torch.randperm(n * channels * height * width, generator=torch.Generator().manual_seed(0))
    return values.reshape(n, channels, height, width).float()


def _offsets(x, crops):
    """(top, left) of each crop in ``x``, both on the CPU; one search per image."""
    width = x.shape[3]
    offsets = []
    for image, crop in zip(x, crops):
        flat = int(torch.nonzero(image[0].reshape(-1) == crop[0, 0, 0])[0, 0])
        offsets.append(divmod(flat, width))
    return offsets


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("size", [(4, 4), (3, 5), (8, 1)])
def test_cuda_crops_are_the_cpu_windows(size, channels_last):
    random_crop = _random_crop()
    x = _unique_images(64, 3, 8, 9)
    x_cuda = x.to(GPU)
    if channels_last:  # how the classifiers feed a GPU
        x_cuda = x_cuda.to(memory_format=torch.channels_last)
    crops = _crop(random_crop, x_cuda, size, seed=0)
    assert crops.device.type == GPU_TYPE
    assert crops.shape == (64, 3) + size and crops.dtype == x.dtype
    assert crops.is_contiguous()  # NCHW, as on the CPU
    crops = crops.cpu()
    for i, (top, left) in enumerate(_offsets(x, crops)):
        assert top + size[0] <= 8 and left + size[1] <= 9
        torch.testing.assert_close(crops[i], x[i, :, top : top + size[0], left : left + size[1]],
                                   rtol=0, atol=0)
    # the same seed on the device gives the same crops, whatever the memory format
    again = _crop(random_crop, x.to(GPU), size, seed=0).cpu()
    torch.testing.assert_close(again, crops, rtol=0, atol=0)


def test_cuda_crop_corners_cover_every_position_uniformly():
    random_crop = _random_crop()
    n, height, width, size = 6000, 6, 7, (3, 3)
    x = _unique_images(1, 1, height, width).expand(n, 1, height, width).contiguous()
    counts = {}
    for device in ("cpu", GPU):
        crops = _crop(random_crop, x.to(device), size, seed=1).cpu()
        corners = np.array(_offsets(x, crops))
        grid = np.zeros((height - size[0] + 1, width - size[1] + 1))
        np.add.at(grid, (corners[:, 0], corners[:, 1]), 1)
        counts[device] = grid
    expected = n / counts["cpu"].size
    for device, grid in counts.items():
        # every corner reached, none favoured: 5 sigma of a binomial count
        assert grid.min() > 0, f"{device}: a crop position is never drawn"
        assert np.abs(grid - expected).max() < 5 * np.sqrt(expected), (device, grid)


# ---- one training step of each classifier ------------------------------------


def _classifier(name, device, **overrides):
    from skpatch import BagNetClassifier, PatchCNNClassifier

    if name == "PatchCNNClassifier":
        # patch_size = the image size: no random crop, whose corners each device
        # draws from its own generator; augment=None for the same reason (flips)
        params = dict(TINY_PATCH_CNN, patch_size=8, batch_size=8, augment=None)
        cls = PatchCNNClassifier
    else:
        # a BagNet trains on whole images (no crop); flips off
        params = dict(TINY_BAGNET, batch_size=8, augment=None)
        cls = BagNetClassifier
    params.update({"device": device, "amp": False, **overrides})
    return cls(**params)


def _training_data(name):
    side = 8 if name == "PatchCNNClassifier" else 12
    return reference_images(16, side, side, 3, seed=3)


@pytest.mark.parametrize("name", ["PatchCNNClassifier", "BagNetClassifier"])
def test_one_epoch_on_cuda_equals_the_cpu(name):
    X, y = _training_data(name)
    cpu = _classifier(name, "cpu").fit(X, y)
    cuda = _classifier(name, GPU).fit(X, y)
    assert str(cuda.device_).startswith(GPU) and cpu.device_ == "cpu"
    cpu_state = fitted_torch_module(cpu).state_dict()
    cuda_state = fitted_torch_module(cuda).state_dict()
    assert cpu_state.keys() == cuda_state.keys()
    initial = fitted_torch_module(_classifier(name, "cpu", max_epochs=1, lr=1e-12).fit(X, y))
    moved = 0
    for key, value in cpu_state.items():
        if not value.is_floating_point():  # BatchNorm's num_batches_tracked
            assert torch.equal(value, cuda_state[key].cpu()), key
            continue
        assert cuda_state[key].device.type == GPU_TYPE, key
        assert_close_to_scale(cuda_state[key].cpu().numpy(), value.numpy(), TRAINING_RTOL,
                              what=f"{name} {key}")
        moved += not torch.allclose(value, initial.state_dict()[key])
    assert moved, "training moved no parameter: the comparison says nothing"
    loss = [row["train_loss"] for row in cpu.history_]
    cuda_loss = [row["train_loss"] for row in cuda.history_]
    np.testing.assert_allclose(cuda_loss, loss, rtol=TRAINING_RTOL)


# ---- patch logits of a fitted model on both devices ---------------------------


@pytest.mark.parametrize("name", ["PatchCNNClassifier", "BagNetClassifier"])
def test_patch_logits_of_a_cuda_model_equal_it_on_the_cpu(name, monkeypatch):
    X, y = _training_data(name)
    # crops and flips on: inference must not depend on how the model was trained
    overrides = {"patch_size": 4, "augment": ("flip",)} if name == "PatchCNNClassifier" else {}
    fitted = _classifier(name, GPU, **overrides).fit(X, y)
    on_cuda = fitted.patch_logits(X)
    proba_cuda = fitted.predict_proba(X)
    blob = pickle.dumps(fitted)
    with _as_on_a_cpu_only_machine(monkeypatch):
        on_cpu_model = pickle.loads(blob)
        assert on_cpu_model.device_ == "cpu"
        assert all(p.device.type == "cpu" for p in fitted_torch_module(on_cpu_model).parameters())
        on_cpu = on_cpu_model.patch_logits(X)
        proba_cpu = on_cpu_model.predict_proba(X)
    assert on_cuda.dtype == on_cpu.dtype == np.float32
    assert_close_to_scale(on_cuda, on_cpu, INFERENCE_RTOL, what=f"{name} patch logits")
    np.testing.assert_allclose(proba_cuda, proba_cpu, atol=1e-5)


def test_bf16_autocast_logits_stay_near_float32(monkeypatch):
    # amp='auto' trains and predicts under bfloat16 autocast on CUDA; the CPU
    # copy runs float32: bf16 keeps 8 bits of mantissa, so 5% of the scale
    X, y = _training_data("BagNetClassifier")
    fitted = _classifier("BagNetClassifier", GPU, amp="auto").fit(X, y)
    on_cuda = fitted.patch_logits(X)
    blob = pickle.dumps(fitted)
    with _as_on_a_cpu_only_machine(monkeypatch):
        on_cpu = pickle.loads(blob).patch_logits(X)
    assert_close_to_scale(on_cuda, on_cpu, 5e-2, what="bf16 vs float32 patch logits")


# ---- faiss search and the GEMM neighbour selection ---------------------------


def _faiss_helpers():
    return importlib.import_module("skpatch.utils._faiss")


def test_gpu_faiss_search_equals_the_cpu_index():
    helpers = _faiss_helpers()
    faiss = helpers.import_faiss()
    if not (hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0):
        pytest.skip("faiss has no GPU support here (faiss-cpu): pip uninstall -y faiss-cpu && pip install faiss-gpu")
    rng = np.random.default_rng(0)
    atoms = rng.standard_normal((256, 27)).astype(np.float32)
    queries = rng.standard_normal((4000, 27)).astype(np.float32)
    cpu_index = helpers.build_index(atoms, use_gpu=False)
    gpu_index = helpers.build_index(atoms, use_gpu=True)
    assert "Gpu" in type(gpu_index).__name__
    for k in (1, 4, 32):
        cpu_dist, cpu_idx = helpers.index_search(cpu_index, queries, k)
        gpu_dist, gpu_idx = helpers.index_search(gpu_index, queries, k)
        assert_close_to_scale(gpu_dist, cpu_dist, INFERENCE_RTOL, what=f"k={k} distances")
        # equal except near-ties, which each device's rounding may order either way
        assert np.mean(gpu_idx == cpu_idx) > 0.999
    # a GPU index serializes to a CPU one that answers the same
    restored = helpers.deserialize_index(helpers.serialize_index(gpu_index))
    np.testing.assert_array_equal(helpers.index_search(restored, queries, 4)[1],
                                  helpers.index_search(cpu_index, queries, 4)[1])


def test_cuda_top_k_selection_equals_the_cpu():
    select_mask = _import_first("select_mask", "skpatch.utils._faiss", "skpatch.embedding._encoder")
    scores = torch.randn(3000, 512, generator=torch.Generator().manual_seed(0))
    for k in (1, 5, 256, 511, 512):
        on_cpu = select_mask(scores, k)
        on_cuda = select_mask(scores.to(GPU), k)
        assert on_cuda.device.type == GPU_TYPE
        # random float scores hold no ties: the same k atoms exactly
        torch.testing.assert_close(on_cuda.cpu(), on_cpu, rtol=0, atol=0)
        assert torch.all(on_cpu.sum(dim=1) == k)


# ---- embedding codes -------------------------------------------------------------


def _embedding_data():
    # fit and encode different images: no patch sits exactly on a data atom,
    # where the square root of a float32 distance error would dominate
    X_fit, _ = reference_images(24, 12, 12, 3, seed=4)
    X_new, _ = reference_images(16, 12, 12, 3, seed=5)
    return X_fit, X_new


def _embedding(device, **overrides):
    from skpatch import PatchDictionaryEmbedding

    # 'data' atoms come from numpy alone: both fits hold the same dictionary
    return PatchDictionaryEmbedding(**dict(TINY_EMBEDDING, device=device, **overrides))


def _codes_on_both(**params):
    X_fit, X_new = _embedding_data()
    cpu = _embedding("cpu", **params).fit(X_fit)
    cuda = _embedding(GPU, **params).fit(X_fit)
    np.testing.assert_array_equal(cuda.atoms_, cpu.atoms_)
    return cpu.transform(X_new), cuda.transform(X_new)


@pytest.mark.parametrize("knn_backend", ["auto", "gemm", "faiss"])
@pytest.mark.parametrize("both_signs", [False, True])
def test_cuda_hard_codes_equal_the_cpu(knn_backend, both_signs):
    on_cpu, on_cuda = _codes_on_both(encoding="hard", knn_backend=knn_backend,
                                     both_signs=both_signs)
    assert on_cpu.dtype == on_cuda.dtype == np.float32
    # equal except near-ties of the k-th and (k+1)-th atom, which each device's
    # float32 rounding may break either way
    assert np.mean(on_cuda == on_cpu) > 0.999


@pytest.mark.parametrize("encoding", ["triangle", "full"])
@pytest.mark.parametrize("knn_backend", ["auto", "gemm"])
def test_cuda_triangle_and_full_codes_equal_the_cpu(encoding, knn_backend):
    on_cpu, on_cuda = _codes_on_both(encoding=encoding, knn_backend=knn_backend)
    hard_cpu, hard_cuda = _codes_on_both(encoding="hard", knn_backend=knn_backend)
    if encoding == "full" and not np.array_equal(hard_cpu, hard_cuda):
        # a near-tie moved a patch's values to another atom's slots: those entries only
        close = np.isclose(on_cuda, on_cpu, rtol=0, atol=1e-3 * np.abs(on_cpu).max())
        assert close.mean() > 0.999
        return
    # float32 GEMM distances in another order, pooled: 1e-3 of the scale
    assert_close_to_scale(on_cuda, on_cpu, 1e-3, what=f"{encoding} codes")


def test_cuda_fitted_embedding_encodes_the_same_on_a_cpu_only_machine(monkeypatch):
    X_fit, X_new = _embedding_data()
    fitted = _embedding(GPU, encoding="triangle").fit(X_fit)
    on_cuda = fitted.transform(X_new)
    blob = pickle.dumps(fitted)
    with _as_on_a_cpu_only_machine(monkeypatch):
        on_cpu = pickle.loads(blob).transform(X_new)
    assert_close_to_scale(on_cuda, on_cpu, 1e-3, what="triangle codes after unpickling")
