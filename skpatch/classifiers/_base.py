"""Shared base of the torch patch classifiers (PatchCNNClassifier, BagNetClassifier, PatchDictionaryClassifier).

How a subclass plugs in
-----------------------
A subclass is a plain estimator: it writes its own ``__init__`` listing *all*
its parameters (the base parameters below plus its own, stored untouched),
extends ``_parameter_constraints`` with ``{**BasePatchNetClassifier.
_parameter_constraints, ...}``, and implements or overrides these hooks:

``_build_module(self, n_classes, n_channels, generator)`` (required)
    Return a fresh ``torch.nn.Module`` on the CPU mapping a normalized float
    batch ``(B, n_channels, h, w)`` to logits ``(B, n_classes)``. Draw every
    initial value from ``generator`` (the fit's CPU ``torch.Generator``), for
    example with :func:`skpatch.nn.build_initialized`, never from torch's
    global generator. The base wraps it in :class:`~skpatch.nn.PatchNetModule`
    (per-channel normalization, random crops, flips, autocast) and trains that
    with skorch.
``_check_params_vs_input(self, images)`` (optional, call ``super()``)
    Data-dependent checks on the validated ``(n, H, W, C)`` float training
    images; write private attributes only. The base checks ``augment``.
``_train_crop_size(self)`` (optional)
    ``(h, w)`` of the random crop drawn per image per step, or ``None`` (the
    default) to train on whole images.
``_default_patch_stride(self)`` (optional)
    Stride used by :meth:`patch_logits` when ``stride=None`` (default 1).
``_forward_patch_logits(self, module, x, stride, pads, class_index=None)`` (optional)
    Per-location class evidence of a chunk of *raw* (unnormalized, unpadded)
    images ``x`` of shape ``(b, C, H, W)`` on the device, returned as
    ``(b, K, gh, gw)``, or ``(b, len(class_index), gh, gw)`` for the classes
    ``class_index`` (a tensor of indices on the device) only. ``module`` is the
    fitted :class:`~skpatch.nn.PatchNetModule` in eval mode (``module.normalize``
    and ``module.core`` are available), called under ``torch.no_grad``. The
    default slides a ``self._patch_size`` window (set it in
    ``_check_params_vs_input``) with :func:`~skpatch.nn.sliding_window_logits`,
    feeding every patch to ``module`` (to a CIFAR ResNet's features and the
    selected rows of its ``fc`` when classes are selected). A network that
    already outputs evidence per location (BagNet) overrides this to run once
    per chunk of images.
``_images_per_forward(self, padded_hw, grid_hw)`` (optional)
    Images per inference chunk; the default fits ``self._max_patches()``
    patches. BagNet sizes it from its activation memory instead.
``_uses_patch_inference(self)`` (optional)
    ``True`` (default) when ``predict_proba`` is the softmax of the mean of
    :meth:`patch_logits`; ``False`` to feed whole images through ``module``.

Parameters handled by the base (use these names in the subclass ``__init__``):
``max_epochs, batch_size, optimizer, lr, momentum, weight_decay, lr_schedule,
augment, train_split, device, amp, random_state, verbose, callbacks,
image_shape``. Fitted attributes set by the base: ``classes_``, ``net_`` (the
skorch ``NeuralNetClassifier``), ``module_`` (the trained
:class:`~skpatch.nn.PatchNetModule`, ``net_.module_``), ``callbacks_`` (name ->
callback skorch ran), ``history_``, ``device_``, ``channel_mean_``,
``channel_std_``, ``n_features_in_``, ``image_shape_``. ``fit`` first drops
every attribute of an earlier fit (public ones ending in ``_``), so a refit
keeps nothing stale, and a ``fit`` that raises leaves the estimator unfitted.
Inference reads fitted state only (``module_``, ``image_shape_``, private
attributes written in ``_check_params_vs_input`` such as ``_patch_size``),
never a parameter that shaped the network: ``set_params`` after ``fit``
changes nothing until the next ``fit``.

Divergence: a non-finite training loss (checked per batch from the loss
skorch has already copied to the host, so no extra device sync) or non-finite
weights (checked once per epoch) stop ``fit`` with a ``ValueError`` naming the
epoch and ``lr``.

Sample weights: ``fit(X, y, sample_weight)`` divides the weights by the
largest; equal weights then train the plain skorch net (the mean loss, bit for
bit), unequal ones a ``_WeightedNet`` whose batch loss is
``sum(w_i l_i) / sum(w_i)``. Nothing else (normalization statistics, batches,
crops) sees the weights.

Randomness: ``random_state`` is read once at the top of ``fit``; seeds drawn
from it start one ``torch.Generator`` each for the initial weights, the crops
and flips (on the fit's device), the shuffling and the validation loader.
torch's and numpy's global generators are never read or advanced, so seeded
fits in parallel threads equal the same fits run one after the other.
"""

