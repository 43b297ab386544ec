"""Record which ReLU units are on for each image: packed paths and activations.

Forward hooks on a module's ``nn.ReLU`` submodules catch every activation of
a batch; a path is the C-order flattened mask ``output > 0`` of one image,
packed 8 units to a byte with :func:`numpy.packbits`.
"""

from numbers import Integral

import numpy as np
import torch
from sklearn.utils import gen_batches
from sklearn.utils._param_validation import Interval, StrOptions, validate_params
from torch import nn

__all__ = ["relu_activations", "relu_paths"]

_COMMON_CONSTRAINTS = {
    "module": [nn.Module],
    "X": ["array-like"],
    "layers": [list, tuple, None],
    "batch_size": [Interval(Integral, 1, None, closed="left")],
    "device": [str, torch.device, None],
}


@validate_params(_COMMON_CONSTRAINTS, prefer_skip_nested_validation=True)
def relu_paths(module, X, *, layers=None, batch_size=256, device=None):
    """Packed on/off masks of the ReLU units of a network, one row per image.

    Parameters
    ----------
    module : torch.nn.Module
        Any network whose activations are ``nn.ReLU`` modules, each called at
        most once per forward (the :mod:`skpatch.nn` networks are).
    X : array-like or torch.Tensor of shape (n, ...)
        Images in the module's input layout, e.g. ``(n, C, H, W)``; cast to
        the dtype of the module's first floating-point parameter (float32
        when it has none).
    layers : list of str, default=None
        Names (from ``module.named_modules()``) of the ``nn.ReLU`` modules to
        record; ``None`` records every ``nn.ReLU`` that the forward calls.
    batch_size : int, default=256
        Images per forward. The result does not depend on it.
    device : str or torch.device, default=None
        Where the batches are sent; ``None`` is the device of the module's
        first parameter (the CPU when it has none). The module is not moved.

    Returns
    -------
    paths : dict of str to ndarray of shape (n, ceil(units / 8)), uint8
        In the order the forward calls the layers: for each layer,
        ``np.packbits(mask, axis=1)`` of the mask ``output > 0`` flattened
        per image in C order (``units`` is the size of one image's output).

    Raises
    ------
    ValueError
        If a name of ``layers`` is not an ``nn.ReLU`` of ``module`` or is never
        called, or if a recorded ReLU is called more than once per forward
        (a path needs one call per module: give each activation its own
        ``nn.ReLU``).

    See Also
    --------
    relu_activations : The activation values instead of the on/off bits.
    path_similarity : Self similarity of the paths of two epochs.

    Notes
    -----
    The forward runs in eval mode without gradients; the hooks are removed
    and every submodule's training mode is restored afterwards, also when
    the forward raises.

    Examples
    --------
    >>> import numpy as np
    >>> import torch
    >>> from torch import nn
    >>> from skpatch.diagnostics import relu_paths
    >>> net = nn.Sequential(nn.Linear(3, 4), nn.ReLU())
    >>> with torch.no_grad():
    ...     _ = net[0].weight.copy_(torch.eye(4, 3)), net[0].bias.zero_()
    >>> paths = relu_paths(net, np.array([[1.0, -1.0, 2.0]]))
    >>> np.unpackbits(paths["1"], axis=1)[:, :4]
    array([[1, 0, 1, 0]], dtype=uint8)
    """
    return _record(module, X, layers, batch_size, device, _pack_mask)


@validate_params(
    {**_COMMON_CONSTRAINTS, "dtype": [StrOptions({"float16", "float32"})]},
    prefer_skip_nested_validation=True,
)
def relu_activations(
    module, X, *, layers=None, batch_size=256, device=None, dtype="float16"
):
    """Output values of the ReLU units of a network, one row per image.

    Parameters
    ----------
    module : torch.nn.Module
        As for :func:`relu_paths`.
    X : array-like or torch.Tensor of shape (n, ...)
        As for :func:`relu_paths`.
    layers : list of str, default=None
        As for :func:`relu_paths`.
    batch_size : int, default=256
        Images per forward.
    device : str or torch.device, default=None
        As for :func:`relu_paths`.
    dtype : {'float16', 'float32'}, default='float16'
        Dtype of the returned values; float16 halves the memory (values
        above 65504 become inf).

    Returns
    -------
    activations : dict of str to ndarray of shape (n, units)
        In forward order: each layer's output flattened per image in C order.

    Raises
    ------
    ValueError
        As for :func:`relu_paths`.

    See Also
    --------
    relu_paths : The packed on/off bits of the same outputs.
    activation_similarity : Self similarity of the activations of two epochs.

    Examples
    --------
    >>> import numpy as np
    >>> from torch import nn
    >>> from skpatch.diagnostics import relu_activations
    >>> net = nn.Sequential(nn.Flatten(), nn.ReLU())
    >>> relu_activations(net, np.array([[[-1.0, 2.5]]]), dtype="float32")["1"]
    array([[0. , 2.5]], dtype=float32)
    """
    np_dtype = np.dtype(dtype)

    def to_values(output):
        return output.to(torch.float32).cpu().numpy().astype(np_dtype, copy=False)

    return _record(module, X, layers, batch_size, device, to_values)


