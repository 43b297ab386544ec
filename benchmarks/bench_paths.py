"""ReLU path diagnostics: PathMonitor overhead and the image-functions paper's claims, CPU-sized.

(a) Overhead. A ``PatchCNNClassifier`` (ResNet-10, width 16, T = 8) is
trained on 10,000 CIFAR-10 images (JPEG copy) with and without a
``PathMonitor`` of 256 probe training images on every ReLU layer. Reported:
the wall-clock fit times, the monitor's own seconds (``path_monitor_dur`` in
the history), the time of the all-pairs cross path similarity of one epoch
pair, and the bytes the monitor keeps per epoch (two epochs of packed paths,
plus the per-epoch result arrays). Target: at most 10% more training time.

(b) Claims of "Image functions in neural networks" on CIFAR-10 (JPEG copy),
CPU-sized: trained variants (width, learning rate, schedule, patch size T),
each monitored on 128 probe training images at every epoch:

* self similarity below 1 early and rising (Fig. 5);
* cross path similarity imperfect until late (Figs. 1-3);
* Fig. 7: the early/mid ratio of the mean cross path similarity (mean over
  the epochs before the first learning-rate decay over the mean of the
  second stage) against the test error, with Pearson r.

The step-schedule variants decay the learning rate by 10 at two milestone
epochs (skorch ``LRScheduler`` with ``MultiStepLR``); the cosine and constant
variants use the same epochs as stage boundaries. Row ``k`` of the monitor's
cross similarity compares epochs ``k + 1`` and ``k + 2``; the early stage is
the rows whose later epoch is at most the first milestone, the second stage
the rows up to the second milestone. The test error is the classifier's
patch-averaged prediction (every T x T patch at stride 4); the monitor
records the whole-image forward (see PathMonitor's Notes).

Modes
-----
``python benchmarks/bench_paths.py``
    The full CPU run (about 10 minutes on 2 cores): 8 variants on 5,000 images
    for 12 epochs (milestones 6 and 9), 1,000 test images.
``--quick``
    1,000 images for (a), 3 variants on 300 images for 4 epochs (about a minute).

The last line is ``RESULT overhead_fraction=.. ratio_error_r=..``:
the monitor's seconds over the unmonitored fit's seconds, and Pearson r of
ratio against test error across the variants.
"""

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from skpatch import PatchCNNClassifier
from skpatch.datasets import load_cifar10
from skpatch.diagnostics import (
    PathMonitor,
    cross_path_similarity,
    early_mid_ratio,
    relu_paths,
)

CIFAR_ARCHIVE = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar-10-jpeg.tar.gz"

BASE = dict(patch_size=8, module="resnet10", width=16, lr=0.05, schedule="step")
VARIANTS = {
    "base": {},
    "width8": dict(width=8),
    "width32": dict(width=32),
    "lr0.01": dict(lr=0.01),
    "lr0.2": dict(lr=0.2),
    "cosine": dict(schedule="cosine"),
    "constant": dict(schedule="constant"),
    "T12": dict(patch_size=12),
}
CONFIGS = {
    "full": dict(n_overhead=10_000, overhead_epochs=4, n_probe_overhead=256,
                 n_train=5000, n_test=1000, epochs=12, milestones=(6, 9), n_probe=128,
                 variants=list(VARIANTS)),
    "quick": dict(n_overhead=1000, overhead_epochs=1, n_probe_overhead=256,
                  n_train=300, n_test=300, epochs=4, milestones=(2, 3), n_probe=64,
                  variants=["base", "lr0.01", "T12"]),
}