import contextlib
import copy
import math
import sys
import warnings
from collections.abc import Mapping
from numbers import Integral, Real

import numpy as np
import torch
from scipy.special import log_softmax, softmax
from sklearn.base import BaseEstimator, ClassifierMixin, _fit_context
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import (
    _check_sample_weight,
    check_consistent_length,
    check_is_fitted,
    column_or_1d,
)
from skorch import NeuralNetClassifier
from skorch.callbacks import Callback, LRScheduler
from skorch.utils import to_tensor

from ..nn._patch_net import PatchNetModule, random_crop, sliding_window_logits
from ..utils._dask import is_dask_array, map_row_blocks
from ..utils._device import check_device_param, resolve_device, runtime_device
from ..utils._grid import _resolve_padding, patch_grid_shape
from ..utils._validation import check_size_pair, validate_images

# PatchNetModule, random_crop and sliding_window_logits live in skpatch.nn; the
# names stay importable from here for code written against the old location
__all__ = ["BasePatchNetClassifier", "PatchNetModule", "random_crop", "sliding_window_logits"]

_AUGMENTATIONS = ("flip",)
_OPTIMIZERS = ("sgd", "adam", "adamw")
_LR_SCHEDULES = ("onecycle", "cosine", "constant")


class _NoSingletonBatchSampler(torch.utils.data.Sampler):
    """Mini-batches of ``batch_size`` indices whose last batch never holds one image.

    A one-image remainder is merged into the batch before it (which then holds
    ``batch_size + 1`` images): BatchNorm cannot train on a single image, and
    dropping the remainder would skip data.
    """

    def __init__(self, sampler, batch_size):
        self.sampler = sampler
        self.batch_size = int(batch_size)

    def __iter__(self):
        batch = []
        pending = None
        for index in self.sampler:
            batch.append(int(index))
            if len(batch) == self.batch_size:
                if pending is not None:
                    yield pending
                pending, batch = batch, []
        if pending is not None:
            if len(batch) == 1:
                pending = pending + batch
                batch = []
            yield pending
        if batch:
            yield batch

    def __len__(self):
        n_full, remainder = divmod(len(self.sampler), self.batch_size)
        return n_full + (remainder > 1 or (remainder == 1 and n_full == 0))


class _TrainLoader(torch.utils.data.DataLoader):
    """skorch's training iterator: shuffled batches without a one-image remainder.

    ``generator`` drives the shuffling (and the DataLoader's worker base seed,
    which it would otherwise draw from torch's global generator every epoch).
    """

    def __init__(self, dataset, batch_size=1, shuffle=False, generator=None, **kwargs):
        data = torch.utils.data
        if shuffle:
            sampler = data.RandomSampler(dataset, generator=generator)
        else:
            sampler = data.SequentialSampler(dataset)
        batch_sampler = _NoSingletonBatchSampler(sampler, batch_size)
        super().__init__(dataset, batch_sampler=batch_sampler, generator=generator, **kwargs)


class _OneCycleScheduler(LRScheduler):
    """skorch ``LRScheduler`` running ``OneCycleLR`` per batch over ``epochs``.

    ``steps_per_epoch`` is counted at the start of training from the batches
    of the actual training split, so the schedule ends exactly at the last step.
    """

    def __init__(self, max_lr, epochs, **kwargs):
        super().__init__(
            policy=torch.optim.lr_scheduler.OneCycleLR, step_every="batch",
            max_lr=max_lr, epochs=epochs, steps_per_epoch=None, cycle_momentum=False,
            **kwargs,
        )

    def on_train_begin(self, net, X=None, y=None, **kwargs):
        dataset_train, _ = net.get_split_datasets(X, y)
        self.steps_per_epoch = len(net.get_iterator(dataset_train, training=True))
        super().on_train_begin(net, X=X, y=y, **kwargs)


