"""Plots: heat maps, bound curves, blackout curves (needs the ``plot`` extra).

Every function returns the matplotlib ``Axes`` or ``Figure`` it drew on and
never calls ``plt.show()``. Each topic lives in a private module; the public
names are re-exported here.
"""

from ._bounds import plot_bound_curves, plot_bound_vs_observed
from ._inspection import plot_blackout, plot_heatmap

__all__ = []
__all__ += ["plot_blackout", "plot_heatmap"]
__all__ += ["plot_bound_curves", "plot_bound_vs_observed"]
