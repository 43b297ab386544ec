"""
Patches of an image, and the image rebuilt from them
=====================================================

:class:`skpatch.PatchExtractor` cuts every image into its grid of patches
(one row per image, so ``y`` stays aligned), and ``inverse_transform`` rebuilds
the image by averaging overlapping patches. Here on a digit from
scikit-learn's bundled data set.
"""

import matplotlib.pyplot as plt
import numpy as np

from skpatch import PatchExtractor
from skpatch.datasets import load_digits_images

images, target = load_digits_images(return_X_y=True)
digit = images[:1]

extractor = PatchExtractor(patch_size=4, stride=2).fit(digit)
grid = extractor.transform(digit)
print("patch grid shape (n, gh, gw, ph, pw, C):", grid.shape)

rebuilt = extractor.inverse_transform(grid)
print("max reconstruction error:", np.abs(rebuilt - digit).max())

gh, gw = extractor.patch_grid_shape_
fig = plt.figure(figsize=(8, 3.5))
ax = fig.add_subplot(1, 3, 1)
ax.imshow(digit[0], cmap="gray_r")
ax.set_title(f"digit {target[0]} (8x8)")
ax.axis("off")
sub = fig.add_gridspec(gh, gw, left=0.37, right=0.63, wspace=0.1, hspace=0.1)
for i in range(gh):
    for j in range(gw):
        patch_ax = fig.add_subplot(sub[i, j])
        patch_ax.imshow(grid[0, i, j, :, :, 0], cmap="gray_r", vmin=0, vmax=255)
        patch_ax.axis("off")
ax = fig.add_subplot(1, 3, 3)
ax.imshow(rebuilt[0], cmap="gray_r")
ax.set_title("rebuilt from the patches")
ax.axis("off")
fig.suptitle("4x4 patches at stride 2")
plt.show()
