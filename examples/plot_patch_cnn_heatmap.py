"""
=====================================================
Class heat maps of a CNN trained on 4x4 patches
=====================================================

Madala, Chandrasekaran and Bunk train a CNN on one random ``T x T`` crop of
each image per step, labelled with the image's label, and classify a test
image by averaging the logits of all its ``T x T`` patches. Placing each
patch's logit for class ``k`` at the patch's centre gives a heat map of where
the network sees evidence for ``k``.

Here a small ResNet learns the 8x8 scikit-learn digits from 4x4 patches only,
then we draw heat maps and measure how much accuracy survives when patches
are blacked out before averaging.
"""

# %%
# Train on 4x4 patches
# --------------------
# Each training step sees one random 4x4 window of each digit (a quarter of
# its pixels). Prediction averages the logits of all 25 windows.
import numpy as np
import torch
from sklearn.model_selection import train_test_split

from skpatch import PatchCNNClassifier, blackout_scores, class_heatmap
from skpatch.datasets import load_digits_images
from skpatch.plotting import plot_blackout, plot_heatmap

torch.set_num_threads(1)  # small networks run fastest on one thread
digits = load_digits_images()
X = digits.images  # uint8 0..255: the classifier scales it to [0, 1]
X_train, X_test, y_train, y_test = train_test_split(
    X, digits.target, test_size=0.3, stratify=digits.target, random_state=0
)
clf = PatchCNNClassifier(
    4, module="resnet10", width=8, max_epochs=12, batch_size=64, lr=0.05,
    augment=None, device="cpu", verbose=0, random_state=0,
)
clf.fit(X_train, y_train)
print(f"patch-averaged test accuracy: {clf.score(X_test, y_test):.3f}")
print(f"whole-image test accuracy:    "
      f"{clf.set_params(inference='image').score(X_test, y_test):.3f}")
clf.set_params(inference="patches")

# %%
# The whole-image score is much lower: the network never saw an 8x8 input
# in training, and its batch-norm statistics and zero-padded borders were
# all learned on 4x4 windows. Patch averaging asks it only what it learned.

# %%
# Heat maps
# ---------
# ``class_heatmap`` pads the image so there is one patch centred on every
# pixel; the border holds the training images' mean (what the network's
# normalization maps to zero; ``pad_value=0.0`` gives a black border).
# Bright pixels are where the 4x4 window looks like the class.
image = X_test[:1]
maps = class_heatmap(clf, image, classes=[0, 3, 8])
fig = plot_heatmap(image[0], maps[0], class_names=["0", "3", "8"])
fig.suptitle(f"digit labelled {y_test[0]}")

# %%
# Patch blackout
# --------------
# Drop a random fraction of the patch logits (or every other one) before
# averaging: the bag-of-patches prediction degrades gracefully.
results = blackout_scores(clf, X_test, y_test, fractions=(0, 0.25, 0.5, 0.75, 0.9),
                          n_repeats=3, random_state=0)
for mode, fraction, acc in zip(results["mode"], results["fraction"], results["accuracy"]):
    print(f"{mode:>9} blackout of {fraction:.2f}: accuracy {acc:.3f}")
ax = plot_blackout(results)
ax.set_title("accuracy when patch logits are dropped")
