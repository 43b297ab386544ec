"""Convergence with and without patch ordering (issue 4, the paper's claim).

The longer variant of ``examples/plot_patch_ordering_convergence.py``: a small
CNN trained on a class-balanced subset of the CIFAR-10 JPEG copy (digits when
``../shared/data`` is absent) as unmodified, MI-ordered and L2-ordered images
(4x4 patches; test images get the same transform), and MI-ordered with the
least similar patch next (``order='dissimilar'``), with the same seeds,
initial weights, batch order and schedule, over several seeds. Prints the
mean test accuracy at each evaluation and the first step at which each
variant's mean accuracy reaches the unmodified run's final mean accuracy.
The paper claims MI ordering gets there in 1/4 to 1/3 of the steps.

Usage::

    python benchmarks/bench_ordering_convergence.py          # ~6 CPU minutes
    python benchmarks/bench_ordering_convergence.py --quick  # ~1 minute

Ends with ``RESULT baseline_steps=... mi_steps_to_baseline=...
l2_steps_to_baseline=... mi_step_ratio=... unmodified_final_accuracy=...
mi_final_accuracy=... l2_final_accuracy=... mi_least_final_accuracy=...``
(``nan`` where never reached).
"""

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from skpatch import PatchOrderer

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar-10-jpeg.tar.gz"


def balanced_subset(images, target, per_class, rng):
    index = np.concatenate(
        [rng.permutation(np.flatnonzero(target == k))[:per_class] for k in np.unique(target)]
    )
    index = rng.permutation(index)
    return images[index], target[index]


def load(n_train_per_class, n_test_per_class):
    rng = np.random.default_rng(0)
    if SHARED.exists():
        from skpatch.datasets import load_cifar10

        X_train, y_train = load_cifar10(SHARED, subset="train", return_X_y=True)
        X_test, y_test = load_cifar10(SHARED, subset="test", return_X_y=True)
        source = "CIFAR-10 (JPEG copy)"
        patch_size = 4
    else:
        from skpatch.datasets import load_digits_images

        images, target = load_digits_images(return_X_y=True)
        X_train, y_train, X_test, y_test = images[:1200], target[:1200], images[1200:], target[1200:]
        source, patch_size = "digits", 2
    X_train, y_train = balanced_subset(X_train, y_train, n_train_per_class, rng)
    X_test, y_test = balanced_subset(X_test, y_test, n_test_per_class, rng)
    return X_train, y_train, X_test, y_test, source, patch_size


def to_tensor(images):
    images = images[..., None] if images.ndim == 3 else images
    return torch.from_numpy(images.astype(np.float32) / 255.0).permute(0, 3, 1, 2)


def make_net(channels, size, n_classes):
    return nn.Sequential(
        nn.Conv2d(channels, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * (size // 4) ** 2, n_classes),
    )


def train(x, y, xt, yt, seed, n_steps, batch, every):
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # benchmark script: identical initial weights per variant
    net = make_net(x.shape[1], x.shape[2], int(y.max()) + 1)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    accuracy = []
    order, position = torch.randperm(len(x), generator=generator), 0
    for step in range(1, n_steps + 1):
        if position + batch > len(x):
            order, position = torch.randperm(len(x), generator=generator), 0
        index = order[position : position + batch]
        position += batch
        loss = nn.functional.cross_entropy(net(x[index]), y[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % every == 0:
            with torch.no_grad():
                accuracy.append((net(xt).argmax(1) == yt).float().mean().item())
    return np.array(accuracy)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        per_class, per_class_test, seeds, n_steps, every = 200, 50, [0], 200, 50
    else:
        per_class, per_class_test, seeds, n_steps, every = 2000, 100, [0, 1, 2], 2400, 150
    batch = 32
    torch.set_num_threads(1)
    X_train, y_train, X_test, y_test, source, patch_size = load(per_class, per_class_test)
    print(
        f"{source}: {len(X_train)} train / {len(X_test)} test images, {patch_size}x{patch_size} "
        f"patches; CNN conv16-conv32-linear, Adam lr 1e-3, batch {batch}, {n_steps} steps, "
        f"seeds {seeds}; a 2-core CPU shared with concurrent jobs"
    )
    variants = {
        "unmodified": None,
        "MI-ordered": PatchOrderer(patch_size, measure="mutual_information"),
        "L2-ordered": PatchOrderer(patch_size, measure="l2"),
        # the paper's summary asks for minimum MI between neighbours
        "MI-least": PatchOrderer(patch_size, measure="mutual_information", order="dissimilar"),
    }
    curves = {}
    start = time.perf_counter()
    for name, orderer in variants.items():
        train_x, test_x = X_train, X_test
        if orderer is not None:
            train_x, test_x = orderer.fit_transform(X_train), orderer.transform(X_test)
        x, xt = to_tensor(train_x), to_tensor(test_x)
        y, yt = torch.as_tensor(y_train), torch.as_tensor(y_test)
        runs = [train(x, y, xt, yt, seed, n_steps, batch, every) for seed in seeds]
        curves[name] = np.mean(runs, axis=0)
    steps = np.arange(every, n_steps + 1, every)
    print(f"\nmean test accuracy over {len(seeds)} seed(s) ({time.perf_counter() - start:.0f} s)")
    print(f"{'step':>6} " + " ".join(f"{name:>11}" for name in curves))
    for i, step in enumerate(steps):
        print(f"{step:>6} " + " ".join(f"{curves[name][i]:>11.3f}" for name in curves))

    target = curves["unmodified"][-1]
    reached = {}
    for name, accuracy in curves.items():
        hits = steps[accuracy >= target]
        reached[name] = float(hits[0]) if hits.size else float("nan")
        print(f"{name:>11}: reaches {target:.3f} (unmodified final) at step {reached[name]}")
    print(
        f"RESULT baseline_steps={reached['unmodified']:.0f} "
        f"mi_steps_to_baseline={reached['MI-ordered']} "
        f"l2_steps_to_baseline={reached['L2-ordered']} "
        f"mi_step_ratio={reached['MI-ordered'] / reached['unmodified']:.3f} "
        f"unmodified_final_accuracy={curves['unmodified'][-1]:.4f} "
        f"mi_final_accuracy={curves['MI-ordered'][-1]:.4f} "
        f"l2_final_accuracy={curves['L2-ordered'][-1]:.4f} "
        f"mi_least_final_accuracy={curves['MI-least'][-1]:.4f}"
    )


if __name__ == "__main__":
    main()
