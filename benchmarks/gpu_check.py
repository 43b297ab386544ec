"""GPU check: the CPU-vs-CUDA equality tests, then GPU throughput against the CPU.

One prepared script for a session that is lent a GPU: it runs
``pytest -m gpu tests/test_gpu.py tests/test_dask.py`` (crops, a training
epoch, patch logits, faiss search, top-k selection, embedding codes: CUDA
equals the CPU; one Dask worker per GPU: a patch-size search, a faiss index on
the worker's GPU, an index sharded over all GPUs), then
measures images/s on the GPU and on the CPU of the same machine, in the same
run, for four workloads on seeded random 32x32x3 uint8 images:

``train``   PatchCNNClassifier training, ResNet-18 of width 64 on 16x16 crops,
            batch 128, one epoch (``amp='auto'``: bf16 autocast on the GPU)
``infer``   its ``patch_logits`` (every 16x16 patch at stride 1, 289 per image)
``embed``   PatchDictionaryEmbedding.transform, 6x6 patches, 1024 atoms,
            256 nearest ('hard'), 2x2 pooling
``bagnet``  BagNetClassifier(17) ``patch_logits`` (width 64, layers 3-4-6-3)

Each figure grows its number of images until one run fills a quarter of its
time box (a warm-up run first, not counted). Every part is time-boxed (the
tests by a subprocess timeout, each device of each workload by a timer), so
the whole run stays under 8 minutes on one GPU (``--quick``: under 4). A part
cut short reports ``nan``.

Where no CUDA GPU is visible the tests skip, nothing is measured, the script
says so and exits 0 with ``RESULT cuda=0 ...``. ``--device cpu`` measures the
CPU against itself: a dry run of the measuring code on a machine without a GPU.

Usage::

    python benchmarks/gpu_check.py            # about 8 minutes on a GPU machine
    python benchmarks/gpu_check.py --quick    # about 4 minutes

The last line is ``RESULT cuda=.. tests_passed=.. tests_failed=.. tests_skipped=..
train_ips_gpu=.. train_ips_cpu=.. train_ratio=.. infer_ips_gpu=.. ... bagnet_ratio=..
elapsed_s=..`` (images/s; ratio = GPU images/s over CPU images/s). The exit
status is 1 when a GPU test failed, else 0.
"""

import argparse
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
import warnings
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
WORKLOADS = ("train", "infer", "embed", "bagnet")
# the dask GPU tests skip without the skpatch[dask] extra
GPU_TEST_FILES = ("tests/test_gpu.py", "tests/test_dask.py")
DESCRIPTIONS = {
    "train": "PatchCNN training (ResNet-18 w64, T=16)",
    "infer": "PatchCNN patch logits (289 patches/image)",
    "embed": "embedding transform (1024 atoms, k=256)",
    "bagnet": "BagNet-17 patch logits (w64)",
}
# seconds: the tests, then each workload (half on the GPU, half on the CPU)
BOXES = {
    "full": dict(tests=150, workload=70),
    "quick": dict(tests=120, workload=25),
}
IMAGE_SHAPE = (32, 32, 3)
MAX_IMAGES = {"train": 32768, "infer": 4096, "embed": 16384, "bagnet": 8192}


class _TimeUp(Exception):
    pass


def _alarm(signum, frame):
    raise _TimeUp


class time_box:
    """Raise ``_TimeUp`` inside the block after ``seconds`` (main thread, POSIX timer)."""

    def __init__(self, seconds):
        self.seconds = seconds

    def __enter__(self):
        self.previous = signal.signal(signal.SIGALRM, _alarm)
        signal.setitimer(signal.ITIMER_REAL, self.seconds)
        return self

    def __exit__(self, *exc):
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, self.previous)
        return exc[0] is _TimeUp  # a cut-short part is reported, not raised


