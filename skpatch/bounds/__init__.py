"""The a-priori generalization bound as a function of patch size (Madala et al., eq. 13).

:func:`generalization_bound` (``_formula.py``) computes the bound exactly;
:class:`PatchBoundPredictor` (``_predictor.py``) is the regressor that
calibrates chosen constants to observed errors (``_calibration.py``); the
paper's published patch-size results are in ``_published.py``.
"""

from ._formula import generalization_bound
from ._predictor import FEATURE_NAMES, PatchBoundPredictor

__all__ = ["FEATURE_NAMES", "PatchBoundPredictor", "generalization_bound"]
