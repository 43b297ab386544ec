"""PatchDictionaryClassifier on CIFAR-10 (JPEG copy): the published heads and the deep model.

The head of Thiry et al. (2021) and Brutzkus et al. (2022) trained by SGD on a
frozen patch dictionary (average pooling, BatchNorm, a 1x1 bottleneck, a
linear layer; random crops and flips), and the same run layer by layer
(``depth``). Every run fits its dictionaries, trains, and scores all its test
images; the wall time of the whole run and the training images per second
(images x epochs / training seconds) are reported beside the published figure.

Modes
-----
``python benchmarks/bench_patch_heads.py``
    CPU, 2 cores, about 20 minutes in all: the single-layer model (about 6
    minutes) and the 2-layer model (about 12) on the same cut-down setting
    (CPU_RUNS: 256 atoms instead of 2048, 12,000 stratified training images,
    4 epochs per layer with a one-cycle schedule instead of 80 with steps),
    scored on a stratified 2,000 of the test images. ``--runs
    cpu_single_20min`` gives one layer the whole budget (24,000 images, 6
    epochs, about 17 minutes).
``--quick``
    Every model shape of the ``--gpu`` runs (Thiry, Brutzkus hard and full,
    depth 4) on 500 training images, 1 epoch, 32 atoms, on the CPU: a dry
    run of the script (a few minutes).
``--gpu``
    The published settings on all 50,000 / 10,000 images: Thiry et al.'s
    Q = 2048 model (their k-NN run: 2048 data atoms, k = 0.4 Q, both signs,
    5/3 pooling, bottleneck 128, 80 epochs), Brutzkus et al.'s Phi_hard and
    Phi_full heads (4/4 pooling, bottleneck 32), and the deep model at depth
    2, 3 and 4. ``--runs`` picks a subset, ``--epochs`` shortens them.

The last line is ``RESULT <run>=<accuracy %> ... <run>_minutes=<x> ...``
for every run made.
"""

import argparse
import time
from pathlib import Path

import numpy as np
import torch

CIFAR_ARCHIVE = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar-10-jpeg.tar.gz"

# published CIFAR-10 test accuracies (official files), percent
PUBLISHED = {
    "thiry_q2048": (82.3, "Thiry et al. 2021, Q=2048"),
    "brutzkus_hard": (78.80, "Brutzkus et al. 2022, Phi_hard"),
    "brutzkus_full": (81.23, "Brutzkus et al. 2022, Phi_full"),
}

THIRY = dict(patch_size=6, n_atoms=2048, n_neighbors=0.4, dictionary="data", encoding="hard",
             both_signs="raw", pooling=(5, 3), bottleneck=128, max_epochs=80, batch_size=128,
             lr=3e-3, momentum=0.9, lr_schedule="step", augment=("crop", "flip"))
# the user guide's table (docs/user_guide/patch_heads.rst); optimizer and schedule as Thiry's
BRUTZKUS = dict(THIRY, n_atoms=1024, dictionary="kmeans", n_neighbors=256,
                whiten_form="outside_sqrt", both_signs=False, pooling=(4, 4), bottleneck=32)


def _deep(depth, n_atoms):
    """Layers 2..depth on the 9 x 9 map of layer 1 (5/3 pooling of the 27 x 27 codes).

    Layer 2: 3x3 patches (7 x 7 codes), windows of 2 at stride 1 (6 x 6);
    layers 3 and 4: 3x3 patches, no pooling (4 x 4, then 2 x 2).
    """
    upper = [dict(patch_size=3, n_atoms=n_atoms, pooling=(2, 1))]
    upper += [dict(patch_size=3, n_atoms=n_atoms, pooling=None)] * 2
    return [{}] + upper[: depth - 1]


GPU_RUNS = {
    "thiry_q2048": THIRY,
    "brutzkus_hard": dict(BRUTZKUS, encoding="hard"),
    "brutzkus_full": dict(BRUTZKUS, encoding="full", full_input="raw"),
    "deep2": dict(THIRY, layers=_deep(2, 1024)),
    "deep3": dict(THIRY, layers=_deep(3, 1024)),
    "deep4": dict(THIRY, layers=_deep(4, 1024)),
}

# the CPU budget: smaller dictionaries, a training subset and few epochs
# (measured here: about 140 training images/s for one layer of 256 atoms on 2 threads)
CPU_COMMON = dict(THIRY, n_atoms=256, n_patches_fit=100000, max_epochs=4, lr=0.02,
                  lr_schedule="onecycle", n_train=12000)
