"""Patch classifiers built on torch and skorch.

:class:`PatchCNNClassifier` trains a CNN on random TxT crops and predicts by
averaging the logits of every TxT patch (Madala et al.). The shared training
and inference machinery lives in :mod:`skpatch._base_classifier`.
"""

import copy
import os
import warnings
from numbers import Integral

import numpy as np
import torch
from sklearn.utils._param_validation import HasMethods, Interval, Options, StrOptions

from ._base_classifier import BasePatchNetClassifier
from .utils._device import check_device_param, resolve_device
from .utils._grid import patch_grid_shape
from .nn._patch_net import build_initialized, build_seeded
from .utils._validation import check_images, check_size_pair

__all__ = ["BagNetClassifier", "PatchCNNClassifier"]

_RESNETS = {"resnet10": 10, "resnet18": 18, "resnet34": 34}
_BAGNET_PATCH_SIZES = (9, 17, 33)

# activation memory one BagNet inference chunk may hold, per device type
_BAGNET_INFERENCE_BYTES = {"cpu": 256 * 2**20, "cuda": 1024 * 2**20}


def _bagnet_activation_bytes(net, height, width):
    """Estimated memory of one image's dense BagNet forward (no gradient), in bytes.

    The largest activation of the forward (the input included), times 4 for
    the tensors alive at once inside a bottleneck block (its input, kept for
    the residual, two intermediate maps and the output), in float32.
    """
    largest = net.conv1.in_channels * height * width
    largest = max(largest, net.conv1.out_channels * height * width)
    height, width = height - 2, width - 2  # the stem's unpadded 3x3 conv
    for stage in (net.layer1, net.layer2, net.layer3, net.layer4):
        for block in stage:
            largest = max(largest, block.conv1.out_channels * height * width)
            (kh, kw), (sh, sw) = block.conv2.kernel_size, block.conv2.stride
            height, width = (height - kh) // sh + 1, (width - kw) // sw + 1
            largest = max(largest, block.conv3.out_channels * height * width)
    return 4 * 4 * largest


def _load_state_dict(path):
    """``torch.load(path, weights_only=True)`` with errors that name the file.

    ``weights_only`` is kept on: unpickling other objects can run code from the file.
    A checkpoint of the form ``{'state_dict': ..., 'epoch': ...}`` (torchvision's
    ImageNet training script) gives its ``'state_dict'``; a ``module.`` prefix on
    every key (``DataParallel``) is removed.
    """
    from .nn.bagnet import _strip_module_prefix

    import pickle

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as exc:
        if "Unsupported global" in str(exc):
            # not torch's advice (weights_only=False), which would run that code
            raise ValueError(
                f"weights={os.fspath(path)!r} holds objects other than tensors (Python "
                "classes or functions) and is refused for safety: unpickling them could "
                "run code from the file. Save a plain state dict of tensors, "
                "torch.save(model.state_dict(), path), and pass that file."
            ) from None
        raise ValueError(
            f"weights={os.fspath(path)!r} is not a file of tensors that torch.load can "
            f"read ({type(exc).__name__}); save one with torch.save(model.state_dict(), path)."
        ) from exc
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]  # a training checkpoint wrapping the state dict
    if not isinstance(state, dict) or not all(
        isinstance(v, torch.Tensor) for v in state.values()
    ):
        raise ValueError(
            f"weights={os.fspath(path)!r} holds a {type(state).__name__}, not a state "
            "dict of tensors (torch.save(model.state_dict(), path)) nor a checkpoint "
            "{'state_dict': ...}."
        )
    return _strip_module_prefix(state)


# float images for ImageNet weights must be RGB in [0, 1]; resampling (bicubic,
# Lanczos) overshoots by a few percent, 0..255 or already-normalized images far more
_UNIT_RANGE_SLACK = 0.5


def _check_unit_range(images, what):
    """Raise unless float ``images`` lie in [0, 1] (give or take ``_UNIT_RANGE_SLACK``)."""
    if images.size == 0:
        return
    low, high = float(images.min()), float(images.max())
    if low < -_UNIT_RANGE_SLACK or high > 1 + _UNIT_RANGE_SLACK:
        hint = (
            "they look like 0..255 pixels: pass them as uint8 (scaled to [0, 1]) or "
            "divide them by 255"
            if high > 1 + _UNIT_RANGE_SLACK and low >= -_UNIT_RANGE_SLACK
            else "they look normalized already: pass the images before normalization"
        )
        raise ValueError(
            f"X holds values in [{low:.4g}, {high:.4g}], but {what} expect RGB images "
            f"in [0, 1], which the classifier normalizes with the ImageNet mean and "
            f"standard deviation itself; {hint}."
        )