def _pack_mask(output):
    """``np.packbits`` of ``output > 0`` per image (rows: images, C order)."""
    mask = output > 0
    if mask.device.type == "cpu":
        return np.packbits(mask.numpy(), axis=1)
    # pack on the device: an eighth of the bytes to copy back
    return _packbits_torch(mask).cpu().numpy()


def _packbits_torch(mask):
    """``np.packbits(mask, axis=1)`` of a 2-D bool tensor, computed by torch."""
    n_units = mask.shape[1]
    padded = torch.nn.functional.pad(mask.to(torch.uint8), (0, -n_units % 8))
    shifts = torch.arange(7, -1, -1, device=mask.device, dtype=torch.uint8)
    return (padded.view(len(mask), -1, 8) << shifts).sum(dim=2).to(torch.uint8)


def _relu_names(module, layers):
    relus = [name for name, sub in module.named_modules() if isinstance(sub, nn.ReLU)]
    if layers is None:
        return relus
    unknown = [name for name in layers if name not in relus]
    if unknown:
        raise ValueError(
            f"layers holds {unknown}, which are not nn.ReLU modules of the module; "
            f"the nn.ReLU modules are {relus}."
        )
    return list(dict.fromkeys(layers))


def _input_device_dtype(module, device):
    params = list(module.parameters())
    if device is None:
        device = params[0].device if params else torch.device("cpu")
    floats = [p.dtype for p in params if p.is_floating_point()]
    return torch.device(device), (floats[0] if floats else torch.float32)


def _batch_tensor(images, device, dtype):
    if isinstance(images, torch.Tensor):
        return images.detach().to(device=device, dtype=dtype)
    # a copy: torch.from_numpy needs a writable array, and X may be read-only
    array = np.array(images, dtype=torch.empty(0, dtype=dtype).numpy().dtype)
    return torch.from_numpy(array).to(device)


def _record(module, X, layers, batch_size, device, convert):
    """Run ``module`` over ``X`` in batches; ``convert(output (b, units))`` per ReLU."""
    names = _relu_names(module, layers)
    if not isinstance(X, torch.Tensor):
        X = np.asarray(X)
    if len(X) == 0:
        raise ValueError("X holds no images; at least one is needed.")
    device, dtype = _input_device_dtype(module, device)
    n_images = len(X)
    modules = dict(module.named_modules())
    results = {}  # name -> array, filled batch by batch; insertion = forward order
    calls = {}  # name -> calls during the current forward
    state = {"batch": None}

    def make_hook(name):
        def hook(_module, _inputs, output):
            calls[name] = calls.get(name, 0) + 1
            if calls[name] > 1:
                raise ValueError(
                    f"The nn.ReLU {name!r} is called more than once per forward; a path "
                    "needs one call per module: give each activation its own nn.ReLU."
                )
            rows = convert(output.detach().reshape(output.shape[0], -1))
            if name not in results:
                results[name] = np.empty((n_images, rows.shape[1]), dtype=rows.dtype)
            results[name][state["batch"]] = rows

        return hook

    training = {name: sub.training for name, sub in module.named_modules()}
    handles = []
    try:
        handles = [modules[name].register_forward_hook(make_hook(name)) for name in names]
        module.eval()
        with torch.no_grad():
            for batch in gen_batches(n_images, batch_size):
                state["batch"] = batch
                calls.clear()
                module(_batch_tensor(X[batch], device, dtype))
    finally:
        for handle in handles:
            handle.remove()
        for name, sub in module.named_modules():
            sub.training = training[name]
    if layers is not None:
        never = [name for name in names if name not in results]
        if never:
            raise ValueError(f"layers holds {never}, which the forward never calls.")
    return results