class _DivergenceCheck(Callback):
    """Stop training with a ``ValueError`` once it diverges.

    The loss of each training batch is read from ``net.history``, where
    skorch has put it as a Python float already (no device sync added); the
    parameters and floating buffers are checked once per epoch, which also
    catches a last step that overflowed the weights while its loss was finite.
    """

    def __init__(self, estimator_name, lr, stage=""):
        self.estimator_name = estimator_name
        self.lr = lr
        self.stage = stage

    def _diverged(self, net, what, batch=None):
        where = f"epoch {len(net.history)} of {net.max_epochs}"
        if batch is not None:
            where += f", batch {batch}"
        if self.stage:
            where += f" ({self.stage})"
        raise ValueError(
            f"{self.estimator_name}: {what} at {where} with lr={self.lr!r}: "
            "training diverged, and the network would predict nan. Pass a lower "
            f"learning rate, e.g. lr={self.lr / 10:g}."
        )

    def on_batch_end(self, net, batch=None, training=None, **kwargs):
        if not training:
            return
        batches = net.history[-1]["batches"]
        loss = batches[-1].get("train_loss")
        if loss is not None and not math.isfinite(loss):
            self._diverged(net, f"the training loss is {loss}", batch=len(batches))

    def on_epoch_end(self, net, **kwargs):
        module = net.module_
        tensors = [
            t for t in (*module.parameters(), *module.buffers()) if t.is_floating_point()
        ]
        # one device sync for all tensors
        if tensors and not bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all()):
            self._diverged(net, "the network's weights became non-finite (inf or nan)")


class _WeightedNet(NeuralNetClassifier):
    """skorch's classifier whose batch loss is the weighted mean of its images' losses.

    ``fit`` takes ``X = {"images": x, "sample_weight": w}`` and a criterion
    with ``reduction='none'``: each batch's loss is ``sum(w_i l_i) / sum(w_i)``,
    so an image of weight 0 adds exactly 0 to the loss and to its gradient,
    whatever its label, and a batch of weights 0 only has a loss of 0.
    """

    def infer(self, x, **fit_params):
        if isinstance(x, Mapping):
            x = x["images"]
        return super().infer(x, **fit_params)

    def get_loss(self, y_pred, y_true, X=None, training=False):
        losses = super().get_loss(y_pred, y_true, X=X, training=training)
        if not isinstance(X, Mapping):
            return losses.mean()
        weights = to_tensor(X["sample_weight"], device=self.device)
        total = weights.sum()
        return (weights * losses).sum() / total.clamp_min(torch.finfo(total.dtype).tiny)


def _fit_sample_weight(sample_weight, images):
    """Validated weights of the training images divided by the largest, or None if all equal.

    The division changes no batch loss (a weighted mean), and makes equal
    weights, whatever their value, exactly the unweighted fit.
    """
    if sample_weight is None:
        return None
    try:
        weights = _check_sample_weight(
            sample_weight, images, dtype=np.float64, ensure_non_negative=True
        )
    except ValueError as exc:
        message = str(exc)
        if "sample_weight" not in message:
            message = f"sample_weight: {message}"
        raise ValueError(message) from None
    weights = weights / weights.max()
    if np.all(weights == 1.0):
        return None
    return weights.astype(np.float32)


def _class_logits(module, class_index):
    """``module`` as a map of raw patches to the logits of ``class_index`` only.

    For a CIFAR ResNet core only the selected rows of its last linear layer
    ``fc`` are applied to the pooled features; for any other core all logits
    are computed and the selected ones kept.
    """
    if class_index is None:
        return module
    from ..nn.resnet import CIFARResNet

    core = module.core
    if not (isinstance(core, CIFARResNet) and isinstance(core.fc, torch.nn.Linear)):
        return lambda x: module(x)[:, class_index]
    weight = core.fc.weight[class_index]
    bias = None if core.fc.bias is None else core.fc.bias[class_index]

    def selected_logits(x):
        x = module.normalize(x)
        if module.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=module.amp):
            features = torch.flatten(core.pool(core.features(x)), 1)
            logits = torch.nn.functional.linear(features, weight, bias)
        return logits.float()

    return selected_logits