def run_gpu_tests(timeout_s):
    """``pytest -m gpu`` of the GPU test files in a subprocess: counts and the output's tail."""
    counts = dict(passed=0, failed=0, skipped=0)
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "gpu_tests.xml"
        command = [
            sys.executable, "-m", "pytest", "-q", "-m", "gpu", *GPU_TEST_FILES,
            "-p", "no:cacheprovider", f"--junitxml={report}",
        ]
        start = time.perf_counter()
        try:
            done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True,
                                  timeout=timeout_s)
            output, status = done.stdout + done.stderr, done.returncode
        except subprocess.TimeoutExpired as exc:
            output = (exc.stdout or b"").decode(errors="replace") if isinstance(
                exc.stdout, bytes) else (exc.stdout or "")
            output += f"\n(pytest stopped by the {timeout_s} s time box)"
            status = None
        seconds = time.perf_counter() - start
        if report.exists():
            suite = ET.parse(report).getroot()
            suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
            total = int(suite.get("tests", 0))
            failed = int(suite.get("failures", 0)) + int(suite.get("errors", 0))
            skipped = int(suite.get("skipped", 0))
            counts = dict(passed=total - failed - skipped, failed=failed, skipped=skipped)
        else:
            counts["failed"] = 1  # no report at all: pytest did not get to run
    if status not in (0, 5) and counts["failed"] == 0:
        counts["failed"] = 1  # a collection error or a time-out without a report entry
    return counts, output, seconds


# ---- workloads: each returns run(n) -> seconds for n images on ``device`` --------


def _images(n, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.integers(0, 256, size=(n,) + IMAGE_SHAPE, dtype=np.uint8)
    y = rng.integers(0, 10, size=n)
    y[:10] = np.arange(10)
    return X, y


def _patch_cnn(device, max_epochs=1):
    from skpatch import PatchCNNClassifier

    return PatchCNNClassifier(
        patch_size=16, module="resnet18", width=64, max_epochs=max_epochs, batch_size=128,
        lr=0.05, device=device, verbose=0, random_state=0,
    )


def _timed(function, device):
    import torch

    start = time.perf_counter()
    function()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - start


def workload_train(device, X, y):
    return lambda n: _timed(lambda: _patch_cnn(device).fit(X[:n], y[:n]), device)


def workload_infer(device, X, y):
    model = _patch_cnn(device).fit(X[:128], y[:128])
    return lambda n: _timed(lambda: model.patch_logits(X[:n]), device)


def workload_embed(device, X, y):
    from skpatch import PatchDictionaryEmbedding

    embedding = PatchDictionaryEmbedding(
        patch_size=6, n_atoms=1024, n_neighbors=256, dictionary="data", encoding="hard",
        pooling=2, n_patches_fit=65536, device=device, random_state=0,
    ).fit(X[:512])
    return lambda n: _timed(lambda: embedding.transform(X[:n]), device)


def workload_bagnet(device, X, y):
    from skpatch import BagNetClassifier

    model = BagNetClassifier(
        17, max_epochs=1, batch_size=32, device=device, verbose=0, random_state=0,
    ).fit(X[:32], y[:32])
    return lambda n: _timed(lambda: model.patch_logits(X[:n]), device)


def images_per_second(make_run, device, X, y, box_s, n_start, n_max, warm_up=True):
    """Images/s of ``make_run``'s workload on ``device`` within ``box_s`` seconds.

    A warm-up run of ``n_start`` images (GPU side), then ``n`` doubles until one
    run fills a quarter of the box, reaches ``n_max``, or the next would not fit.
    Returns ``(images_per_s, n)``; ``(nan, 0)`` when the box ran out first.
    """
    rate, measured = math.nan, 0
    start = time.perf_counter()
    with time_box(box_s):
        run = make_run(device, X, y)
        if warm_up:
            run(n_start)  # lazy imports, cuDNN autotuning, the caching allocator
        n = n_start
        while True:
            seconds = run(n)
            rate, measured = n / seconds, n
            elapsed = time.perf_counter() - start
            if seconds >= box_s / 4 or n * 2 > n_max or elapsed + 2.5 * seconds > box_s:
                break
            n *= 2
    return rate, measured


def measure(workloads, device, box_s, quick):
    X, y = _images(max(MAX_IMAGES.values()))
    # the CPU side starts small and skips the warm-up: it runs after the GPU side,
    # so the imports are done, and a CPU has no autotuning to amortize
    n_start = {"gpu": {"train": 128, "infer": 2, "embed": 16, "bagnet": 8},
               "cpu": {"train": 32, "infer": 1, "embed": 16, "bagnet": 4}}
    results = {}
    makers = {"train": workload_train, "infer": workload_infer, "embed": workload_embed,
              "bagnet": workload_bagnet}
    for name in workloads:
        row = {}
        for side, dev in (("gpu", device), ("cpu", "cpu")):
            part_start = time.perf_counter()
            n_max = MAX_IMAGES[name] // (8 if quick else 1)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                row[f"ips_{side}"], row[f"n_{side}"] = images_per_second(
                    makers[name], dev, X, y, box_s / 2, n_start[side][name], n_max,
                    warm_up=side == "gpu",
                )
            row[f"s_{side}"] = time.perf_counter() - part_start
            if row[f"n_{side}"] == 0:
                print(f"  {name} on {dev}: the {box_s / 2:.0f} s time box ran out before "
                      "a measurement", flush=True)
        row["ratio"] = row["ips_gpu"] / row["ips_cpu"]
        results[name] = row
        print(f"  {name}: GPU {row['ips_gpu']:.1f} img/s, CPU {row['ips_cpu']:.1f} img/s",
              flush=True)
    return results


