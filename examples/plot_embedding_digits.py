"""
===========================================================
Patch dictionary embeddings of handwritten digits
===========================================================

A :class:`~skpatch.PatchDictionaryEmbedding` whitens the 3x3 patches of
scikit-learn's 8x8 digits, clusters them into a dictionary of atoms with
faiss k-means, and encodes each patch by its nearest atoms; the codes are
averaged over a 2x2 grid of regions and fed to a logistic regression. We
compare the three encodings (``'hard'``, ``'triangle'``, ``'full'``), with
and without the negated patch (``both_signs``), against the raw pixels, and
show the atoms.

Runs in well under a minute on two CPU cores.
"""

# %%
# Data and the models to compare
# ------------------------------
import pickle

import matplotlib.pyplot as plt
import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler

from skpatch import PatchDictionaryEmbedding
from skpatch.datasets import load_digits_images

images, target = load_digits_images(return_X_y=True)
X_train, X_test, y_train, y_test = train_test_split(
    images, target, test_size=0.5, stratify=target, random_state=0
)

common = dict(patch_size=3, n_atoms=64, pooling=2, random_state=0)
embeddings = {
    "hard, k=16": PatchDictionaryEmbedding(n_neighbors=16, **common),
    "hard, k=16, both signs": PatchDictionaryEmbedding(
        n_neighbors=16, both_signs=True, **common
    ),
    "triangle, all atoms": PatchDictionaryEmbedding(
        encoding="triangle", n_neighbors=1.0, **common
    ),
    "full, k=16, 4 comps": PatchDictionaryEmbedding(
        encoding="full", n_neighbors=16, n_full_components=4, **common
    ),
}

# %%
# Fit each pipeline and score it on the held-out half
# ---------------------------------------------------
# The baseline is a linear model on the 64 raw pixels of each image, turned
# into one row by a function in a
# :class:`~sklearn.preprocessing.FunctionTransformer`. A function defined at
# module level pickles with the pipeline (a lambda would not); pickle stores it
# by name, so wherever a saved model is loaded the function must be importable
# from the same module.
def images_to_rows(images):
    """(n, H, W) images as (n, H * W) rows of pixels."""
    return images.reshape(len(images), -1)


raw = make_pipeline(
    FunctionTransformer(images_to_rows),
    StandardScaler(),
    LogisticRegression(C=0.05, max_iter=1000),
)
scores = {"raw pixels": raw.fit(X_train, y_train).score(X_test, y_test)}
assert pickle.loads(pickle.dumps(raw)).score(X_test, y_test) == scores["raw pixels"]
for name, embedding in embeddings.items():
    model = make_pipeline(
        embedding, StandardScaler(), LogisticRegression(C=0.01, max_iter=1000)
    )
    scores[name] = model.fit(X_train, y_train).score(X_test, y_test)
for name, score in scores.items():
    print(f"{name:<24} test accuracy {score:.4f}")

# %%
# Accuracy per embedding, and the dictionary
# ------------------------------------------
# The atoms live in the whitened space; undoing the whitening (a
# pseudo-inverse of ``whitening_``) and adding back ``mean_`` shows them as
# pixel patches.
fig, (ax_bar, ax_atoms) = plt.subplots(1, 2, figsize=(11, 4))
names = list(scores)
ax_bar.barh(names, [scores[n] for n in names], color="tab:blue")
ax_bar.set_xlim(min(scores.values()) - 0.02, 1.0)
ax_bar.set_xlabel("test accuracy")
ax_bar.invert_yaxis()

emb = embeddings["hard, k=16"]
unwhitened = emb.atoms_ @ np.linalg.pinv(emb.whitening_) + emb.mean_
# an 8x8 grid of the 3x3 atoms with a blank pixel between neighbours, so
# that each atom reads as a tile of its own
atoms = np.pad(unwhitened.reshape(64, 3, 3), ((0, 0), (0, 1), (0, 1)),
               constant_values=np.nan)
tiles = atoms.reshape(8, 8, 4, 4).transpose(0, 2, 1, 3).reshape(32, 32)[:-1, :-1]
ax_atoms.imshow(tiles, cmap="gray")  # NaN gaps are left blank
ax_atoms.set_title("the 64 k-means atoms (3x3 patches, ink light)")
ax_atoms.axis("off")
fig.tight_layout()
plt.show()