def _chunk_starts(estimator, n_items, chunk_size, desc):
    """``range(0, n_items, chunk_size)``; with ``estimator.verbose >= 2`` a tqdm bar on stderr.

    The bar counts images and advances once a chunk is done, like skorch's
    ``ProgressBar``; without tqdm installed the loop stays silent. Below 2,
    inference is silent: ``predict`` and ``score`` run in every fold of a
    cross-validation.
    """
    starts = range(0, n_items, chunk_size)
    if not estimator.verbose >= 2:
        yield from starts
        return
    try:
        from tqdm import tqdm
    except ImportError:
        yield from starts
        return
    with tqdm(total=n_items, desc=desc, unit="img", file=sys.stderr) as bar:
        for start in starts:
            yield start
            bar.update(min(chunk_size, n_items - start))


class BasePatchNetClassifier(ClassifierMixin, BaseEstimator):
    """Base of the torch patch classifiers; see the module docstring for the hooks.

    Not meant to be instantiated: it has no ``__init__`` of its own, so each
    subclass lists its parameters explicitly as scikit-learn requires.
    """

    _parameter_constraints = {
        "max_epochs": [Interval(Integral, 1, None, closed="left")],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "optimizer": [StrOptions(set(_OPTIMIZERS)), type],
        "lr": [Interval(Real, 0, None, closed="neither")],
        "momentum": [Interval(Real, 0, 1, closed="left")],
        "weight_decay": [Interval(Real, 0, None, closed="left")],
        "lr_schedule": [StrOptions(set(_LR_SCHEDULES))],
        "augment": [tuple, list, None],
        "train_split": [None, Interval(Real, 0, 1, closed="neither"), callable],
        "device": [str],
        "amp": [StrOptions({"auto"}), "boolean"],
        "random_state": ["random_state"],
        "verbose": ["verbose"],
        "callbacks": [list, None],
        "image_shape": [tuple, list, None],
    }

    # ---- hooks -----------------------------------------------------------
    def _build_module(self, n_classes, n_channels):
        raise NotImplementedError

    def _check_params_vs_input(self, images):
        check_device_param(self.device)
        augment = () if self.augment is None else tuple(self.augment)
        unknown = [a for a in augment if a not in _AUGMENTATIONS]
        if unknown:
            raise ValueError(
                f"augment must hold entries of {_AUGMENTATIONS}, got {self.augment!r}."
            )
        self._augment = augment

    def _train_crop_size(self):
        return None

    def _default_patch_stride(self):
        return 1

    def _uses_patch_inference(self):
        return True

    def _fit_stage(self):
        """Words placing the training run in a multi-stage fit, e.g. ``'layer 2 of 3'``."""
        return ""

    def _forward_patch_logits(self, module, x, stride, pads, class_index=None):
        return sliding_window_logits(
            _class_logits(module, class_index), x, self._patch_size, stride, pads,
            self._max_patches(),
        )

    def _images_per_forward(self, padded_hw, grid_hw):
        return max(1, self._max_patches() // (grid_hw[0] * grid_hw[1]))

    # ---- fitting ---------------------------------------------------------
    def _validate_targets(self, images, y):
        if y is None:
            raise ValueError(
                f"{type(self).__name__} requires y to be passed, but the target y is None."
            )
        y = column_or_1d(y, warn=True)
        check_consistent_length(images, y)
        check_classification_targets(y)
        classes, y_encoded = np.unique(y, return_inverse=True)
        if len(classes) < 2:
            raise ValueError(
                f"y holds 1 class only ({classes.tolist()[0]!r}); "
                f"{type(self).__name__} needs labels of at least 2 classes."
            )
        return classes, y_encoded.astype(np.int64)

    def _optimizer_spec(self):
        if isinstance(self.optimizer, type):
            return self.optimizer, {"optimizer__weight_decay": self.weight_decay}
        name = self.optimizer
        if name == "sgd":
            return torch.optim.SGD, {
                "optimizer__momentum": self.momentum,
                "optimizer__weight_decay": self.weight_decay,
                "optimizer__nesterov": False,
            }
        cls = torch.optim.Adam if name == "adam" else torch.optim.AdamW
        return cls, {"optimizer__weight_decay": self.weight_decay}

    def _user_callbacks(self):
        """``{name: callback}`` of ``callbacks``, unnamed ones as ``user_<index>`` (as in ``callbacks_``)."""
        return {
            callback[0] if isinstance(callback, tuple) else f"user_{index}": (
                callback[1] if isinstance(callback, tuple) else callback
            )
            for index, callback in enumerate(self.callbacks or [])
        }

    def set_params(self, **params):
        """Set parameters; ``callbacks__<name>__<param>`` sets a parameter of a callback.

        ``<name>`` is the name of a ``(name, callback)`` pair in ``callbacks``
        (``user_<index>`` for an unnamed one), as in skorch, so that a grid
        search can tune a callback.
        """
        routed = {key: value for key, value in params.items() if key.startswith("callbacks__")}
        rest = {key: value for key, value in params.items() if key not in routed}
        if "callbacks" in rest:  # a new list first, then its callbacks' parameters
            super().set_params(callbacks=rest.pop("callbacks"))
        super().set_params(**rest)
        if not routed:  # validation waits for fit, as for every parameter
            return self
        named = self._user_callbacks()
        for key, value in routed.items():
            name, _, param = key[len("callbacks__"):].partition("__")
            if name not in named or not param:
                raise ValueError(
                    f"Invalid parameter {key!r} for {type(self).__name__}: expected "
                    f"callbacks__<name>__<param> with <name> among {sorted(named)}."
                )
            named[name].set_params(**{param: value})
        return self

    def _skorch_callbacks(self):
        from skorch.callbacks import ProgressBar

        callbacks = []
        if self.lr_schedule == "onecycle":
            callbacks.append(("lr_schedule", _OneCycleScheduler(self.lr, self.max_epochs)))
        elif self.lr_schedule == "cosine":
            callbacks.append(
                (
                    "lr_schedule",
                    LRScheduler(
                        policy=torch.optim.lr_scheduler.CosineAnnealingLR,
                        T_max=self.max_epochs,
                    ),
                )
            )
        if self.verbose >= 2:
            callbacks.append(("progress_bar", ProgressBar()))
        for index, callback in enumerate(self.callbacks or []):
            named = isinstance(callback, tuple)
            callbacks.append(callback if named else (f"user_{index}", callback))
        return copy.deepcopy(callbacks)

    def _train_split(self, seed):
        from skorch.dataset import ValidSplit

        if self.train_split is None:
            return None
        if isinstance(self.train_split, Real):
            return ValidSplit(self.train_split, stratified=True, random_state=seed)
        return self.train_split

    def _check_module(self, core, x, mean, std):
        """Fail before training when ``core`` cannot train on these batches.

        A dry forward pass of one training input (eval mode, no gradient, so
        no statistic moves) checks that the network returns one logit per class.
        """
        n_classes = len(self.classes_)
        given = getattr(self, "module", None)
        if isinstance(given, str):
            label = f"module={given!r}"
        else:
            label = f"module ({type(core).__name__})"
        crop = self._train_crop_size() or x.shape[2:]
        sample = torch.as_tensor(x[:1, :, : crop[0], : crop[1]])
        sample = (sample - torch.as_tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)) / (
            torch.as_tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        )
        was_training = core.training
        # BatchNorm layers that train in training mode (a frozen backbone's do not)
        core.train()
        trains_batchnorm = any(
            isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.training
            for m in core.modules()
        )
        core.eval()
        try:
            with torch.no_grad():
                out = core(sample)
        finally:
            core.train(was_training)
        shape = tuple(getattr(out, "shape", ()))
        if len(shape) != 2 or shape[1] != n_classes:
            what = f"{shape[1]} outputs per image" if len(shape) == 2 else f"shape {shape}"
            raise ValueError(
                f"{label} returns {what} for an input of shape "
                f"{tuple(sample.shape)}, but y has {n_classes} classes: module "
                f"must return logits of shape (batch, {n_classes})."
            )
        if self.batch_size == 1 and trains_batchnorm:
            raise ValueError(
                f"batch_size=1 cannot train {label}: its BatchNorm layers need "
                "more than 1 image per batch. Pass batch_size >= 2."
            )

    def _forget_fit(self):
        """Drop every fitted attribute (a public name ending in ``_``) of an earlier fit."""
        for name in [n for n in vars(self) if n.endswith("_") and not n.startswith("_")]:
            delattr(self, name)

    @contextlib.contextmanager
    def _fresh_fit(self):
        """Forget the earlier fit; on an error, forget this one too (no mix of two fits)."""
        self._forget_fit()
        try:
            yield
        except BaseException:
            self._forget_fit()
            raise

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y, sample_weight=None):
        """Train the network on the images ``X`` with labels ``y``.

        Parameters
        ----------
        X : array-like of shape (n, H, W), (n, H, W, C) or (n, H*W*C)
            Training images (2-D rows need ``image_shape``).
        y : array-like of shape (n,)
            Class labels; at least two classes.
        sample_weight : array-like of shape (n,) or float, default=None
            Weights of the images: each batch's loss is the weighted mean of
            its images' losses (see the class Notes). Finite, non-negative,
            not all zero; equal weights train exactly as None.

        Returns
        -------
        self : object
            The fitted estimator.

        Raises
        ------
        ValueError
            If training diverges (a non-finite loss or weight), naming the
            epoch and ``lr``; the estimator is then left unfitted. If
            ``sample_weight`` is negative, non-finite, all zero or not one
            per image.
        """
        with self._fresh_fit():
            return self._fit_net(X, y, sample_weight)

    def _fit_net(self, X, y, sample_weight=None):
        """One training run of ``fit`` (parameters validated, earlier fit forgotten)."""
        rng = check_random_state(self.random_state)
        # one seed each: validation split, initial weights, crops and flips, shuffling,
        # validation loader
        split_seed, init_seed, augment_seed, shuffle_seed, valid_seed = (
            int(seed) for seed in rng.randint(np.iinfo(np.int32).max, size=5)
        )
        images = validate_images(self, X, reset=True, dtype="float")
        self.classes_, y_encoded = self._validate_targets(images, y)
        weights = _fit_sample_weight(sample_weight, images)
        self._check_params_vs_input(images)
        self.device_ = resolve_device(self.device)

        x = np.ascontiguousarray(images.transpose(0, 3, 1, 2), dtype=np.float32)
        mean = x.mean(axis=(0, 2, 3), dtype=np.float64)
        std = x.std(axis=(0, 2, 3), dtype=np.float64)
        # a constant channel would divide by zero; leave its scale alone
        std[std < 1e-8] = 1.0
        self.channel_mean_, self.channel_std_ = mean, std
        on_cuda = self.device_.startswith("cuda")
        amp = on_cuda if self.amp == "auto" else bool(self.amp)
        optimizer, optimizer_kwargs = self._optimizer_spec()

        # this fit's generators: torch's global ones are never read or advanced
        init_generator = torch.Generator().manual_seed(init_seed)
        augment_generator = torch.Generator(device=self.device_).manual_seed(augment_seed)
        core = self._build_module(len(self.classes_), x.shape[1], init_generator)
        self._check_module(core, x, mean, std)
        if on_cuda:
            core = core.to(memory_format=torch.channels_last)
        module = PatchNetModule(
            core, mean, std, crop_size=self._train_crop_size(),
            flip="flip" in self._augment, amp=amp, channels_last=on_cuda,
            generator=augment_generator,
        )
        divergence = _DivergenceCheck(type(self).__name__, self.lr, self._fit_stage())
        # unequal weights only: equal ones are the plain mean loss, bit for bit
        net_class, fit_x, weighted = NeuralNetClassifier, x, {}
        if weights is not None:
            net_class, fit_x = _WeightedNet, {"images": x, "sample_weight": weights}
            weighted = {"criterion__reduction": "none"}
        net = net_class(
            module,
            criterion=torch.nn.CrossEntropyLoss,
            **weighted,
            optimizer=optimizer,
            lr=self.lr,
            max_epochs=self.max_epochs,
            batch_size=self.batch_size,
            iterator_train=_TrainLoader,
            iterator_train__shuffle=True,
            iterator_train__generator=torch.Generator().manual_seed(shuffle_seed),
            # a DataLoader draws its worker base seed from this, else from the global one
            iterator_valid__generator=torch.Generator().manual_seed(valid_seed),
            train_split=self._train_split(split_seed),
            callbacks=[("divergence_check", divergence), *self._skorch_callbacks()],
            classes=np.arange(len(self.classes_)),
            device=self.device_,
            verbose=int(self.verbose > 0),
            **optimizer_kwargs,
        )
        with warnings.catch_warnings():
            # skorch warns that an instantiated module ignores module__ params
            warnings.filterwarnings("ignore", message=".*initialized.*", module="skorch")
            net.fit(fit_x, y_encoded)
        self.net_ = net
        self.module_ = self.net_.module_.eval()
        # trained: a CUDA generator would not unpickle on a CPU-only machine
        self.module_.generator = None
        self.callbacks_ = dict(self.net_.callbacks_)
        self.history_ = self.net_.history
        return self

    def __getstate__(self):
        state = self.__dict__.copy()
        # module_ is net_.module_, which skorch pickles (with torch.save) itself
        state.pop("module_", None)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        if "net_" in state:
            # skorch maps CUDA tensors to the CPU when no GPU is present; the device
            # rule says where the model runs now (and warns when it is not the fitted one)
            fitted = state.get("device_", str(self.net_.device))
            device = runtime_device(fitted, type(self).__name__)
            if str(self.net_.device) != device:
                self.net_.device = device
                self.net_.module_.to(device)
            self.device_ = device
            self.module_ = self.net_.module_
            if not self.device_.startswith("cuda"):
                # GPU-only speed-ups would only slow a CPU down (bf16 autocast)
                self.module_.channels_last = False
                if self.amp == "auto":
                    self.module_.amp = False

    # ---- inference -------------------------------------------------------
    def _max_patches(self):
        # a pixel budget of 4 * batch_size 32x32 images: small patches go in big batches
        ph, pw = getattr(self, "_patch_size", (32, 32))
        return max(256, 4 * self.batch_size * 1024 // (ph * pw))

    def _eval_module(self):
        module = self.module_
        module.eval()
        return module, self.device_

    def patch_logits(self, X, *, stride=None, padding=0):
        """Logits of every patch position, ``(n, K, gh, gw)``.

        Parameters
        ----------
        X : array-like of shape (n, H, W), (n, H, W, C) or (n, H*W*C)
            Images of the shape seen in ``fit``.
        stride : int or tuple (sh, sw), default=None
            Step between patches; ``None`` uses the estimator's default
            (``inference_stride`` for :class:`~skpatch.PatchCNNClassifier`).
        padding : int, tuple (pad_h, pad_w) or 'same', default=0
            Zero padding of the raw images (before normalization); ``'same'``
            gives one patch centred on every pixel, as in class heat maps.

        Returns
        -------
        logits : ndarray of shape (n, n_classes, gh, gw), float32
            ``logits[i, k, r, c]`` is the class ``k`` logit of the patch whose
            top-left corner is at ``(r * sh - pad_top, c * sw - pad_left)``.
        """
        return self._selected_patch_logits(X, None, stride=stride, padding=padding)

    def _validate_inference_images(self, X):
        """Images for inference as ``(n, H, W, C)`` floats of the fitted ``image_shape_``.

        ``image_shape=None``: rows are read with the fitted ``image_shape_``,
        not the parameter, which ``set_params`` may have changed since ``fit``.
        """
        return validate_images(self, X, reset=False, dtype="float", image_shape=None)

    def _selected_patch_logits(self, X, class_index, *, stride=None, padding=0):
        """:meth:`patch_logits` of the classes ``class_index`` only (all when ``None``)."""
        check_is_fitted(self)
        images = self._validate_inference_images(X)
        stride = self._default_patch_stride() if stride is None else stride
        stride = check_size_pair(stride, "stride")
        return self._patch_logits(images, stride, padding, class_index)

    def _patch_logits(self, images, stride, padding, class_index=None):
        pads = _resolve_padding(padding, self._patch_size)
        gh, gw = patch_grid_shape(images.shape[1:3], self._patch_size, stride, pads)
        module, device = self._eval_module()
        padded_hw = tuple(
            size + before + after for size, (before, after) in zip(images.shape[1:3], pads)
        )
        n_images = self._images_per_forward(padded_hw, (gh, gw))
        n_maps = len(self.classes_) if class_index is None else len(class_index)
        out = np.empty((images.shape[0], n_maps, gh, gw), dtype=np.float32)
        if class_index is not None:
            # on the device: only the requested maps are computed and copied to the host
            class_index = torch.as_tensor(np.asarray(class_index, dtype=np.int64), device=device)
        desc = f"{type(self).__name__} patch logits"
        with torch.no_grad():
            for start in _chunk_starts(self, images.shape[0], n_images, desc):
                chunk = images[start : start + n_images].transpose(0, 3, 1, 2)
                x = torch.as_tensor(np.ascontiguousarray(chunk, dtype=np.float32))
                logits = self._forward_patch_logits(
                    module, x.to(device), stride, pads, class_index
                )
                out[start : start + n_images] = logits.float().cpu().numpy()
        return out

    def _image_logits(self, images):
        module, device = self._eval_module()
        out = np.empty((images.shape[0], len(self.classes_)), dtype=np.float32)
        desc = f"{type(self).__name__} image logits"
        with torch.no_grad():
            for start in _chunk_starts(self, images.shape[0], self.batch_size, desc):
                chunk = images[start : start + self.batch_size].transpose(0, 3, 1, 2)
                x = torch.as_tensor(np.ascontiguousarray(chunk, dtype=np.float32))
                out[start : start + self.batch_size] = module(x.to(device)).cpu().numpy()
        return out

    def _decision_logits(self, X):
        check_is_fitted(self)
        images = self._validate_inference_images(X)
        if self._uses_patch_inference():
            stride = check_size_pair(self._default_patch_stride(), "stride")
            logits = self._patch_logits(images, stride, 0)
            return logits.mean(axis=(2, 3), dtype=np.float64)
        return self._image_logits(images).astype(np.float64)

    def predict_proba(self, X):
        """Class probabilities: softmax of the mean patch logits (or image logits).

        Parameters
        ----------
        X : array-like of shape (n, H, W), (n, H, W, C) or (n, H*W*C)

        Returns
        -------
        proba : ndarray of shape (n, n_classes)
            A dask array ``X`` gives a dask array, computed block by block.
        """
        if is_dask_array(X):
            return map_row_blocks(self, "predict_proba", X)
        return softmax(self._decision_logits(X), axis=1)

    def predict_log_proba(self, X):
        """Log of :meth:`predict_proba`, computed stably."""
        if is_dask_array(X):
            return map_row_blocks(self, "predict_log_proba", X)
        return log_softmax(self._decision_logits(X), axis=1)

    def predict(self, X):
        """Most probable class of each image.

        Parameters
        ----------
        X : array-like of shape (n, H, W), (n, H, W, C) or (n, H*W*C)

        Returns
        -------
        y : ndarray of shape (n,)
            A dask array ``X`` gives a dask array, computed block by block.
        """
        if is_dask_array(X):
            return map_row_blocks(self, "predict", X)
        logits = self._decision_logits(X)
        return self.classes_[np.argmax(logits, axis=1)]

    def score(self, X, y, sample_weight=None):
        """Mean accuracy of :meth:`predict` on ``X`` against ``y``.

        Parameters
        ----------
        X : array-like of shape (n, H, W), (n, H, W, C) or (n, H*W*C)
            Images.
        y : array-like of shape (n,)
            True labels.
        sample_weight : array-like of shape (n,), default=None
            Weights of the images.

        Returns
        -------
        score : float
            :func:`sklearn.metrics.accuracy_score` of the predictions.
        """
        return super().score(X, y, sample_weight=sample_weight)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = True
        tags.input_tags.three_d_array = True
        tags.non_deterministic = self.device != "cpu" and self.device != "auto"
        return tags