class PatchCNNClassifier(BasePatchNetClassifier):
    """CNN trained on random TxT patches; predicts by averaging patch logits.

    Every time an image is used in training, one uniformly random
    ``patch_size`` crop of it is drawn (on the device, vectorized over the
    batch) and labelled with the image's label. At inference the logits of
    every ``patch_size`` patch at ``inference_stride`` are averaged and the
    softmax of that mean is the predicted probability (``inference='patches'``,
    the paper's text), or the whole image is fed through the network, whose
    global average pooling accepts any size (``inference='image'``, what the
    paper's public code measured).

    Parameters
    ----------
    patch_size : int or tuple (ph, pw), default=8
        Side ``T`` of the training crops and of the inference patches.
    module : {'resnet10', 'resnet18', 'resnet34'}, torch.nn.Module class or \
instance, default='resnet18'
        The network. Names build a CIFAR-style ResNet
        (:func:`skpatch.nn.resnet`) of the given depth and ``width``; a class
        is called as ``module(n_classes=K, in_channels=C)``, its own
        initialization included, with its random draws seeded from the fit's
        generator (:func:`skpatch.nn.build_seeded`); an instance is
        deep-copied and trained as it is, with its own initial values. It must map ``(B, C, ph, pw)`` to
        logits ``(B, K)``; ``fit`` checks that with a forward pass of one
        training crop and raises a ``ValueError`` for another output size.
    width : int, default=64
        Channels of the first ResNet stage (64 is the standard ResNet-18);
        ignored when ``module`` is not a name.
    inference : {'patches', 'image'}, default='patches'
        How :meth:`predict_proba` aggregates: mean patch logits or one
        whole-image forward pass. Read at prediction time: it may be changed
        after ``fit`` without refitting.
    inference_stride : int or tuple (sh, sw), default=1
        Step between the patches averaged at inference (1 = every patch).
        Read at prediction time, like ``inference``. The parameters that shape
        the network (``patch_size``, ``module``, ``width``) are not: after
        ``set_params`` they take effect at the next ``fit`` only.
    max_epochs : int, default=30
        Passes over the training images (one random crop each per pass).
    batch_size : int, default=64
        Images per training step; inference batches as many patches as
        hold the pixels of ``4 * batch_size`` 32x32 images. A one-image
        remainder of an epoch is merged into the batch before it (BatchNorm
        cannot train on one image; nothing is dropped); ``batch_size=1``
        with a network that has BatchNorm layers is a ``ValueError``. 64
        suits a few thousand images (20 steps per epoch on 1,257 training
        digits of :func:`~skpatch.datasets.load_digits_images`, where 256
        gives 5 and stays near chance after 2 epochs); with tens of
        thousands of images on a GPU, 256 trains faster per epoch.
    optimizer : {'sgd', 'adam', 'adamw'} or torch.optim.Optimizer class, \
default='sgd'
        ``'sgd'`` uses ``momentum``; all use ``weight_decay``.
    lr : float, default=0.1
        Learning rate (the peak rate of the one-cycle schedule).
    momentum : float, default=0.9
        SGD momentum (kept fixed; the one-cycle schedule does not cycle it).
    weight_decay : float, default=5e-4
        L2 penalty of the optimizer.
    lr_schedule : {'onecycle', 'cosine', 'constant'}, default='onecycle'
        ``'onecycle'``: :class:`torch.optim.lr_scheduler.OneCycleLR` stepped
        every batch, warming up from ``lr / 25`` to ``lr`` over the first
        30% of the steps and annealing to ``lr / 2.5e5``; its number of
        steps is counted from the training batches at the start of ``fit``.
        ``'cosine'``: cosine annealing to zero over ``max_epochs``, stepped
        per epoch. ``'constant'``: a constant rate. One-cycle needs a few
        steps to warm up and anneal: with a handful of steps in all (say
        fewer than 10) use ``'cosine'`` or ``'constant'``.
    augment : tuple of {'flip'} or None, default=('flip',)
        Extra training augmentation: random horizontal flips.
    train_split : float, callable or None, default=None
        ``None`` trains on all images (skorch would hold out 20% by default);
        a float in (0, 1) holds out that stratified fraction for validation
        scores in ``history_``; a callable is passed to skorch as it is.
    device : {'auto', 'cpu', 'cuda'} or 'cuda:N', default='auto'
        ``'auto'`` uses CUDA when present, else the CPU.
    amp : 'auto' or bool, default='auto'
        bfloat16 autocast; ``'auto'`` turns it on for CUDA only.
    random_state : int, RandomState instance or None, default=None
        Seeds weight initialisation, shuffling, crops and flips, through
        ``torch.Generator`` objects of the fit; torch's and numpy's global
        generators are left alone. On the CPU a fixed value gives identical
        models, also when several fits run in parallel threads.
    verbose : int, default=1
        0 silent, 1 skorch's epoch table, 2 also skorch's ``ProgressBar``.
        When > 0, inference (``predict_proba``, ``patch_logits`` and the
        functions built on them) shows a tqdm progress bar on stderr.
    callbacks : list of skorch callbacks or (name, callback) pairs, default=None
        Passed through to the skorch net (as copies: the objects that ran are
        in ``callbacks_``); unnamed ones are named ``'user_0'``, ``'user_1'``...
    image_shape : tuple (H, W) or (H, W, C), default=None
        Shape of one image when ``X`` is given as 2-D rows.

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
        Class labels.
    net_ : skorch.NeuralNetClassifier
        The trained net.
    module_ : skpatch.nn.PatchNetModule
        The trained torch module (``net_.module_``) in eval mode; its ``core``
        is the network. Register forward hooks here.
    callbacks_ : dict of str to skorch.callbacks.Callback
        The callbacks skorch ran in ``fit``, by name: skorch's defaults, the
        learning-rate schedule and the fitted copies of ``callbacks``.
    history_ : skorch.History
        Per-epoch training record (loss, validation scores, durations).
    device_ : str
        Device the network lives on: the one ``fit`` ran on, or ``'cpu'`` (with
        a warning) after unpickling a GPU-fitted model on a machine without it.
    channel_mean_, channel_std_ : ndarray of shape (C,)
        Per-channel normalization learned from the training images.
    n_features_in_ : int
        ``H * W * C``.
    image_shape_ : tuple (H, W, C)
        Shape of the training images.

    See Also
    --------
    skpatch.inspection.class_heatmap : Per-pixel class evidence from patch_logits.
    skpatch.inspection.blackout_scores : Accuracy when patches are dropped.

    Notes
    -----
    Patch-averaged inference with stride 1 costs ``(H - T + 1) * (W - T + 1)``
    forward passes of a ``T x T`` patch per image, roughly
    ``(H - T + 1)(W - T + 1) T^2 / (H W)`` times one whole-image pass.
    The zero padding of :meth:`patch_logits` is applied to the raw images,
    before the per-channel normalization.

    References
    ----------
    V. C. Madala, S. Chandrasekaran and J. Bunk, "CNNs Avoid Curse of
    Dimensionality by Learning on Patches", IEEE Open Journal of Signal
    Processing, 2023.

    Examples
    --------
    >>> import numpy as np
    >>> from skpatch import PatchCNNClassifier
    >>> rng = np.random.default_rng(0)
    >>> X = rng.random((40, 8, 8)).astype(np.float32)
    >>> y = np.repeat([0, 1], 20)
    >>> X[y == 1] += 0.5
    >>> clf = PatchCNNClassifier(patch_size=4, module='resnet10', width=4,
    ...                          max_epochs=3, batch_size=16, lr=0.05,
    ...                          device='cpu', verbose=0, random_state=0)
    >>> clf.fit(X, y).patch_logits(X[:2]).shape
    (2, 2, 5, 5)
    """

    _parameter_constraints = {
        **BasePatchNetClassifier._parameter_constraints,
        "patch_size": [Interval(Integral, 1, None, closed="left"), tuple, list],
        "module": [StrOptions(set(_RESNETS)), type, HasMethods(["forward"])],
        "width": [Interval(Integral, 1, None, closed="left")],
        "inference": [StrOptions({"patches", "image"})],
        "inference_stride": [Interval(Integral, 1, None, closed="left"), tuple, list],
    }

    def __init__(
        self,
        patch_size=8,
        *,
        module="resnet18",
        width=64,
        inference="patches",
        inference_stride=1,
        max_epochs=30,
        batch_size=64,
        optimizer="sgd",
        lr=0.1,
        momentum=0.9,
        weight_decay=5e-4,
        lr_schedule="onecycle",
        augment=("flip",),
        train_split=None,
        device="auto",
        amp="auto",
        random_state=None,
        verbose=1,
        callbacks=None,
        image_shape=None,
    ):
        self.patch_size = patch_size
        self.module = module
        self.width = width
        self.inference = inference
        self.inference_stride = inference_stride
        self.max_epochs = max_epochs
        self.batch_size = batch_size
        self.optimizer = optimizer
        self.lr = lr
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.lr_schedule = lr_schedule
        self.augment = augment
        self.train_split = train_split
        self.device = device
        self.amp = amp
        self.random_state = random_state
        self.verbose = verbose
        self.callbacks = callbacks
        self.image_shape = image_shape

    def _check_params_vs_input(self, images):
        super()._check_params_vs_input(images)
        patch_size = check_size_pair(self.patch_size, "patch_size")
        # raises when the patch is larger than the images
        patch_grid_shape(images.shape[1:3], patch_size, (1, 1), ((0, 0), (0, 0)))
        self._patch_size = patch_size
        check_size_pair(self.inference_stride, "inference_stride")

    def _build_module(self, n_classes, n_channels, generator):
        from .nn import resnet

        if isinstance(self.module, str):
            return build_initialized(
                lambda: resnet(
                    _RESNETS[self.module], n_classes=n_classes, in_channels=n_channels,
                    width=self.width,
                ),
                generator,
            )
        if isinstance(self.module, type):
            return build_seeded(
                lambda: self.module(n_classes=n_classes, in_channels=n_channels), generator
            )
        if not isinstance(self.module, torch.nn.Module):
            raise TypeError(
                "module must be a ResNet name, a torch.nn.Module class or a "
                f"torch.nn.Module instance, got {type(self.module).__name__}."
            )
        return copy.deepcopy(self.module)

    def _train_crop_size(self):
        return self._patch_size

    def _default_patch_stride(self):
        # read live: inference settings may change after fit without retraining
        return check_size_pair(self.inference_stride, "inference_stride")

    def _uses_patch_inference(self):
        # read live, like inference_stride; a bad value set after fit must not fall through
        if self.inference not in ("patches", "image"):
            raise ValueError(
                f"inference must be 'patches' or 'image', got {self.inference!r}."
            )
        return self.inference == "patches"


