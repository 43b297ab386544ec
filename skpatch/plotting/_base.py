"""Shared plotting helpers."""


def import_pyplot():
    """Import ``matplotlib.pyplot`` or raise an ImportError naming the extra."""
    try:
        import matplotlib.pyplot as plt
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "skpatch plotting needs matplotlib: pip install 'skpatch[plot]'"
        ) from exc
    return plt


def get_axes(ax=None, **subplots_kwargs):
    """Return ``ax`` or a new Axes on a new figure."""
    if ax is not None:
        return ax
    plt = import_pyplot()
    _, ax = plt.subplots(**subplots_kwargs)
    return ax
