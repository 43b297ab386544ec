"""
Patch ordering: an image before and after, for several measures
===============================================================

:class:`~skpatch.PatchOrderer` cuts each image into non-overlapping patches
and rebuilds it with the patches in a new order (the POR algorithm of
Ghebrechristos & Alaghband). Similarity measures chain greedily from the
top-left patch, each next patch being the remaining one most similar to the
last; standalone measures sort patches by their own score.
"""

# %%
import matplotlib.pyplot as plt
import numpy as np
from sklearn.datasets import load_sample_image

from skpatch.ordering import order_patches, unorder_patches

# a 128x128 crop of a sample photo shipped with scikit-learn
image = load_sample_image("china.jpg")[100:356:2, 150:406:2]
images = image[np.newaxis]

measures = ["mutual_information", "l2", "ssim", "kl_divergence", "entropy"]
fig, axes = plt.subplots(2, 3, figsize=(9, 6.3))
axes = axes.ravel()
axes[0].imshow(image)
axes[0].set_title("original")
for ax, measure in zip(axes[1:], measures):
    ordered, permutation = order_patches(images, 16, measure=measure)
    ax.imshow(ordered[0])
    ax.set_title(f"{measure}, 16x16 patches", fontsize=9)
    # the permutation undoes the ordering exactly
    assert np.array_equal(unorder_patches(ordered, permutation, 16), images)
for ax in axes:
    ax.axis("off")
fig.tight_layout()

# %%
# Smaller patches, and the chain's direction
# ------------------------------------------
# ``order='dissimilar'`` puts the *least* similar remaining patch next (the
# paper's summary states this variant, its worked example the other).
fig, axes = plt.subplots(1, 3, figsize=(9, 3.3))
for ax, (size, order) in zip(axes, [(8, "similar"), (8, "dissimilar"), (4, "similar")]):
    ordered, _ = order_patches(images, size, measure="mutual_information", order=order)
    ax.imshow(ordered[0])
    ax.set_title(f"MI, {size}x{size}, order='{order}'", fontsize=9)
    ax.axis("off")
fig.tight_layout()
