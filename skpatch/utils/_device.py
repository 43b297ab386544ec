"""Device selection shared by the torch and faiss backed estimators.

torch is imported inside the functions so that importing this module (and
``import skpatch``) stays free of torch.
"""

__all__ = ["resolve_device", "check_device_param"]

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


def resolve_device(device):
    """Return the torch device string to use.

    Parameters
    ----------
    device : {'auto', 'cpu', 'cuda'} or str
        ``'auto'`` picks ``'cuda'`` when a CUDA GPU is visible, else ``'cpu'``.
        Asking for CUDA on a machine without one is an error.

    Returns
    -------
    device : str
    """
    import torch

    check_device_param(device)
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(
            f"device={device!r} but no CUDA GPU is available; use device='auto' "
            "or 'cpu'."
        )
    return device
