"""PatchCNNClassifier: a CNN trained on random TxT crops, predicting by averaging patch logits.

Madala et al.: one random ``T x T`` crop per image per step, labelled with the
image's label; prediction averages the logits of every ``T x T`` patch at
``inference_stride`` (or, with ``inference='image'``, one whole-image pass).
The shared training and inference machinery lives in :mod:`._base`.
"""

import copy
from numbers import Integral

import torch
from sklearn.utils._param_validation import HasMethods, Interval, StrOptions

from ..nn._patch_net import build_initialized, build_seeded
from ..utils._grid import patch_grid_shape
from ..utils._validation import check_size_pair
from ._base import BasePatchNetClassifier

__all__ = ["PatchCNNClassifier"]

_RESNETS = {"resnet10": 10, "resnet18": 18, "resnet34": 34}


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
        0 silent, 1 skorch's epoch table in ``fit`` (inference stays
        silent), 2 also skorch's ``ProgressBar`` and a tqdm progress bar on
        stderr for inference (``predict_proba``, ``patch_logits`` and the
        functions built on them).
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

    Sample weights: ``fit(X, y, sample_weight=w)`` weights the images (for
    class imbalance, say). Each training batch's loss is the weighted mean
    ``sum(w_i l_i) / sum(w_i)`` of its images' cross-entropies, so an image of
    weight 0 adds nothing to the loss or its gradient, whatever its label, and
    equal weights train exactly as no weights. The weights enter the loss
    only: every image still counts in the per-channel normalization, the
    batches (and their BatchNorm statistics) and the random augmentation.
    The validation loss of ``train_split`` is weighted too. With metadata
    routing on (``sklearn.set_config(enable_metadata_routing=True)``), a
    Pipeline or GridSearchCV passes them to ``fit`` once asked with
    ``set_fit_request(sample_weight=True)``.

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
        from ..nn import resnet

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
