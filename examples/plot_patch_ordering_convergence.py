"""
Does patch ordering speed up training? (the paper's convergence claim)
======================================================================

Ghebrechristos & Alaghband report that a CNN trained on images whose 4x4
patches were reordered by mutual information (MI) between neighbours reaches
the accuracy of the unmodified data in a quarter to a third of the training
iterations. Here a small CNN is trained three times with the same seed,
initial weights, batch order and schedule: on unmodified images, on
MI-ordered images and on L2-ordered images (test images get the same
transform). We plot test accuracy against training steps.

The data are a class-balanced subset of the CIFAR-10 JPEG copy in
``../shared/data`` when present, else scikit-learn's 8x8 digits (with 2x2
patches). This is a one-minute CPU run; ``benchmarks/bench_ordering_convergence.py``
runs a longer version with several seeds.
"""

# %%
# Data and ordering
# -----------------
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
from torch import nn

from skpatch import PatchOrderer
from skpatch.datasets import load_cifar10, load_digits_images

SEED = 0
# the shared data folder, seen from the repository root or from examples/
candidates = [Path("../shared/data"), Path("../../shared/data")]
archive = next(
    (p / "cifar-10-jpeg.tar.gz" for p in candidates if (p / "cifar-10-jpeg.tar.gz").exists()),
    None,
)


def balanced_subset(images, target, per_class, rng):
    index = np.concatenate(
        [rng.permutation(np.flatnonzero(target == k))[:per_class] for k in np.unique(target)]
    )
    index = rng.permutation(index)
    return images[index], target[index]


rng = np.random.default_rng(SEED)
if archive is not None:
    X_train, y_train = load_cifar10(archive, subset="train", return_X_y=True)
    X_test, y_test = load_cifar10(archive, subset="test", return_X_y=True)
    X_train, y_train = balanced_subset(X_train, y_train, 400, rng)
    X_test, y_test = balanced_subset(X_test, y_test, 50, rng)
    patch_size, source = 4, "CIFAR-10 (JPEG copy), 4,000 train / 500 test"
else:
    images, target = load_digits_images(return_X_y=True)
    X_train, y_train = images[:1200], target[:1200]
    X_test, y_test = images[1200:], target[1200:]
    patch_size, source = 2, "digits, 1,200 train / 597 test"

variants = {
    "unmodified": None,
    "MI-ordered": PatchOrderer(patch_size, measure="mutual_information"),
    "L2-ordered": PatchOrderer(patch_size, measure="l2"),
}
datasets = {}
for name, orderer in variants.items():
    train, test = X_train, X_test
    if orderer is not None:
        train = orderer.fit_transform(X_train)
        test = orderer.transform(X_test)
    datasets[name] = (train, test)

# %%
# Before and after: one training image per variant
fig, axes = plt.subplots(1, 3, figsize=(6, 2.2))
for ax, (name, (train, _)) in zip(axes, datasets.items()):
    ax.imshow(train[0], cmap="gray")
    ax.set_title(name, fontsize=9)
    ax.axis("off")


# %%
# Training: same seed, same initial weights, same batches
# -------------------------------------------------------
def to_tensor(images):
    images = images[..., None] if images.ndim == 3 else images
    return torch.from_numpy(images.astype(np.float32) / 255.0).permute(0, 3, 1, 2)


def make_net(channels, size, n_classes):
    return nn.Sequential(
        nn.Conv2d(channels, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * (size // 4) ** 2, n_classes),
    )


def train(train_images, train_target, test_images, test_target, n_steps=300, batch=32, every=25):
    generator = torch.Generator().manual_seed(SEED)
    x, y = to_tensor(train_images), torch.as_tensor(train_target)
    xt, yt = to_tensor(test_images), torch.as_tensor(test_target)
    torch.manual_seed(SEED)  # example script: identical initial weights per variant
    net = make_net(x.shape[1], x.shape[2], int(y.max()) + 1)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    steps, accuracy = [], []
    order = torch.randperm(len(x), generator=generator)
    position = 0
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
            steps.append(step)
    return np.array(steps), np.array(accuracy)


torch.set_num_threads(1)  # tiny convolutions: threads cost more than they give
curves = {
    name: train(train_x, y_train, test_x, y_test) for name, (train_x, test_x) in datasets.items()
}

# %%
# Test accuracy against training steps
# ------------------------------------
fig, ax = plt.subplots(figsize=(6, 4))
for name, (steps, accuracy) in curves.items():
    ax.plot(steps, accuracy, label=name)
ax.set_xlabel("training step (batch of 32)")
ax.set_ylabel("test accuracy")
ax.set_title(source, fontsize=9)
ax.legend()

target_accuracy = curves["unmodified"][1][-1]
for name, (steps, accuracy) in curves.items():
    reached = steps[accuracy >= target_accuracy]
    when = f"at step {reached[0]}" if reached.size else "never"
    print(
        f"{name:>11}: final accuracy {accuracy[-1]:.3f}; reaches the unmodified "
        f"final accuracy ({target_accuracy:.3f}) {when} (of {steps[-1]} steps)"
    )

# %%
# In this run the ordered images do not train faster than the unmodified
# ones; see the user guide for the longer, multi-seed measurement.
