"""
=====================================================
ReLU paths of images during training
=====================================================

The path of an image in a ReLU network is the set of units that are on for
it. "Image functions in neural networks: a perspective on generalization"
argues that each image is passed through its own function, that these paths
keep changing under SGD, and that images share different units with each
other at different times. :class:`~skpatch.diagnostics.PathMonitor` records
the paths of a fixed probe set at the end of every epoch; the plots below
draw the paper's figures for a small ResNet trained on the 8x8 digits.
"""

# %%
# Train with a monitor on 64 probe images
# ---------------------------------------
# The network sees whole 8x8 digits (``patch_size=8``), so what it is
# trained on is the whole-image forward the monitor records. The learning
# rate drops by 10 after epochs 4 and 6 (skorch's ``LRScheduler``), the
# stages Figure 7 compares.
import numpy as np
import torch
from scipy.spatial.distance import pdist
from sklearn.model_selection import train_test_split
from skorch.callbacks import LRScheduler

from skpatch import PatchCNNClassifier
from skpatch.datasets import load_digits_images
from skpatch.diagnostics import PathMonitor, early_mid_ratio
from skpatch.plotting import (
    plot_neighbour_ranks,
    plot_overlap_vs_distance,
    plot_ratio_vs_error,
    plot_similarity_over_epochs,
)

torch.set_num_threads(1)  # small networks run fastest on one thread
X, y = load_digits_images(return_X_y=True)
X_train, X_test, y_train, y_test = train_test_split(
    X, y, test_size=0.3, stratify=y, random_state=0
)
probe = X_train[:64]


def train(lr, width=8):
    clf = PatchCNNClassifier(
        8, module="resnet10", width=width, max_epochs=8, batch_size=64, lr=lr,
        lr_schedule="constant", augment=None, device="cpu",
        verbose=0, random_state=0,
        callbacks=[("paths", PathMonitor(probe)),
                   ("step_lr", LRScheduler(policy="MultiStepLR", milestones=[4, 6],
                                           gamma=0.1))],
    )
    return clf.fit(X_train, y_train)


clf = train(lr=0.05)
monitor = clf.callbacks_["paths"]  # the fitted copy
print("test accuracy:", clf.score(X_test, y_test))
print("recorded epochs:", monitor.epochs_)
print("layers:", monitor.layers_)

# %%
# Self similarity (Figure 5)
# --------------------------
# ``cos(p_i^t, p_i^(t-1))`` for every probe image: below 1 means the image
# now passes through other units than one epoch before. Row ``k`` compares
# epochs ``k + 1`` and ``k + 2``, so the x axis is the later epoch.
layers = [monitor.layers_[1], monitor.layers_[-1]]
later_epochs = monitor.epochs_[1:]
plot_similarity_over_epochs({k: monitor.self_similarity_[k] for k in layers},
                            epochs=later_epochs)

# %%
# Cross path similarity (Figures 1-3)
# -----------------------------------
# ``cos(p_i^t * p_j^t, p_i^(t-1) * p_j^(t-1))`` for all 2,016 pairs: does
# image ``i`` still share the same units with image ``j``? NaN (left out of
# the quantiles) where two images share no unit.
plot_similarity_over_epochs({k: monitor.cross_similarity_[k] for k in layers},
                            epochs=later_epochs)

# %%
# Path overlap against input distance (Figure 4)
# ----------------------------------------------
# The number of units two images share at the last epoch, against their
# pixel distance; ``pdist`` lists the pairs in the monitor's order (i < j).
distance = pdist(probe.reshape(len(probe), -1).astype(np.float64))
plot_overlap_vs_distance({k: monitor.overlap_[k][-1] for k in layers}, distance)

# %%
# Nearest probe images by overlap (Figure 6)
# ------------------------------------------
# The rank of the six nearest probe images of the first query, over epochs:
# unlike k-nearest neighbours on fixed data, the neighbours change.
plot_neighbour_ranks(monitor.neighbour_ranks_[layers[0]], query=0,
                     epochs=monitor.epochs_)

# %%
# Early/mid ratio against test error (Figure 7)
# ---------------------------------------------
# The paper relates the ratio of the mean cross path similarity before the
# first decay to its mean in the second stage with the test error, across
# models. Three more learning rates give four models here: far too few to
# judge a correlation, this only shows the computation.
models = {0.05: clf, **{lr: train(lr) for lr in (0.01, 0.1, 0.2)}}
ratios, errors = [], []
for lr, model in models.items():
    cross = model.callbacks_["paths"].cross_similarity_
    per_epoch = np.nanmean([np.nanmean(v, axis=1) for v in cross.values()], axis=0)
    # rows 0-2 end at epochs 2-4 (before the first decay), rows 3-4 at epochs 5-6
    ratios.append(early_mid_ratio(per_epoch, 3, 5))
    errors.append(1 - model.score(X_test, y_test))
plot_ratio_vs_error(ratios, errors, labels=[f"lr={lr:g}" for lr in models])
