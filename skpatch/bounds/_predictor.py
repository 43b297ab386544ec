"""The a priori generalization bound of CNNs trained on patches.

Madala, Chandrasekaran and Bunk model a CNN as a classifier of ``HT x WT``
patches whose logits are averaged over the image, and bound its error by
their eq. (13). :func:`generalization_bound` evaluates that bound, vectorized
over data set settings; :class:`PatchBoundPredictor` wraps it as a
scikit-learn regressor whose ``fit`` calibrates the constants to observed
errors. Neither torch nor faiss is imported here.
"""

import numbers
import warnings

import numpy as np
from scipy.optimize import minimize_scalar
from sklearn.base import BaseEstimator, RegressorMixin, _fit_context
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils import check_array
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import (
    _check_sample_weight,
    check_is_fitted,
    validate_data,
)

from ..utils._validation import _reset_fitted_attributes
from ._calibration import _least_squares_linear
from ._formula import _ALPHA_RANGE, _CONSTANTS, _bound_flat, _grid_terms, generalization_bound

__all__ = ["PatchBoundPredictor", "generalization_bound"]

# X columns of PatchBoundPredictor, in order; ``stride`` is optional.
FEATURE_NAMES = (
    "n_train",
    "n_classes",
    "height",
    "width",
    "channels",
    "patch_size",
    "stride",
)

def _select_named_columns(X):
    """Reorder a DataFrame holding the named columns; others pass unchanged.

    Columns other than the named ones are an error, not silently dropped.
    """
    columns = getattr(X, "columns", None)
    if columns is None:
        return X
    present = {str(c) for c in columns}
    if not set(FEATURE_NAMES[:6]) <= present:
        return X
    extra = sorted(present - set(FEATURE_NAMES))
    if extra:
        raise ValueError(
            f"X has columns {extra} besides the bound's settings {FEATURE_NAMES}; "
            "select the settings columns first."
        )
    return X[[name for name in FEATURE_NAMES if name in present]]


