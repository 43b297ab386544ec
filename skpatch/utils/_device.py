"""The one device rule of every torch- or faiss-backed estimator.

- ``device='auto'`` (the default) runs on CUDA when a GPU is visible, else on
  the CPU; ``'cpu'``, ``'cuda'`` and ``'cuda:N'`` ask for one device, and an
  explicit device that is not there is an error at ``fit``.
- ``fit`` records the device it ran on as ``device_``.
- A fitted model runs where it can: one fitted on a GPU and loaded on a
  machine without that GPU runs on the CPU, with a warning
  (:func:`runtime_device`).

torch is imported inside the functions so that importing this module (and
``import skpatch``) stays free of torch.
"""

import warnings

__all__ = ["check_device_param", "resolve_device", "runtime_device"]

_VALID = ("auto", "cpu", "cuda")


def check_device_param(device):
    """Raise a clear error unless ``device`` is 'auto', 'cpu', 'cuda' or 'cuda:N'."""
    if not isinstance(device, str) or not (
        device in _VALID or (device.startswith("cuda:") and device[5:].isdigit())
    ):
        raise ValueError(
            f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}."
        )
    return device


def _cuda_count():
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _present(device):
    """Whether the torch device string ``device`` exists on this machine."""
    if device == "cpu":
        return True
    n_gpus = _cuda_count()
    if device == "cuda":
        return n_gpus > 0
    return int(device.split(":", 1)[1]) < n_gpus


def resolve_device(device):
    """Return the torch device string that ``fit`` runs on.

    Parameters
    ----------
    device : {'auto', 'cpu', 'cuda'} or 'cuda:N'
        ``'auto'`` picks ``'cuda'`` when a CUDA GPU is visible, else ``'cpu'``.

    Returns
    -------
    device : str

    Raises
    ------
    ValueError
        ``device`` is not a valid string, or names a GPU that is not there.
    """
    check_device_param(device)
    if device == "auto":
        return "cuda" if _cuda_count() else "cpu"
    if not _present(device):
        n_gpus = _cuda_count()
        there = f"{n_gpus} CUDA GPU(s) are visible" if n_gpus else "no CUDA GPU is available"
        raise ValueError(
            f"device={device!r} but {there}; use device='auto' (CUDA when "
            "present, else the CPU) or device='cpu'."
        )
    return device


def runtime_device(fitted_device, owner):
    """Return the device a fitted model runs on now.

    The fitted device when it is present, else ``'cpu'`` with a
    ``UserWarning`` (a model fitted on a GPU, unpickled on a CPU-only machine).

    Parameters
    ----------
    fitted_device : str
        The ``device_`` recorded by ``fit``.
    owner : str
        Named in the warning (the estimator's class name).
    """
    if _present(fitted_device):
        return fitted_device
    warnings.warn(
        f"{owner} was fitted on device {fitted_device!r}, which is not available "
        "here; running on the CPU instead.",
        UserWarning,
        stacklevel=3,
    )
    return "cpu"