CPU_RUNS = {
    "cpu_single": CPU_COMMON,
    "cpu_deep2": dict(CPU_COMMON, layers=_deep(2, 256)),
    # one layer with the whole 20-minute budget (not in the default run: --runs cpu_single_20min)
    "cpu_single_20min": dict(CPU_COMMON, n_train=24000, max_epochs=6),
}
DEFAULT_CPU_RUNS = ("cpu_single", "cpu_deep2")
# every model shape of the GPU runs, tiny: a dry run of the --gpu settings on the CPU
_TINY = dict(n_atoms=32, n_patches_fit=10000, max_epochs=1, n_train=500, lr_schedule="onecycle")
QUICK_RUNS = {
    "quick_thiry": dict(THIRY, **_TINY),
    "quick_brutzkus_hard": dict(BRUTZKUS, **dict(_TINY, n_neighbors=8), encoding="hard"),
    "quick_brutzkus_full": dict(BRUTZKUS, **dict(_TINY, n_neighbors=8), encoding="full",
                                full_input="raw"),
    "quick_deep4": dict(THIRY, **_TINY, layers=[{}] + [dict(layer, n_atoms=32)
                                                      for layer in _deep(4, 32)[1:]]),
}


def _stratified(y, n, seed=0):
    if n >= len(y):
        return np.arange(len(y))
    rng = np.random.default_rng(seed)
    per_class = n // len(np.unique(y))
    return np.sort(np.concatenate([
        rng.choice(np.flatnonzero(y == c), per_class, replace=False) for c in np.unique(y)
    ]))


def run(name, settings, data, device, seed):
    from skpatch import PatchDictionaryClassifier

    settings = dict(settings)
    n_train = settings.pop("n_train", None)
    n_test = settings.pop("n_test", None)
    X_train, y_train, X_test, y_test = data
    if n_train is not None:
        keep = _stratified(y_train, n_train, seed)
        X_train, y_train = X_train[keep], y_train[keep]
    if n_test is not None:
        keep = _stratified(y_test, n_test, seed)
        X_test, y_test = X_test[keep], y_test[keep]
    clf = PatchDictionaryClassifier(**settings, device=device, random_state=seed, verbose=0)
    start = time.perf_counter()
    clf.fit(X_train, y_train)
    fit_s = time.perf_counter() - start
    train_s = sum(sum(epoch["dur"] for epoch in history) for history in clf.layer_histories_)
    accuracy = 100.0 * clf.score(X_test, y_test)
    total_s = time.perf_counter() - start
    epochs = settings.get("max_epochs", 80) * clf.n_layers_
    ips = len(X_train) * epochs / train_s if train_s > 0 else float("nan")
    published = PUBLISHED.get(name)
    beside = f"  (published {published[0]:.2f}%: {published[1]})" if published else ""
    print(f"{name:14s} {len(X_train):6d} train {len(X_test):6d} test  depth {clf.n_layers_}  "
          f"{accuracy:6.2f}%  fit {fit_s / 60:6.1f} min  all {total_s / 60:6.1f} min  "
          f"{ips:8.0f} train images/s{beside}", flush=True)
    return accuracy, total_s / 60


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="a smoke test (about a minute)")
    mode.add_argument("--gpu", action="store_true", help="the published settings on a GPU")
    parser.add_argument("--runs", default=None, help="comma-separated subset of the runs")
    parser.add_argument("--epochs", type=int, default=None, help="override max_epochs")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--data", default=str(CIFAR_ARCHIVE))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from skpatch.datasets import load_cifar10

    torch.set_num_threads(args.threads)
    runs = GPU_RUNS if args.gpu else QUICK_RUNS if args.quick else CPU_RUNS
    if not (args.gpu or args.quick or args.runs):
        runs = {name: CPU_RUNS[name] for name in DEFAULT_CPU_RUNS}
    if args.runs:
        unknown = set(args.runs.split(",")) - set(runs)
        if unknown:
            parser.error(f"unknown runs {sorted(unknown)}; choose among {sorted(runs)}")
        runs = {name: runs[name] for name in args.runs.split(",")}
    if args.epochs is not None:
        runs = {name: dict(s, max_epochs=args.epochs) for name, s in runs.items()}
    device = "cuda" if args.gpu else "cpu"
    if args.gpu and not torch.cuda.is_available():
        parser.error("--gpu needs a CUDA GPU (torch.cuda.is_available() is False)")
    X_train, y_train = load_cifar10(args.data, subset="train", return_X_y=True)
    X_test, y_test = load_cifar10(args.data, subset="test", return_X_y=True)
    if not args.gpu:  # a stratified 2,000 of the test set (the archive is class-ordered)
        keep = _stratified(y_test, 2000 if not args.quick else 500, args.seed)
        X_test, y_test = X_test[keep], y_test[keep]
    print(f"CIFAR-10 (JPEG copy): {len(X_train)} train / {len(X_test)} test images available, "
          f"device {device}" + (f" ({torch.cuda.get_device_name(0)})" if args.gpu else
                                f", {args.threads} thread(s)"), flush=True)
    results = {}
    for name, settings in runs.items():
        results[name] = run(name, settings, (X_train, y_train, X_test, y_test), device, args.seed)
    items = [f"{name}={acc:.2f}" for name, (acc, _) in results.items()]
    items += [f"{name}_minutes={minutes:.1f}" for name, (_, minutes) in results.items()]
    print("\nRESULT " + " ".join(items))


if __name__ == "__main__":
    main()
