"""Calibration of the bound's constants c4 and c6 to observed errors.

Private helpers of :class:`skpatch.PatchBoundPredictor`. The bound is
``min_j (c6 * mesh[:, j] + c4 * noise[:, j])`` over candidate patch sizes
``j``: linear in (c4, c6) for a fixed choice of minimizing patch sizes,
piecewise linear overall.
"""

import numpy as np
from scipy.optimize import least_squares, minimize_scalar, nnls

__all__ = []


def _least_squares_linear(mesh, noise, y, sqrt_weight, calibrate, c4, c6, max_iter=100):
    """Fit the linear constants among c4, c6 by non-negative least squares.

    With the minimum over patch sizes the model is piecewise linear: fix which
    patch size attains each row's minimum, solve the non-negative least
    squares, update the choice, and keep the best constants seen.
    """
    constants = {"c4": c4, "c6": c6}
    terms = {"c4": noise, "c6": mesh}
    free = [name for name in ("c4", "c6") if name in calibrate]
    rows = np.arange(y.size)

    def sse(values):
        pred = np.nanmin(values["c6"] * mesh + values["c4"] * noise, axis=1)
        return float(np.sum((sqrt_weight * (pred - y)) ** 2))

    best = (sse(constants), dict(constants))
    if not free:
        return best
    selection = None
    for _ in range(max_iter):
        chosen = np.nanargmin(constants["c6"] * mesh + constants["c4"] * noise, axis=1)
        if selection is not None and np.array_equal(chosen, selection):
            break
        selection = chosen
        fixed = sum(constants[name] * terms[name][rows, selection]
                    for name in ("c4", "c6") if name not in free)
        design = np.column_stack([terms[name][rows, selection] for name in free])
        solution, _ = nnls(sqrt_weight[:, None] * design, sqrt_weight * (y - fixed))
        constants.update(zip(free, (float(v) for v in solution)))
        score = sse(constants)
        if score < best[0]:
            best = (score, dict(constants))
    if len(free) == 2:
        best = min(best, _angular_scan(mesh, noise, y, sqrt_weight), key=lambda b: b[0])
    return _polish(best, mesh, noise, y, sqrt_weight, free)


def _angular_scan(mesh, noise, y, sqrt_weight, n_angles=257):
    """Global fit of (c4, c6) >= 0 by a scan over their direction.

    The bound is homogeneous of degree one in (c4, c6), also after the
    minimum over patch sizes: on each ray ``(c6, c4) = s (cos a, sin a)``
    the best scale ``s`` is a closed form, which leaves a 1-D search in ``a``.
    """
    weighted_y = sqrt_weight * y

    def fit_ray(angle):
        shape = sqrt_weight * np.nanmin(np.cos(angle) * mesh + np.sin(angle) * noise, axis=1)
        norm = float(shape @ shape)
        scale = max(float(shape @ weighted_y) / norm, 0.0) if norm > 0 else 0.0
        return float(np.sum((scale * shape - weighted_y) ** 2)), scale

    angles = np.linspace(0.0, np.pi / 2, n_angles)
    losses = np.array([fit_ray(angle)[0] for angle in angles])
    best = int(np.argmin(losses))
    bracket = (angles[max(best - 1, 0)], angles[min(best + 1, n_angles - 1)])
    refined = minimize_scalar(lambda a: fit_ray(a)[0], bounds=bracket, method="bounded",
                              options={"xatol": 1e-12})
    angle = refined.x if refined.fun < losses[best] else angles[best]
    loss, scale = fit_ray(angle)
    return loss, {"c4": scale * np.sin(angle), "c6": scale * np.cos(angle)}


def _polish(best, mesh, noise, y, sqrt_weight, free):
    """Local non-negative least squares from the best constants found so far."""
    terms = {"c4": noise, "c6": mesh}
    rows = np.arange(y.size)
    start = best[1]

    def with_free(theta):
        return {**start, **dict(zip(free, theta))}

    def residual(theta):
        values = with_free(theta)
        return sqrt_weight * (np.nanmin(values["c6"] * mesh + values["c4"] * noise, axis=1) - y)

    def jacobian(theta):
        values = with_free(theta)
        chosen = np.nanargmin(values["c6"] * mesh + values["c4"] * noise, axis=1)
        return np.column_stack([sqrt_weight * terms[name][rows, chosen] for name in free])

    theta0 = np.array([start[name] for name in free], dtype=np.float64)
    result = least_squares(residual, theta0, jac=jacobian, bounds=(0.0, np.inf),
                           xtol=1e-15, ftol=1e-15, gtol=1e-15)
    score = float(np.sum(residual(result.x) ** 2))
    if score < best[0]:
        return score, with_free(float(v) for v in result.x)
    return best
