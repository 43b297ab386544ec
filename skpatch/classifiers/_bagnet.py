"""BagNetClassifier: BagNet-9/17/33 (Brendel & Bethge 2019), the authors' weights, patch evidence.

The network and its state-dict key names are in :mod:`skpatch.nn.bagnet`;
this module holds the estimator, the loading of a user's weights file
(``weights_only``, errors naming the file) and the inference chunking.
"""

import os
import warnings
from numbers import Integral

import numpy as np
import torch
from sklearn.utils._param_validation import Interval, Options

from ..nn._patch_net import build_initialized
from ..utils._device import check_device_param, resolve_device
from ..utils._grid import patch_grid_shape
from ..utils._validation import check_images
from ._base import BasePatchNetClassifier

__all__ = ["BagNetClassifier"]

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
    import pickle

    from ..nn.bagnet import _strip_module_prefix

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
        0 is silent, 1 prints skorch's epoch table in ``fit`` (inference
        stays silent), 2 adds skorch's progress bar and a tqdm progress bar
        on stderr for inference (``predict_proba``, ``patch_logits`` and the
        functions built on them).
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

        from ..nn._patch_net import PatchNetModule
        from ..nn.bagnet import (
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
        from ..nn.bagnet import IMAGENET_MEAN, InputAffine

        if isinstance(self.module_.core, InputAffine):
            # data statistics, then the affine map to ImageNet's: zero at the ImageNet mean
            return np.asarray(IMAGENET_MEAN, dtype=np.float32)
        # PatchNetModule's (x - mean) / std holds channel_mean_ as float32: exact zeros
        return np.asarray(self.channel_mean_, dtype=np.float32)

    def _default_patch_stride(self):
        return 8

    def _build_module(self, n_classes, n_channels, generator):
        from ..nn.bagnet import (
            BAGNET_KERNEL3,
            IMAGENET_MEAN,
            IMAGENET_STD,
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