def print_table(results, gpu_label):
    print()
    print(f"{'workload':<46} {gpu_label + ' img/s':>16} {'CPU img/s':>12} {'ratio':>8}"
          f" {'n GPU/CPU':>12}")
    for name in WORKLOADS:
        row = results.get(name)
        if row is None:
            print(f"{DESCRIPTIONS[name]:<46} {'-':>16} {'-':>12} {'-':>8} {'-':>12}")
            continue
        print(f"{DESCRIPTIONS[name]:<46} {row['ips_gpu']:>16.1f} {row['ips_cpu']:>12.1f}"
              f" {row['ratio']:>8.2f} {str(row['n_gpu']) + '/' + str(row['n_cpu']):>12}")


def result_line(cuda, counts, results, elapsed):
    fields = {"cuda": int(cuda), "tests_passed": counts["passed"],
              "tests_failed": counts["failed"], "tests_skipped": counts["skipped"]}
    for name in WORKLOADS:
        row = results.get(name, {})
        for key in ("ips_gpu", "ips_cpu", "ratio"):
            value = row.get(key, math.nan)
            fields[f"{name}_{key}"] = "nan" if math.isnan(value) else f"{value:.4g}"
    fields["elapsed_s"] = f"{elapsed:.1f}"
    return "RESULT " + " ".join(f"{key}={value}" for key, value in fields.items())


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="shorter boxes: about 4 minutes")
    parser.add_argument("--device", default="cuda",
                        help="device measured against the CPU (default cuda; 'cpu' is a "
                             "dry run of the measurements without a GPU)")
    parser.add_argument("--skip-tests", action="store_true", help="throughput only")
    parser.add_argument("--workloads", default=",".join(WORKLOADS),
                        help=f"comma-separated subset of {','.join(WORKLOADS)}")
    args = parser.parse_args()
    start = time.perf_counter()
    boxes = BOXES["quick" if args.quick else "full"]

    import torch

    cuda = torch.cuda.is_available()
    print(f"torch {torch.__version__}, {os.cpu_count()} CPU cores, "
          f"{torch.get_num_threads()} torch threads")
    if cuda:
        names = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
        print(f"CUDA GPU(s): {names}")
    else:
        print("no CUDA GPU present: torch.cuda.is_available() is False. The GPU tests "
              "skip and no GPU figure is measured.")

    counts = dict(passed=0, failed=0, skipped=0)
    if not args.skip_tests:
        print(f"running pytest -m gpu {' '.join(GPU_TEST_FILES)} (time box {boxes['tests']} s) ...",
              flush=True)
        counts, output, seconds = run_gpu_tests(boxes["tests"])
        print(f"GPU tests: {counts['passed']} passed, {counts['failed']} failed, "
              f"{counts['skipped']} skipped in {seconds:.0f} s")
        if counts["failed"]:
            print(output[-6000:])

    results = {}
    measure_on = args.device if (cuda or not args.device.startswith("cuda")) else None
    if measure_on is None:
        print("throughput: not measured (no CUDA GPU; --device cpu dry-runs the code)")
    else:
        workloads = [w for w in args.workloads.split(",") if w]
        unknown = sorted(set(workloads) - set(WORKLOADS))
        if unknown:
            parser.error(f"unknown workloads {unknown}; choose from {WORKLOADS}")
        print(f"throughput on {measure_on} vs cpu ({boxes['workload']} s per workload) ...",
              flush=True)
        results = measure(workloads, measure_on, boxes["workload"], args.quick)
        label = torch.cuda.get_device_name(0) if measure_on.startswith("cuda") else measure_on
        print_table(results, label[:20])
    print(result_line(cuda, counts, results, time.perf_counter() - start))
    return 1 if counts["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