class BagNetClassifier(BasePatchNetClassifier):
    """BagNet classifier: class evidence of q x q patches, averaged into logits.

    A BagNet-9/17/33 (Brendel & Bethge, 2019) trained with skorch. Every
    output location of the network sees one ``patch_size`` x ``patch_size``
    patch of the image (patch locations 8 pixels apart); its class evidence
    is :meth:`patch_logits`, and :meth:`predict_proba` is the softmax of the
    mean evidence over locations. The official weights load from a local
    file (nothing is downloaded): :meth:`from_weights` gives a fitted
    classifier with no training, ``weights=`` fine-tunes from them.

    Parameters
    ----------
    patch_size : {9, 17, 33}, default=33
        Receptive field ``q`` of the BagNet (BagNet-9, -17 or -33). Images
        must be at least ``q x q`` pixels; for smaller ones (32x32 CIFAR-10
        images with the default 33) ``fit`` raises a ``ValueError`` naming
        the values that fit. Like ``width``, ``layers`` and ``weights``, it
        takes effect at ``fit``: inference uses the fitted network.
    width : int, default=64
        Base channel count (64 in the official networks); stages have
        ``width * (1, 2, 4, 8)`` middle channels. Small values give small
        BagNets for small images.
    layers : tuple of 4 int, default=(3, 4, 6, 3)
        Bottleneck blocks per stage (ResNet-50 layout by default).
    weights : str or path-like, default=None
        Local path to a state dict in the reference naming (e.g. the official
        BagNet weights saved with ``torch.save(model.state_dict(), path)``),
        or a checkpoint ``{'state_dict': ..., ...}``; a ``module.`` prefix on
        every key is removed. It is read with ``torch.load(weights_only=True)``:
        a file holding objects other than tensors is refused with a
        ``ValueError`` (loading it could run code). It is loaded strictly; when
        its number of classes differs from that of ``y``, ``fc`` is
        re-initialized for ``classes_`` with a warning.
        With weights, inputs are normalized with the ImageNet mean and
        standard deviation the weights expect (float images must be RGB in
        [0, 1]; ``uint8`` images are scaled to it; floats beyond [-0.5, 1.5],
        such as 0..255 pixels, are a ``ValueError``).
    freeze_backbone : bool, default=False
        Train only ``fc``; the rest of the network, its BatchNorm statistics
        included, keeps its initial (or loaded) values.
    max_epochs : int, default=10
        Passes over the training images.
    batch_size : int, default=64
        Images per training step. A one-image remainder of an epoch is merged
        into the batch before it; ``batch_size=1`` is a ``ValueError`` unless
        ``freeze_backbone`` (then no BatchNorm layer trains).
    optimizer : {'sgd', 'adam', 'adamw'} or torch optimizer class, default='sgd'
    lr : float, default=0.01
    momentum : float, default=0.9
        SGD momentum.
    weight_decay : float, default=1e-4
    lr_schedule : {'cosine', 'onecycle', 'constant'}, default='cosine'
        Per-epoch cosine annealing, a per-batch one-cycle schedule peaking at
        ``lr`` (see :class:`PatchCNNClassifier`), or a constant rate.
    augment : tuple of str or None, default=('flip',)
        Training augmentations; ``'flip'`` is a random horizontal flip.
    train_split : None, float or callable, default=None
        ``None`` trains on every image; a float holds out that stratified
        fraction for validation (skorch ``ValidSplit``).
    device : {'auto', 'cpu', 'cuda'} or 'cuda:N', default='auto'
        ``'auto'`` uses a CUDA GPU when one is visible.
    amp : 'auto' or bool, default='auto'
        bfloat16 autocast in training; ``'auto'`` enables it on CUDA only.
    random_state : int, RandomState instance or None, default=None
        Seeds the weight initialization, shuffling and augmentation through
        ``torch.Generator`` objects of the fit; the global generators are
        left alone, so seeded fits in parallel threads equal serial ones.
    verbose : int, default=1
        0 is silent, 1 prints skorch's epoch table, 2 adds a progress bar.
        When > 0, inference (``predict_proba``, ``patch_logits`` and the
        functions built on them) shows a tqdm progress bar on stderr.
    callbacks : list or None, default=None
        Extra skorch callbacks (copied; the fitted ones are in ``callbacks_``).
    image_shape : tuple (H, W) or (H, W, C), default=None
        Shape of one image when ``X`` holds flattened rows.

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
    net_ : skorch.NeuralNetClassifier
        The trained net.
    module_ : skpatch.nn.PatchNetModule
        The trained torch module (``net_.module_``); ``module_.core`` is the
        BagNet (wrapped in :class:`~skpatch.nn.bagnet.InputAffine` when
        ``weights`` is given).
    callbacks_ : dict of str to skorch.callbacks.Callback
        The callbacks skorch ran in ``fit``, by name.
    history_ : skorch.History
    device_ : str
        Device the network runs on (``'cpu'``, with a warning, after unpickling
        a GPU-fitted model on a machine without that GPU).
    channel_mean_, channel_std_ : ndarray of shape (C,)
        Per-channel statistics of the training images.
    n_features_in_ : int
    image_shape_ : tuple of int
        ``(H, W, C)`` of the training images.

    See Also
    --------
    PatchCNNClassifier : a CNN trained on random crops, averaged over patches.
    BagNetClassifier.from_weights : a fitted classifier from a weights file.
    skpatch.nn.bagnet.bagnet33 : the torch module.
    skpatch.inspection.class_heatmap : per-pixel evidence, padded as the authors pad.
    skpatch.inspection.blackout_scores : accuracy with patches dropped.

    Notes
    -----
    ``patch_logits`` runs the network once per chunk of images, as many per
    forward pass as fit in an activation budget (256 MB on the CPU, 1 GB on
    CUDA, from an estimate of one image's dense forward): because all
    convolutions are unpadded and strided from the top-left corner, the
    evidence at grid location ``(i, j)`` is exactly the network's output on
    the patch ``X[8 i : 8 i + q, 8 j : 8 j + q]`` alone. The pooled logit
    equals the mean of the evidence because ``fc`` is linear.

    The stem BatchNorm keeps the reference momentum 0.001 when fine-tuning
    ``weights``; from scratch it uses 0.1, since with 0.001 its running
    statistics stay near their initial values for thousands of steps.

    References
    ----------
    .. [1] W. Brendel and M. Bethge, "Approximating CNNs with Bag-of-local-
       Features models works surprisingly well on ImageNet", ICLR 2019.

    Examples
    --------
    >>> import numpy as np
    >>> from skpatch.classifiers import BagNetClassifier
    >>> rng = np.random.default_rng(0)
    >>> X = rng.random((20, 17, 17, 3)).astype(np.float32)
    >>> y = np.repeat([0, 1], 10)
    >>> clf = BagNetClassifier(9, width=2, layers=(1, 1, 1, 1), max_epochs=1,
    ...                        verbose=0, device="cpu", random_state=0).fit(X, y)
    >>> clf.patch_logits(X[:2]).shape
    (2, 2, 2, 2)
    """

    _parameter_constraints = {
        **BasePatchNetClassifier._parameter_constraints,
        "patch_size": [Options(Integral, set(_BAGNET_PATCH_SIZES))],
        "width": [Interval(Integral, 1, None, closed="left")],
        "layers": [tuple, list],
        "weights": [str, os.PathLike, None],
        "freeze_backbone": ["boolean"],
    }

    def __init__(
        self,
        patch_size=33,
        *,
        width=64,
        layers=(3, 4, 6, 3),
        weights=None,
        freeze_backbone=False,
        max_epochs=10,
        batch_size=64,
        optimizer="sgd",
        lr=0.01,
        momentum=0.9,
        weight_decay=1e-4,
        lr_schedule="cosine",
        augment=("flip",),
        train_split=None,
        device="auto",
        amp="auto",
        random_state=None,
        verbose=1,
        callbacks=None,
        image_shape=None,
    ):
        self.patch_size = patch_size
        self.width = width
        self.layers = layers
        self.weights = weights
        self.freeze_backbone = freeze_backbone
        self.max_epochs = max_epochs
        self.batch_size = batch_size
        self.optimizer = optimizer
        self.lr = lr
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.lr_schedule = lr_schedule
        self.augment = augment
        self.train_split = train_split
        self.device = device
        self.amp = amp
        self.random_state = random_state
        self.verbose = verbose
        self.callbacks = callbacks
        self.image_shape = image_shape

    def _check_params_vs_input(self, images):
        super()._check_params_vs_input(images)
        layers = tuple(self.layers)
        if len(layers) != 4 or not all(
            isinstance(n, Integral) and not isinstance(n, bool) and n >= 1 for n in layers
        ):
            raise ValueError(
                f"layers must be 4 positive ints (blocks per stage), got {self.layers!r}."
            )
        q = self.patch_size
        height, width = images.shape[1:3]
        try:
            patch_grid_shape((height, width), (q, q), (8, 8), ((0, 0), (0, 0)))
        except ValueError:
            fitting = [p for p in sorted(_BAGNET_PATCH_SIZES) if p <= min(height, width)]
            advice = (
                f"pass patch_size={' or '.join(map(str, fitting))}"
                if fitting
                else "no BagNet fits: upsample or pad the images to at least 9x9"
            )
            raise ValueError(
                f"images of size {height}x{width} are smaller than patch_size={q}: a "
                f"BagNet-{q} needs images of at least {q}x{q} pixels; {advice}."
            ) from None
        if self.weights is not None:
            if not os.path.isfile(self.weights):
                raise ValueError(f"weights={self.weights!r} is not a file.")
            if images.shape[3] != 3:
                raise ValueError(
                    f"weights need RGB images with 3 channels, got {images.shape[3]}."
                )
            _check_unit_range(images, f"weights={self.weights!r}")
        self._layers = layers
        self._patch_size = (q, q)
        # fitted state, not the parameter: set_params(weights=...) after fit changes nothing
        self._imagenet_weights = None if self.weights is None else os.fspath(self.weights)
        self._any_image_size = False

    @classmethod
    def from_weights(cls, path, *, patch_size=None, classes=None, device="auto"):
        """A fitted classifier from a BagNet weights file, with no training.

        The network (patch size, ``width``, ``layers``, number of classes) is
        read from the state dict; its parameters and BatchNorm statistics are
        the file's, unchanged. The classifier takes RGB images of any size of
        at least ``q x q`` pixels, ``uint8`` (scaled to [0, 1]) or float in
        [0, 1], and normalizes them with the ImageNet mean and standard
        deviation, as the official weights expect. ``predict_proba``,
        ``patch_logits``, :func:`~skpatch.inspection.class_heatmap` and
        :func:`~skpatch.inspection.blackout_scores` work on it at once.

        Parameters
        ----------
        path : str or path-like
            Local file of a state dict in the reference naming, saved with
            ``torch.save(model.state_dict(), path)``, or a training checkpoint
            ``{'state_dict': ..., ...}``; a ``module.`` prefix on every key
            (``DataParallel``) is removed. Read with
            ``torch.load(weights_only=True)``: a file holding other objects
            than tensors and plain values is refused. Nothing is downloaded.
        patch_size : {9, 17, 33}, default=None
            The BagNet the file must hold; ``None`` reads it from the file
            (which blocks have 3x3 middle convs). A file of another BagNet is
            a ``ValueError``.
        classes : array-like of shape (n_classes,), default=None
            Labels of ``fc``'s outputs, in their order (for ImageNet weights,
            e.g. the 1000 WordNet ids in the order the weights were trained
            with); ``None`` gives ``0 .. n_classes - 1``. Their number must be
            the number of rows of ``fc``.
        device : {'auto', 'cpu', 'cuda'} or 'cuda:N', default='auto'
            Where the network runs.

        Returns
        -------
        clf : BagNetClassifier
            Fitted: its parameters (``patch_size``, ``width``, ``layers``,
            ``weights=path``, ``device``) are those of the file, so ``clone``
            gives an unfitted classifier that fine-tunes from the same
            weights; ``image_shape_`` is ``None`` (any size). It pickles and
            loads on a CPU-only machine like a fitted one.

        Raises
        ------
        ValueError
            If ``path`` is not a file of tensors, is no BagNet state dict, has
            not 3 input channels, holds another ``patch_size``, or has another
            number of classes than ``classes``; at prediction, for float
            images outside [0, 1] (0..255 pixels, or normalized already).

        Examples
        --------
        >>> import os, tempfile
        >>> import numpy as np, torch
        >>> from skpatch.classifiers import BagNetClassifier
        >>> from skpatch.nn.bagnet import bagnet9
        >>> path = os.path.join(tempfile.mkdtemp(), "bagnet9.pth")
        >>> torch.save(bagnet9(width=2, layers=(1, 1, 1, 1)).state_dict(), path)
        >>> clf = BagNetClassifier.from_weights(path, device="cpu")
        >>> clf.patch_size, len(clf.classes_)
        (9, 1000)
        >>> X = np.zeros((2, 40, 40, 3), dtype=np.uint8)
        >>> clf.set_params(verbose=0).patch_logits(X).shape
        (2, 1000, 4, 4)
        """
        from skorch import NeuralNetClassifier

        from .nn._patch_net import PatchNetModule
        from .nn.bagnet import (
            IMAGENET_MEAN,
            IMAGENET_STD,
            BagNet,
            _architecture_from_state_dict,
            load_reference_weights,
        )

        check_device_param(device)
        name = f"weights={os.fspath(path)!r}"
        if not os.path.isfile(path):
            raise ValueError(f"{name} is not a file.")
        state = _load_state_dict(path)
        try:
            arch = _architecture_from_state_dict(state)
        except ValueError as exc:
            raise ValueError(f"{name} {exc}.") from None
        q = arch["patch_size"]
        if patch_size is not None and patch_size != q:
            raise ValueError(
                f"patch_size={patch_size!r}, but {name} holds a BagNet-{q} (3x3 middle "
                f"convs in {arch['kernel3']} blocks per stage); pass patch_size={q} or None."
            )
        if arch["in_channels"] != 3:
            raise ValueError(
                f"{name} takes {arch['in_channels']} input channels; from_weights "
                "normalizes RGB images for ImageNet weights and needs 3."
            )
        n_classes = arch["n_classes"]
        if classes is None:
            labels = np.arange(n_classes)
        else:
            labels = np.asarray(classes)
            if labels.ndim != 1 or len(labels) != n_classes:
                raise ValueError(
                    f"classes holds {labels.size} labels (shape {labels.shape}), but the "
                    f"fc layer of {name} has {n_classes} outputs: pass one label per "
                    "output, in fc's order, or classes=None."
                )
            if len(set(labels.tolist())) != n_classes:
                raise ValueError("classes must hold distinct labels, one per fc output.")

        clf = cls(
            q, width=arch["width"], layers=arch["layers"], weights=path, device=device
        )
        with torch.device("meta"):
            net = BagNet(
                arch["kernel3"], arch["layers"], n_classes=n_classes,
                width=arch["width"], in_channels=3,
            )
        net.to_empty(device="cpu")
        try:
            # strict: every parameter and buffer of the empty network is overwritten
            load_reference_weights(net, state)
        except RuntimeError as exc:
            raise ValueError(f"{name} does not load into a BagNet-{q}: {exc}") from exc
        clf.device_ = resolve_device(device)
        on_cuda = clf.device_.startswith("cuda")
        module = PatchNetModule(
            net, IMAGENET_MEAN, IMAGENET_STD, amp=on_cuda, channels_last=False
        ).eval()
        clf.net_ = NeuralNetClassifier(
            module, criterion=torch.nn.CrossEntropyLoss, classes=np.arange(n_classes),
            device=clf.device_, verbose=0, train_split=None,
        )
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*initialized.*", module="skorch")
            clf.net_.initialize()
        clf.module_ = clf.net_.module_.eval()
        clf.callbacks_ = dict(clf.net_.callbacks_)
        clf.history_ = clf.net_.history
        clf.classes_ = labels
        clf.channel_mean_ = np.asarray(IMAGENET_MEAN, dtype=np.float64)
        clf.channel_std_ = np.asarray(IMAGENET_STD, dtype=np.float64)
        clf.image_shape_ = None
        clf._layers = arch["layers"]
        clf._patch_size = (q, q)
        clf._augment = ()
        clf._imagenet_weights = os.fspath(path)
        clf._any_image_size = True
        return clf

    def _validate_inference_images(self, X):
        """Images for inference as ``(n, H, W, C)`` floats, checked for this model.

        A classifier from :meth:`from_weights` takes RGB images of any size of
        at least ``q x q``; a fitted one those of the training shape. With
        ImageNet weights float images must be in [0, 1].
        """
        if getattr(self, "_any_image_size", False):
            images = check_images(X, image_shape=self.image_shape, dtype="float")
            height, width, channels = images.shape[1:]
            if channels != 3:
                raise ValueError(
                    f"X holds images with {channels} channels, but the weights take RGB "
                    "images: pass X of shape (n, H, W, 3)."
                )
            q = self._patch_size[0]
            if height < q or width < q:
                raise ValueError(
                    f"X holds images of size {height}x{width}, smaller than the "
                    f"{q}x{q} patches of this BagNet-{q}; images must be at least "
                    f"{q}x{q} pixels."
                )
        else:
            images = super()._validate_inference_images(X)
        weights = getattr(self, "_imagenet_weights", None)
        if weights is not None:
            _check_unit_range(images, f"the weights ({weights!r})")
        return images

    def _input_zero(self):
        """Raw pixel values (per channel) that the network's input normalization maps to zero."""
        from .nn.bagnet import IMAGENET_MEAN, InputAffine

        if isinstance(self.module_.core, InputAffine):
            # data statistics, then the affine map to ImageNet's: zero at the ImageNet mean
            return np.asarray(IMAGENET_MEAN, dtype=np.float32)
        # PatchNetModule's (x - mean) / std holds channel_mean_ as float32: exact zeros
        return np.asarray(self.channel_mean_, dtype=np.float32)

    def _default_patch_stride(self):
        return 8

    def _build_module(self, n_classes, n_channels, generator):
        from .nn.bagnet import (
            IMAGENET_MEAN,
            IMAGENET_STD,
            BAGNET_KERNEL3,
            BagNet,
            InputAffine,
            load_reference_weights,
        )

        net = build_initialized(
            lambda: BagNet(
                BAGNET_KERNEL3[self.patch_size],
                self._layers,
                n_classes=n_classes,
                width=self.width,
                in_channels=n_channels,
                # the reference stem momentum (0.001) barely moves in a short run from scratch
                stem_momentum=0.001 if self.weights is not None else 0.1,
            ),
            generator,
        )
        if self.weights is not None:
            state = _load_state_dict(self.weights)
            fc_weight = state.get("fc.weight", state.get("module.fc.weight"))
            reset_fc = fc_weight is not None and fc_weight.shape[0] != n_classes
            if reset_fc:
                warnings.warn(
                    f"weights have {fc_weight.shape[0]} classes but y has {n_classes}: "
                    "fc is re-initialized for classes_.",
                    UserWarning,
                )
            try:
                load_reference_weights(net, state, reset_fc=reset_fc)
            except RuntimeError as exc:
                raise ValueError(
                    f"weights={self.weights!r} does not match a BagNet-{self.patch_size} "
                    f"with width={self.width}, layers={self._layers}: {exc}"
                ) from exc
        if self.freeze_backbone:
            net.freeze_backbone()
        if self.weights is None:
            return net
        # the base normalizes with the data statistics; the weights expect ImageNet's
        data_mean, data_std = self.channel_mean_, self.channel_std_
        in_mean, in_std = np.asarray(IMAGENET_MEAN), np.asarray(IMAGENET_STD)
        return InputAffine(net, data_std / in_std, (data_mean - in_mean) / in_std)

    def _images_per_forward(self, padded_hw, grid_hw):
        core = self.module_.core
        net = getattr(core, "net", core)  # the BagNet inside an InputAffine
        budget = _BAGNET_INFERENCE_BYTES["cuda" if self.device_.startswith("cuda") else "cpu"]
        return max(1, budget // _bagnet_activation_bytes(net, *padded_hw))

    def _forward_patch_logits(self, module, x, stride, pads, class_index=None):
        step = 8  # pixels between neighbouring BagNet locations
        if any(s not in (1, 2, 4, 8) for s in stride):
            raise ValueError(
                f"stride must be 1, 2, 4 or 8 for BagNetClassifier (a divisor of the "
                f"network's step of 8 pixels between locations), got {tuple(stride)!r}."
            )
        (top, bottom), (left, right) = pads
        if top or bottom or left or right:
            x = torch.nn.functional.pad(x, (left, right, top, bottom))
        x = module.normalize(x)
        if tuple(stride) == (step, step):
            return module.core.patch_logits(x, class_index)
        # a finer stride: one pass per offset of the 8-pixel grid, interleaved
        q = self._patch_size[0]  # the fitted network's, whatever set_params did since
        sh, sw = stride
        height, width = x.shape[-2:]
        n_maps = len(self.classes_) if class_index is None else len(class_index)
        out = x.new_empty((x.shape[0], n_maps, (height - q) // sh + 1, (width - q) // sw + 1))
        for top_offset in range(0, min(step, height - q + 1), sh):
            for left_offset in range(0, min(step, width - q + 1), sw):
                evidence = module.core.patch_logits(
                    x[:, :, top_offset:, left_offset:], class_index
                )
                rows = slice(top_offset // sh, None, step // sh)
                cols = slice(left_offset // sw, None, step // sw)
                out[:, :, rows, cols] = evidence
        return out