def stratified_subset(y, n, seed):
    """Indices of ``n`` images with balanced classes."""
    rng = np.random.default_rng(seed)
    per_class = [rng.permutation(np.flatnonzero(y == k))[: n // 10] for k in range(10)]
    return rng.permutation(np.concatenate(per_class))


def make_classifier(*, patch_size, module, width, lr, schedule, epochs, milestones,
                    callbacks=None, batch_size=128):
    callbacks = list(callbacks or [])
    if schedule == "step":
        from skorch.callbacks import LRScheduler

        callbacks.append(("step_lr", LRScheduler(policy="MultiStepLR",
                                                 milestones=list(milestones), gamma=0.1)))
    return PatchCNNClassifier(
        patch_size=patch_size, module=module, width=width, lr=lr, max_epochs=epochs,
        batch_size=batch_size, lr_schedule="constant" if schedule == "step" else schedule,
        inference_stride=4, device="cpu", verbose=0, random_state=0,
        callbacks=callbacks or None,
    )


def layer_mean(similarity):
    """Per-row mean over layers of the per-layer NaN-ignoring means: shape (n_rows,)."""
    return np.nanmean(np.stack([np.nanmean(v, axis=1) for v in similarity.values()]), axis=0)


def run_overhead(X, y, cfg):
    idx = stratified_subset(y, cfg["n_overhead"], seed=1)
    X_train, y_train = X[idx], y[idx]
    probe = X_train[: cfg["n_probe_overhead"]]
    settings = dict(BASE, schedule="constant", epochs=cfg["overhead_epochs"], milestones=())
    times = {}
    for name in ("without", "with"):
        callbacks = [("paths", PathMonitor(probe))] if name == "with" else None
        clf = make_classifier(**settings, callbacks=callbacks)
        start = time.perf_counter()
        clf.fit(X_train, y_train)
        times[name] = time.perf_counter() - start
        if name == "with":
            monitored = clf
    monitor = monitored.callbacks_["paths"]
    monitor_seconds = float(np.nansum(monitored.history_[:, "path_monitor_dur"]))
    # the part of an epoch's monitor time that is the probe forward and the bit packing
    forward_seconds = []
    for _ in range(3):
        start = time.perf_counter()
        relu_paths(monitored.module_, monitor._probe, layers=monitor.layers_,
                   batch_size=monitor._forward_batch_size())
        forward_seconds.append(time.perf_counter() - start)
    start = time.perf_counter()
    # the paths of the last two epochs (2 epochs): the all-pairs cross similarity of every layer
    before = monitor.previous_paths_ if monitor.previous_paths_ is not None else monitor.paths_
    cross_path_similarity(before, monitor.paths_)
    cross_seconds = time.perf_counter() - start
    paths_bytes = sum(v.nbytes for v in monitor.paths_.values())
    n_probe, n_layers = len(probe), len(monitor.layers_)
    # per recorded epoch, read from the arrays: self (n float64), cross (m float64),
    # overlap (m int32), ranks (q * n int32) per layer
    kinds = ("self_similarity_", "cross_similarity_", "overlap_", "neighbour_ranks_")
    result_bytes = sum(
        rows.itemsize * int(np.prod(rows.shape[1:]))
        for kind in kinds for rows in getattr(monitor, kind).values()
    )
    return dict(
        n_images=len(idx), epochs=cfg["overhead_epochs"], n_probe=n_probe, n_layers=n_layers,
        fit_without=times["without"], fit_with=times["with"], monitor_seconds=monitor_seconds,
        overhead_fraction=monitor_seconds / times["without"],
        wall_fraction=times["with"] / times["without"] - 1,
        forward_seconds=min(forward_seconds), cross_seconds=cross_seconds,
        paths_bytes=paths_bytes, kept_bytes=2 * paths_bytes,
        result_bytes=result_bytes,
    )


def run_variant(name, X_train, y_train, X_test, y_test, cfg):
    settings = dict(BASE, **VARIANTS[name], epochs=cfg["epochs"], milestones=cfg["milestones"])
    monitor = PathMonitor(X_train[: cfg["n_probe"]])
    clf = make_classifier(**settings, callbacks=[("paths", monitor)])
    start = time.perf_counter()
    clf.fit(X_train, y_train)
    seconds = time.perf_counter() - start
    monitor = clf.callbacks_["paths"]
    test_error = 1.0 - float(np.mean(clf.predict(X_test) == y_test))
    self_mean = layer_mean(monitor.self_similarity_)
    cross_mean = layer_mean(monitor.cross_similarity_)
    first, second = cfg["milestones"]
    # row k compares epochs k + 1 and k + 2: rows 0..first-2 end at most at the first milestone
    ratio = early_mid_ratio(cross_mean, first - 1, second - 1)
    return dict(name=name, seconds=seconds, test_error=test_error, self_mean=self_mean,
                cross_mean=cross_mean, ratio=float(ratio))


def trend(values):
    """Spearman rank correlation of the values with their index."""
    from scipy.stats import spearmanr

    values = np.asarray(values)
    return float(spearmanr(np.arange(len(values)), values)[0]) if len(values) > 2 else np.nan


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a one-minute smoke run")
    args = parser.parse_args()
    cfg = CONFIGS["quick" if args.quick else "full"]
    print(f"torch threads: {torch.get_num_threads()}; config: {cfg}")
    X, y = load_cifar10(CIFAR_ARCHIVE, subset="train", return_X_y=True)
    X_test_all, y_test_all = load_cifar10(CIFAR_ARCHIVE, subset="test", return_X_y=True)

    print("\n(a) overhead: ResNet-10 width 16, T=8, PathMonitor on every ReLU layer")
    oh = run_overhead(X, y, cfg)
    print(f"  images {oh['n_images']}, epochs {oh['epochs']}, probe {oh['n_probe']}, "
          f"ReLU layers {oh['n_layers']}")
    print(f"  fit without monitor    {oh['fit_without']:8.1f} s")
    print(f"  fit with monitor       {oh['fit_with']:8.1f} s  (wall-clock difference "
          f"{100 * oh['wall_fraction']:+.1f}%, noisy on shared cores)")
    print(f"  monitor's own time     {oh['monitor_seconds']:8.2f} s  = "
          f"{100 * oh['overhead_fraction']:.1f}% of the unmonitored fit")
    print(f"  per recorded epoch: {oh['monitor_seconds'] / oh['epochs']:.3f} s, of which the probe "
          f"forward and packing (relu_paths) {oh['forward_seconds']:.3f} s")
    print(f"  all-pairs cross similarity, one epoch pair, all layers: {oh['cross_seconds']:.3f} s")
    print(f"  kept in memory: 2 epochs of packed paths = {oh['kept_bytes']:,} bytes; "
          f"results per epoch {oh['result_bytes']:,} bytes")

    print(f"\n(b) claims: {len(cfg['variants'])} variants, {cfg['n_train']} training images, "
          f"{cfg['epochs']} epochs, milestones {cfg['milestones']}, probe {cfg['n_probe']}")
    train_idx = stratified_subset(y, cfg["n_train"], seed=2)
    test_idx = stratified_subset(y_test_all, cfg["n_test"], seed=3)
    X_train, y_train = X[train_idx], y[train_idx]
    X_test, y_test = X_test_all[test_idx], y_test_all[test_idx]
    results = []
    print(f"  {'variant':9s} {'fit s':>7s} {'test err':>8s} {'ratio':>7s}  "
          "self sim per epoch pair (mean over layers)  |  cross sim")
    for name in cfg["variants"]:
        res = run_variant(name, X_train, y_train, X_test, y_test, cfg)
        results.append(res)
        fmt = lambda v: " ".join(f"{x:.3f}" for x in v)  # noqa: E731
        print(f"  {name:9s} {res['seconds']:7.1f} {res['test_error']:8.3f} {res['ratio']:7.4f}  "
              f"{fmt(res['self_mean'])}  |  {fmt(res['cross_mean'])}", flush=True)

    base = results[0]
    self_first, self_last = base["self_mean"][0], base["self_mean"][-1]
    self_holds = self_first < 0.99 and self_last > self_first
    cross = base["cross_mean"]
    half = max(1, len(cross) // 2)
    cross_holds = bool(np.all(cross[:half] < 0.99)) and cross[-1] > cross[0]
    ratios = np.array([r["ratio"] for r in results])
    errors = np.array([r["test_error"] for r in results])
    from scipy.stats import pearsonr

    r = float(pearsonr(ratios, errors)[0]) if len(results) > 2 else float("nan")
    print("\nclaims (base variant for the first two):")
    print(f"  self similarity below 1 early and rising: first {self_first:.3f}, last "
          f"{self_last:.3f}, trend (Spearman) {trend(base['self_mean']):+.2f} -> "
          f"{'holds' if self_holds else 'does not hold'}")
    print(f"  cross similarity imperfect until late: first half of epoch pairs max "
          f"{cross[:half].max():.3f} (< 0.99?), first {cross[0]:.3f}, last {cross[-1]:.3f} -> "
          f"{'holds' if cross_holds else 'does not hold'}")
    print(f"  Fig. 7 ratio vs test error over {len(results)} variants: Pearson r = {r:+.3f} "
          f"({'|r| >= 0.5' if abs(r) >= 0.5 else '|r| < 0.5: no clear linear relation'})")
    print(f"RESULT overhead_fraction={oh['overhead_fraction']:.4f} ratio_error_r={r:.4f}")


if __name__ == "__main__":
    main()
