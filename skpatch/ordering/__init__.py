"""Reordering each image's patches by information measures (Ghebrechristos & Alaghband).

:class:`PatchOrderer` and :func:`order_patches` / :func:`unorder_patches`
are in ``_orderer.py``; the measures, vectorized over patch pairs, in
``_measures.py``.
"""

from ._measures import (
    joint_entropy,
    kl_divergence,
    l1_distance,
    l2_distance,
    mutual_information,
    patch_entropy,
    patch_variance,
    psnr,
    ssim,
)
from ._orderer import PatchOrderer, order_patches, unorder_patches

__all__ = [
    "PatchOrderer",
    "joint_entropy",
    "kl_divergence",
    "l1_distance",
    "l2_distance",
    "mutual_information",
    "order_patches",
    "patch_entropy",
    "patch_variance",
    "psnr",
    "ssim",
    "unorder_patches",
]
