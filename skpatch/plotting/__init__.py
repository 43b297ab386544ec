"""Plots: heat maps, bound curves, blackout curves, ReLU path diagnostics (needs the ``plot`` extra).

Every function returns the matplotlib ``Axes`` or ``Figure`` it drew on and
never calls ``plt.show()``. Each topic lives in a private module; the public
names are re-exported here.
"""

from ._bounds import plot_bound_curves, plot_bound_vs_observed
from ._covering import plot_patch_covering
from ._inspection import plot_blackout, plot_heatmap
from ._paths import (
    plot_neighbour_ranks,
    plot_overlap_vs_distance,
    plot_ratio_vs_error,
    plot_similarity_over_epochs,
)

__all__ = []
__all__ += ["plot_blackout", "plot_heatmap"]
__all__ += ["plot_bound_curves", "plot_bound_vs_observed"]
__all__ += ["plot_patch_covering"]
__all__ += [
    "plot_neighbour_ranks",
    "plot_overlap_vs_distance",
    "plot_ratio_vs_error",
    "plot_similarity_over_epochs",
]
