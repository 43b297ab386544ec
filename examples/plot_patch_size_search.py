"""
=====================================================
Choosing the patch size with a grid search
=====================================================

:class:`~skpatch.PatchCNNClassifier` is a plain scikit-learn classifier, so
the patch size ``T`` is a hyper-parameter like any other: cross-validate it
with :class:`~sklearn.model_selection.GridSearchCV`. Madala et al. find that
on CIFAR-10 accuracy rises with ``T`` up to a bit below the image size; here
we sweep ``T`` on the 8x8 scikit-learn digits with a small network and a
short training.
"""

# %%
# The search
# ----------
import matplotlib.pyplot as plt
import numpy as np
import torch
from sklearn.model_selection import GridSearchCV, StratifiedKFold

from skpatch import PatchCNNClassifier
from skpatch.datasets import load_digits_images

torch.set_num_threads(1)  # small networks run fastest on one thread
digits = load_digits_images()
# uint8 images as they are: the classifier scales them to [0, 1] itself
X, y = digits.images[:600], digits.target[:600]

search = GridSearchCV(
    PatchCNNClassifier(module="resnet10", width=8, max_epochs=6, batch_size=64,
                       lr=0.05, augment=None, device="cpu", verbose=0, random_state=0),
    {"patch_size": [2, 4, 6, 8]},
    cv=StratifiedKFold(3, shuffle=True, random_state=0),
)
search.fit(X, y)
print("best patch size:", search.best_params_["patch_size"])

# %%
# Accuracy against patch size
# ---------------------------
# Tiny patches carry too little of a digit to name it. With this short
# training the largest patches win: each step shows one crop per image, so a
# small ``T`` needs many more epochs to see every window (the paper makes the
# same remark about the epochs patch training needs).
sizes = np.array(search.cv_results_["param_patch_size"], dtype=int)
mean = search.cv_results_["mean_test_score"]
std = search.cv_results_["std_test_score"]
fig, ax = plt.subplots()
ax.errorbar(sizes, mean, yerr=std, marker="o", capsize=3)
ax.set_xlabel("patch size T")
ax.set_ylabel("3-fold CV accuracy (patch-averaged)")
ax.set_title("digits: accuracy by training patch size")
for size, score in zip(sizes, mean):
    print(f"T={size}: {score:.3f}")
