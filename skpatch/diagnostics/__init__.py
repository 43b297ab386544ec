"""Training diagnostics of ReLU activation paths (the image-functions paper).

A path is the set of ReLU units that are on for an image. :func:`relu_paths`
records the paths of a probe set of images (packed bits) and
:func:`relu_activations` their activation values; the measures compare two
epochs per layer: each image's own path (:func:`path_similarity`), the units
two images share (:func:`cross_path_similarity`, :func:`path_overlap`,
:func:`neighbour_ranks`), and the early/mid ratio of the cross similarity
(:func:`early_mid_ratio`). :class:`PathMonitor` is a skorch callback that
records them during training.

The measures over pairs are Gram matrices (GEMMs over chunks of units), never
a Python loop over pairs. A cosine with an all-zero vector is NaN.

:func:`patch_covering` is the covering check of the patch-dictionary theory
(Brutzkus et al.): how close held-out patches come to the nearest atom of
dictionaries of growing size, against Gaussian patches of the same
covariance.

References
----------
.. [1] "Image functions in neural networks: a perspective on generalization",
   anonymous authors, under review.
"""

from ._covering import patch_covering
from ._measures import (
    activation_similarity,
    cross_activation_similarity,
    cross_path_similarity,
    early_mid_ratio,
    neighbour_ranks,
    path_overlap,
    path_similarity,
)
from ._monitor import PathMonitor
from ._paths import relu_activations, relu_paths

__all__ = [
    "PathMonitor",
    "activation_similarity",
    "cross_activation_similarity",
    "cross_path_similarity",
    "early_mid_ratio",
    "neighbour_ranks",
    "patch_covering",
    "path_overlap",
    "path_similarity",
    "relu_activations",
    "relu_paths",
]