class PatchBoundPredictor(RegressorMixin, BaseEstimator):
    """Predict a patch-trained CNN's test error from its data set settings.

    Each row of ``X`` is one setting ``(n_train, n_classes, height, width,
    channels, patch_size[, stride])``; :meth:`predict` returns the a priori
    bound of :func:`generalization_bound` (eq. 13 of Madala et al.) for square
    ``patch_size x patch_size`` patches. :meth:`fit` calibrates the constants
    named in ``calibrate`` to observed errors by non-negative least squares
    and keeps the others as given; with ``calibrate=()`` it needs no ``y``
    (``fit(X)``), and the predictor evaluates the bound with the constants
    as given, as :func:`generalization_bound` does.

    The ``stride`` column is optional, in ``fit`` and in :meth:`predict`
    alike and independently: a fitted predictor takes 6- or 7-column rows
    whichever it was fitted on. A row without it uses the ``stride``
    parameter (default 1, every patch position counted), never a stride
    seen in ``fit``.

    Parameters
    ----------
    alpha : float, default=3.0
        Effective-dimension exponent of the mesh norm; the starting value
        when ``'alpha'`` is calibrated.
    c4 : float, default=0.5
        Weight of the label-noise term.
    c6 : float, default=1.0
        Weight of the mesh-norm term.
    stride : float or tuple (h, w), default=1
        ``S`` in ``T_eff`` for rows of ``X`` without a ``stride`` column (6
        columns), in ``fit`` and in ``predict``; a ``stride`` column
        overrides it.
    min_over_smaller : bool, default=True
        Take the minimum of the bound over patch sizes from
        ``min_patch_size`` up to ``patch_size`` (Figure 3 of the paper).
    min_patch_size : int, default=3
        Smallest patch side in that minimum.
    calibrate : tuple of {'alpha', 'c4', 'c6'}, default=('c4', 'c6')
        Constants fitted to the observed errors in :meth:`fit`; ``()`` fits
        nothing and predicts with the constants as given.
    formula : {'paper', 'code'}, default='paper'
        ``'code'`` is the variant in the authors' public code; see
        :func:`generalization_bound`.

    Attributes
    ----------
    alpha_ : float
        ``alpha`` in use after fit.
    c4_ : float
        ``c4`` in use after fit.
    c6_ : float
        ``c6`` in use after fit.
    n_features_in_ : int
        6, or 7 when the ``X`` given to ``fit`` has a ``stride`` column;
        ``predict`` also takes the other of the two layouts.
    feature_names_in_ : ndarray of str
        Column names, when ``X`` is a DataFrame with string column names.

    See Also
    --------
    generalization_bound : The bound as a vectorized function.
    skpatch.datasets.load_patch_size_results : The paper's observed errors.

    Notes
    -----
    ``c4`` and ``c6`` enter the bound linearly, so with
    ``min_over_smaller=False`` their fit is an exact non-negative least
    squares. With the minimum over patch sizes the model is piecewise linear;
    the fit alternates between choosing each row's minimizing patch size and
    solving that least squares, keeping the best constants; when both are
    free it also scans the direction of ``(c4, c6)`` (the bound is
    homogeneous of degree one in them, so each direction has a closed-form
    scale), then polishes locally with bounded least squares. ``alpha`` is
    fitted by a log-spaced grid over [0.01, 100] refined by a bounded scalar
    search, with ``c4`` and ``c6`` solved at each trial value.

    References
    ----------
    .. [1] V. C. Madala, S. Chandrasekaran and J. Bunk, "CNNs Avoid Curse of
       Dimensionality by Learning on Patches", IEEE Open Journal of Signal
       Processing, 2023.

    Examples
    --------
    >>> from skpatch import PatchBoundPredictor
    >>> X = [[50_000, 10, 32, 32, 3, 8], [50_000, 10, 32, 32, 3, 4]]
    >>> model = PatchBoundPredictor(calibrate=()).fit(X)  # the paper's constants
    >>> model.predict(X).round(4)
    array([0.2063, 0.2393])
    >>> model.predict([[50_000, 10, 32, 32, 3, 8, 2]]).round(4)  # with a stride column
    array([0.398])
    """

    _parameter_constraints = {
        "alpha": [Interval(numbers.Real, 0, None, closed="neither")],
        "c4": [Interval(numbers.Real, 0, None, closed="left")],
        "c6": [Interval(numbers.Real, 0, None, closed="left")],
        "stride": [Interval(numbers.Real, 1, None, closed="left"), tuple],
        "min_over_smaller": ["boolean"],
        "min_patch_size": [Interval(numbers.Integral, 1, None, closed="left")],
        "calibrate": [tuple, list],
        "formula": [StrOptions({"paper", "code"})],
    }

    def __init__(
        self,
        *,
        alpha=3.0,
        c4=0.5,
        c6=1.0,
        stride=1,
        min_over_smaller=True,
        min_patch_size=3,
        calibrate=("c4", "c6"),
        formula="paper",
    ):
        self.alpha = alpha
        self.c4 = c4
        self.c6 = c6
        self.stride = stride
        self.min_over_smaller = min_over_smaller
        self.min_patch_size = min_patch_size
        self.calibrate = calibrate
        self.formula = formula

    def _check_params(self):
        unknown = [name for name in self.calibrate if name not in _CONSTANTS]
        if unknown:
            raise ValueError(
                f"calibrate must name constants among {_CONSTANTS}, got {unknown!r}."
            )
        if isinstance(self.stride, tuple):
            if len(self.stride) != 2 or not all(
                isinstance(s, numbers.Real) and s >= 1 for s in self.stride
            ):
                raise ValueError(
                    f"stride must be a number >= 1 or a pair (h, w) of numbers "
                    f">= 1, got {self.stride!r}."
                )
            return tuple(float(s) for s in self.stride)
        return float(self.stride), float(self.stride)

    def _validate_X(self, X, y="no_validation", sample_weight=None, *, reset):
        X = _select_named_columns(X)
        if not reset and self._is_other_layout(X):
            X = self._validate_other_layout(X)
        elif isinstance(y, str) and y == "no_validation":
            X = validate_data(self, X, reset=reset, dtype=np.float64)
        else:
            X, y = validate_data(self, X, y, reset=reset, dtype=np.float64, y_numeric=True)
            sample_weight = _check_sample_weight(
                sample_weight, X, dtype=np.float64, ensure_non_negative=True
            )
        # a negative count or size is the commonest domain error: say so first
        if np.any(X < 0):
            raise ValueError(
                f"Negative values in data passed to {type(self).__name__}: every "
                f"column of X {FEATURE_NAMES} is a positive count or size."
            )
        if X.shape[1] not in (6, 7):
            raise ValueError(
                f"X must have 6 columns {FEATURE_NAMES[:6]} or 7 with 'stride', "
                f"got n_features = {X.shape[1]}."
            )
        return X, y, sample_weight

    def _is_other_layout(self, X):
        """Whether ``X`` is the 6- or 7-column layout that ``fit`` did not see."""
        try:
            shape = np.shape(X)
        except ValueError:  # ragged nested lists: validate_data reports them
            return False
        return (
            len(shape) == 2
            and shape[1] in (6, 7)
            and shape[1] != getattr(self, "n_features_in_", shape[1])
        )

    def _validate_other_layout(self, X):
        """``validate_data(reset=False)`` for rows with or without the stride column."""
        columns = getattr(X, "columns", None)
        names = None
        if columns is not None and all(isinstance(c, str) for c in columns):
            names = [str(c) for c in columns]
        fitted = getattr(self, "feature_names_in_", None)
        name = type(self).__name__
        if names is not None and fitted is not None:
            # _select_named_columns has put named settings in FEATURE_NAMES order
            if names != list(FEATURE_NAMES[: len(names)]):
                raise ValueError(
                    f"X has columns {names}, but {name} was fitted on the "
                    f"settings columns {list(fitted)}; expected "
                    f"{list(FEATURE_NAMES[:6])}, with or without 'stride'."
                )
        elif names is not None:
            warnings.warn(
                f"X has feature names, but {name} was fitted without feature names",
                UserWarning,
            )
        elif fitted is not None:
            warnings.warn(
                f"X does not have valid feature names, but {name} was fitted with "
                "feature names",
                UserWarning,
            )
        return check_array(X, dtype=np.float64, input_name="X")

    def _settings(self, X, stride_hw):
        """Check X's columns against the model's domain and name the columns."""
        columns = dict(zip(FEATURE_NAMES, X.T))
        checks = [
            ("n_train", columns["n_train"] > 0, "> 0"),
            ("n_classes", columns["n_classes"] >= 1, ">= 1"),
        ]
        for name in ("height", "width", "channels", "patch_size"):
            values = columns[name]
            checks.append((name, (values >= 1) & (values == np.round(values)),
                           "an integer >= 1"))
        if "stride" in columns:
            checks.append(("stride", columns["stride"] >= 1, ">= 1"))
        patch = columns["patch_size"]
        smaller = np.minimum(columns["height"], columns["width"])
        checks.append(("patch_size", patch <= smaller, "at most min(height, width)"))
        for name, ok, wanted in checks:
            if not np.all(ok):
                bad_rows = np.flatnonzero(~ok)[:5]
                raise ValueError(
                    f"Column {name!r} of X must be {wanted}; rows {bad_rows.tolist()} "
                    f"hold {columns[name][bad_rows].tolist()}."
                )
        stride_h = columns.get("stride", np.full(X.shape[0], stride_hw[0]))
        stride_w = columns.get("stride", np.full(X.shape[0], stride_hw[1]))
        return {
            "n_train": columns["n_train"], "n_classes": columns["n_classes"],
            "height": columns["height"], "width": columns["width"],
            "patch_h": patch, "patch_w": patch, "n_channels": columns["channels"],
            "stride_h": stride_h, "stride_w": stride_w,
        }

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None, sample_weight=None):
        """Calibrate the constants named in ``calibrate`` to observed errors.

        Parameters
        ----------
        X : array-like or DataFrame of shape (n_settings, 6) or (n_settings, 7)
            Rows ``(n_train, n_classes, height, width, channels,
            patch_size[, stride])``; a DataFrame may name these columns in any
            order.
        y : array-like of shape (n_settings,) or None, default=None
            Observed test errors (fractions, e.g. ``1 - accuracy``). Needed
            when ``calibrate`` names a constant; with ``calibrate=()`` it may
            be None (and is only validated when given).
        sample_weight : array-like of shape (n_settings,), default=None
            Weights of the squared residuals.

        Returns
        -------
        self : PatchBoundPredictor
            The fitted predictor.
        """
        _reset_fitted_attributes(self)
        stride_hw = self._check_params()
        calibrate = tuple(self.calibrate)
        if y is None:
            if calibrate:
                raise ValueError(
                    f"{type(self).__name__} requires y to be passed, but the target "
                    f"y is None: calibrate={calibrate!r} fits these constants to "
                    "observed errors y. Pass calibrate=() to evaluate the bound "
                    "with the constants as given (fit(X) then needs no y), or call "
                    "generalization_bound()."
                )
            X, _, _ = self._validate_X(X, reset=True)
            self._settings(X, stride_hw)  # the settings must be in the model's domain
            self.alpha_, self.c4_, self.c6_ = float(self.alpha), float(self.c4), float(self.c6)
            return self
        X, y, sample_weight = self._validate_X(X, y, sample_weight, reset=True)
        settings = self._settings(X, stride_hw)
        sqrt_weight = np.sqrt(sample_weight)

        def solve(alpha):
            mesh, noise = _grid_terms(settings, alpha, self.formula,
                                      self.min_over_smaller, self.min_patch_size)
            return _least_squares_linear(mesh, noise, y, sqrt_weight, calibrate,
                                         float(self.c4), float(self.c6))

        alpha = float(self.alpha)
        if "alpha" in calibrate:
            alpha = self._fit_alpha(solve)
        _, constants = solve(alpha)
        self.alpha_ = alpha
        self.c4_ = constants["c4"]
        self.c6_ = constants["c6"]
        return self

    @staticmethod
    def _fit_alpha(solve):
        """Grid over log(alpha), then a bounded search around the best point."""
        log_grid = np.linspace(*np.log(_ALPHA_RANGE), 41)
        losses = np.array([solve(np.exp(v))[0] for v in log_grid])
        best = int(np.argmin(losses))
        low = log_grid[max(best - 1, 0)]
        high = log_grid[min(best + 1, log_grid.size - 1)]
        result = minimize_scalar(lambda v: solve(np.exp(v))[0], bounds=(low, high),
                                 method="bounded", options={"xatol": 1e-10})
        alpha = float(np.exp(result.x if result.fun <= losses[best] else log_grid[best]))
        if best in (0, log_grid.size - 1):
            warnings.warn(
                f"alpha_={alpha:.3g} lies at the edge of the searched range "
                f"[{_ALPHA_RANGE[0]}, {_ALPHA_RANGE[1]}]: the observed errors do "
                "not pin alpha down; consider keeping it fixed (leave 'alpha' "
                "out of calibrate).",
                ConvergenceWarning,
            )
        return alpha

    def predict(self, X):
        """Return the bound for each setting with the fitted constants.

        Parameters
        ----------
        X : array-like or DataFrame of shape (n_settings, 6) or (n_settings, 7)
            Settings as in :meth:`fit`, with or without the ``stride``
            column whichever ``fit`` saw; rows without it use the ``stride``
            parameter.

        Returns
        -------
        bound : ndarray of shape (n_settings,)
            Predicted generalization error.
        """
        check_is_fitted(self)
        stride_hw = self._check_params()
        X, _, _ = self._validate_X(X, reset=False)
        settings = self._settings(X, stride_hw)
        return _bound_flat(
            settings, alpha=self.alpha_, c4=self.c4_, c6=self.c6_,
            formula=self.formula, min_over_smaller=self.min_over_smaller,
            min_patch_size=self.min_patch_size,
        )

    def score(self, X, y, sample_weight=None):
        """Return the coefficient of determination R^2 of the predicted errors.

        Parameters
        ----------
        X : array-like or DataFrame of shape (n_settings, 6) or (n_settings, 7)
            Settings as in :meth:`fit`.
        y : array-like of shape (n_settings,)
            Observed test errors.
        sample_weight : array-like of shape (n_settings,), default=None
            Weights of the squared residuals.

        Returns
        -------
        score : float
            :func:`sklearn.metrics.r2_score` of ``predict(X)`` against ``y``.
        """
        return super().score(X, y, sample_weight=sample_weight)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.positive_only = True
        # with nothing to calibrate, fit(X) evaluates the bound as given
        tags.target_tags.required = bool(tuple(self.calibrate))
        # a fixed physical model with at most three constants, not a general fit
        tags.regressor_tags.poor_score = True
        return tags
