"""
=====================================================
BagNet: class evidence of local patches, and blackout
=====================================================

A BagNet (Brendel & Bethge, 2019) is a ResNet-50 whose receptive field is
cut to ``q x q`` pixels: each output location holds the class evidence of one
patch, and the image's logit is the mean of that evidence. Dropping
("blacking out") patches before the mean tests how much the decision
depends on any one of them.

Here a small BagNet-9 learns the scikit-learn digits, enlarged 4x to 32x32
pixels so that each image holds a 3x3 grid of 9x9 patches (a patch sees
about 2x2 of the original digit pixels).
"""

# %%
# Train a small BagNet-9
# ----------------------
# ``width=16`` and one block per stage keep it small (the official
# BagNet-9 has ``width=64`` and ``layers=(3, 4, 6, 3)``).
import numpy as np
import torch
from sklearn.model_selection import train_test_split

from skpatch import BagNetClassifier, blackout_scores, class_heatmap
from skpatch.datasets import load_digits_images
from skpatch.plotting import plot_blackout, plot_heatmap

torch.set_num_threads(1)  # small networks run fastest on one thread
digits = load_digits_images()
X = np.kron(digits.images, np.ones((1, 4, 4), dtype=np.uint8))  # uint8 32x32, scaled to [0, 1] in fit
X_train, X_test, y_train, y_test = train_test_split(
    X, digits.target, test_size=0.3, stratify=digits.target, random_state=0
)
clf = BagNetClassifier(
    9, width=16, layers=(1, 1, 1, 1), max_epochs=10, lr=0.05, augment=None,
    device="cpu", verbose=0, random_state=0,
)
clf.fit(X_train, y_train)
print(f"test accuracy: {clf.score(X_test, y_test):.3f}")
evidence = clf.patch_logits(X_test)
print(f"patch logits: {evidence.shape} (images, classes, grid rows, grid columns)")

# %%
# The prediction is the softmax of the mean evidence over the 3x3 grid.
from scipy.special import softmax

np.testing.assert_allclose(
    clf.predict_proba(X_test[:5]), softmax(evidence[:5].mean(axis=(2, 3)), axis=1), rtol=1e-5
)

# %%
# Heat maps
# ---------
# With a finer stride the same network gives the evidence of the 9x9 patch
# centred on every pixel (one pass per offset of its 8-pixel grid). Patches
# near the edge reach past the image; as the BagNet authors do, the border
# holds what the network's normalization maps to zero (here the training
# images' mean grey). ``style='reference'`` draws the authors' plot: red for
# evidence for the class, blue against, limits at +-the 99th percentile of
# ``|evidence|``.
image = X_test[:1]
maps = class_heatmap(clf, image, classes=[0, 3, 8])
fig = plot_heatmap(image[0], maps[0], class_names=["0", "3", "8"], style="reference")
fig.suptitle(f"digit labelled {y_test[0]}: evidence of each 9x9 patch")

# %%
# Patch blackout
# --------------
# The experiment of the BagNet seed: drop every other patch
# (checkerboard), or a random 25%, 50% or 75% of them, and average the rest.
results = blackout_scores(clf, X_test, y_test, fractions=(0, 0.25, 0.5, 0.75),
                          n_repeats=5, random_state=0)
for mode, fraction, acc, std in zip(results["mode"], results["fraction"],
                                    results["accuracy"], results["accuracy_std"]):
    print(f"{mode:>9} blackout of {fraction:.2f}: accuracy {acc:.3f} +- {std:.3f}")
ax = plot_blackout(results)
ax.set_title("BagNet-9 on digits: accuracy when patches are dropped")
