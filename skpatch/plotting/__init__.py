"""Plots: heat maps, bound curves, blackout curves (needs the ``plot`` extra).

Every function returns the matplotlib ``Axes`` or ``Figure`` it drew on and
never calls ``plt.show()``. Each topic lives in a private module; the public
names are re-exported here.
"""

__all__ = []
