"""PatchDictionaryClassifier: the published heads trained on a frozen patch dictionary.

``fit`` fits a :class:`~skpatch.PatchDictionaryEmbedding` (unsupervised) on the
per-channel standardized training images, freezes it as a
:class:`~skpatch.nn.PatchDictionaryCodes` module and trains the head of Thiry
et al. (2021) and Brutzkus et al. (2022) on it with skorch: average pooling,
BatchNorm, a 1x1 bottleneck convolution and a linear layer, with random crops
and flips. With ``depth > 1`` (or a ``layers`` list) the same is repeated layer
by layer: each new dictionary is fitted on the frozen output map of the layers
below, and only the newest layer and the classifier are trained.
"""

import copy
from numbers import Integral

import numpy as np
import torch
from sklearn.base import _fit_context
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.metaestimators import available_if
from skorch.callbacks import LRScheduler

from ..embedding import PatchDictionaryEmbedding
from ..nn._dictionary import PatchDictionaryCodes, PatchDictionaryLayer, PatchDictionaryNet
from ..nn._patch_net import build_initialized
from ..utils._device import check_device_param, resolve_device
from ..utils._validation import validate_images
from ._base import _AUGMENTATIONS, _OPTIMIZERS, BasePatchNetClassifier, _fit_sample_weight

__all__ = ["PatchDictionaryClassifier"]

# per-layer settings: those of the embedding, then those of the head
_EMBEDDING_KEYS = (
    "patch_size", "n_atoms", "n_neighbors", "dictionary", "encoding", "alpha", "both_signs",
    "whiten", "whiten_reg", "whiten_form", "n_full_components", "full_input",
    "patch_normalize", "n_patches_fit",
)
_HEAD_KEYS = ("pooling", "final_pooling", "batchnorm", "bottleneck")
_LAYER_KEYS = _EMBEDDING_KEYS + _HEAD_KEYS
_CLASSIFIER_AUGMENTATIONS = ("crop",) + _AUGMENTATIONS
# Thiry et al.'s steps: lr / 10 at epochs 50 and 75 of 80
_STEP_MILESTONES = (50 / 80, 75 / 80)


def _no_patch_logits(estimator):
    raise AttributeError(
        f"{type(estimator).__name__} has no patch_logits: its linear layer spans the whole "
        "pooled map, so there is no class evidence of one patch alone to average (and "
        "class_heatmap and blackout_scores do not apply)."
    )


class PatchDictionaryClassifier(BasePatchNetClassifier):
    """A head trained by SGD on a frozen patch-dictionary embedding (Thiry et al.; Brutzkus et al.).

    ``fit`` standardizes the images per channel (the training images' mean
    and deviation, ``channel_mean_`` and ``channel_std_``), fits a
    :class:`~skpatch.PatchDictionaryEmbedding` on them, freezes it as a
    :class:`~skpatch.nn.PatchDictionaryCodes` module (whitening as one
    convolution, nearest atoms on the device) and trains on its code maps
    the published head: average pooling of ``pooling`` windows (ceil mode),
    optionally an adaptive pooling to ``final_pooling``, BatchNorm, a 1x1
    "bottleneck" convolution to ``bottleneck`` channels (a low-rank linear
    map) and a linear layer. The codes are recomputed on every augmented
    batch (random crops with ``crop_padding`` pixels of zero padding and
    horizontal flips), as in the papers.

    The defaults follow Thiry et al.'s k-nearest-neighbour CIFAR-10 runs
    (``louity/patches``, ``kneighbors.py``; 2048 data atoms, k = 0.4 Q, both
    signs of the raw input, 6x6 patches, windows of 5 at stride 3, SGD at
    3e-3 with momentum 0.9 for 80 epochs, lr / 10 at epochs 50 and 75,
    batches of 128, crops with 4 pixels of padding and flips), with the
    bottleneck of 128 channels of their paper. Brutzkus et al.'s head is
    ``pooling=(4, 4), bottleneck=32`` (see the user guide).

    With ``depth > 1``, or ``layers`` a list of per-layer settings, the model
    is built layer by layer: layer ``l``'s dictionary is fitted on the
    output map of layers ``1..l-1`` (their bottleneck outputs, frozen, on
    the un-augmented training images), and a net of the frozen layers, the
    new layer and a new linear layer is trained; only the new layer and the
    linear layer learn. The last net is the fitted model.

    Parameters
    ----------
    patch_size : int or tuple (ph, pw), default=6
        Patch size of the dictionary (stride 1).
    n_atoms : int, default=2048
        Dictionary size ``Q``.
    n_neighbors : int or float, default=0.4
        ``k`` nearest atoms per patch (a float: a fraction of ``n_atoms``).
    dictionary : {'data', 'kmeans', 'gaussian', 'standard_normal'}, default='data'
    encoding : {'hard', 'full', 'triangle', 'soft_threshold'}, default='hard'
    alpha : float, default=0.25
        The threshold of ``encoding='soft_threshold'``.
    both_signs : bool or {'centred', 'raw'}, default='raw'
    whiten : {'zca', 'pca'} or None, default='zca'
    whiten_reg : float, default=1e-3
        In the units of the standardized images.
    whiten_form : {'inside_sqrt', 'outside_sqrt'}, default='inside_sqrt'
    n_full_components : int, default=8
    full_input : {'whitened', 'raw'}, default='whitened'
    patch_normalize : bool, default=False
    n_patches_fit : int, default=262144
        These twelve are :class:`~skpatch.PatchDictionaryEmbedding`'s.
    pooling : tuple (size, stride) or None, default=(5, 3)
        Average pooling windows of the code map, ceil mode (Thiry: (5, 3);
        Brutzkus: (4, 4)); None: no pooling.
    final_pooling : int or None, default=None
        Adaptive average pooling of the pooled map to ``final_pooling x
        final_pooling`` cells (Thiry et al.'s command line uses 6).
    batchnorm : bool, default=True
        BatchNorm of the pooled codes.
    bottleneck : int or None, default=128
        Channels of the 1x1 convolution; None: the linear layer works on the
        pooled codes themselves (a linear model on the embedding). Needed by
        every layer but the last when ``depth > 1``.
    depth : int, default=1
        Number of layers, all with the settings above; ignored when
        ``layers`` is given (then ``depth`` must be 1 or ``len(layers)``).
    layers : list of dict or None, default=None
        Per-layer settings: dict ``i`` overrides, for layer ``i``, any of the
        per-layer parameters above (``patch_size`` ... ``bottleneck``).
    augment : tuple of {'crop', 'flip'} or None, default=('crop', 'flip')
        ``'crop'``: a random crop of the image size from the image padded by
        ``crop_padding`` black pixels (0 before standardization);
        ``'flip'``: a random horizontal flip.
    crop_padding : int, default=4
    max_epochs : int, default=80
    batch_size : int, default=128
    optimizer : {'sgd', 'adam', 'adamw'} or torch.optim.Optimizer class, default='sgd'
    lr : float, default=3e-3
    momentum : float, default=0.9
    weight_decay : float, default=0.0
    lr_schedule : {'step', 'onecycle', 'cosine', 'constant'}, default='step'
        ``'step'``: lr / 10 after 62.5% and 93.75% of the epochs (Thiry et
        al.'s 50 and 75 of 80); the others as in
        :class:`~skpatch.PatchCNNClassifier`.
    train_split : float, callable or None, default=None
    device : {'auto', 'cpu', 'cuda'} or 'cuda:N', default='auto'
        Where the dictionary is fitted and the net trained.
    amp : 'auto' or bool, default='auto'
        bfloat16 autocast of the head (the codes are always float32).
    random_state : int, RandomState instance or None, default=None
        Seeds the dictionaries (patch sampling, atoms, k-means), the initial
        weights, the shuffling, the crops and flips.
    verbose : int, default=1
        0 silent, 1 skorch's epoch table of each layer's training (inference
        stays silent), 2 also the dictionaries' progress, skorch's progress
        bar and a tqdm progress bar on stderr for inference.
    callbacks : list of skorch callbacks or (name, callback) pairs, default=None
    image_shape : tuple (H, W) or (H, W, C), default=None

    Attributes
    ----------
    embeddings_ : list of PatchDictionaryEmbedding
        The fitted dictionary of each layer; ``embeddings_[0]`` encodes
        standardized images ``(X - channel_mean_) / channel_std_``, layer
        ``l``'s the output maps of the layers below (channels last), and its
        ``transform`` gives the pooled codes the layer's BatchNorm sees
        (``final_pooling`` aside).
    n_layers_ : int
    layer_histories_ : list of skorch.History
        The training record of each layer's net (``history_`` is the last).
    classes_, net_, module_, callbacks_, history_, device_, channel_mean_, \
channel_std_, n_features_in_, image_shape_
        As in :class:`~skpatch.PatchCNNClassifier`; ``module_.core`` is a
        :class:`~skpatch.nn.PatchDictionaryNet`.

    Notes
    -----
    There is no ``patch_logits``: the linear layer reads the whole pooled
    map, so no patch has class evidence of its own.

    Sample weights: ``fit(X, y, sample_weight=w)`` weights the images (for
    class imbalance, say). Each training batch's loss is the weighted mean
    ``sum(w_i l_i) / sum(w_i)`` of its images' cross-entropies, so an image of
    weight 0 adds nothing to the loss or its gradient, whatever its label, and
    equal weights train exactly as no weights. The weights enter the loss
    only: every image still counts in the per-channel normalization, the
    batches (and their BatchNorm statistics) and the random augmentation, and the dictionaries, fitted without labels.
    The validation loss of ``train_split`` is weighted too. With metadata
    routing on (``sklearn.set_config(enable_metadata_routing=True)``), a
    Pipeline or GridSearchCV passes them to ``fit`` once asked with
    ``set_fit_request(sample_weight=True)``.

    References
    ----------
    .. [1] L. Thiry, M. Arbel, E. Belilovsky, E. Oyallon. The unreasonable
       effectiveness of patches in deep convolutional kernels methods. ICLR 2021.
    .. [2] A. Brutzkus, A. Globerson, E. Malach, A. Regev Netser,
       S. Shalev-Shwartz. Efficient learning of CNNs using patch based
       features. ICML 2022.

    Examples
    --------
    >>> import numpy as np
    >>> from skpatch import PatchDictionaryClassifier
    >>> rng = np.random.default_rng(0)
    >>> X = rng.random((40, 8, 8)).astype(np.float32)
    >>> y = np.repeat([0, 1], 20)
    >>> X[y == 1, 2:6, 2:6] += 1.0
    >>> clf = PatchDictionaryClassifier(
    ...     patch_size=3, n_atoms=16, n_neighbors=4, pooling=(3, 3), bottleneck=4,
    ...     max_epochs=5, batch_size=8, lr=0.05, device='cpu', verbose=0,
    ...     random_state=0).fit(X, y)
    >>> clf.predict(X[:2]).shape
    (2,)
    """

    _parameter_constraints = {
        **BasePatchNetClassifier._parameter_constraints,
        **{key: PatchDictionaryEmbedding._parameter_constraints[key] for key in _EMBEDDING_KEYS},
        "pooling": [tuple, list, None],
        "final_pooling": [Interval(Integral, 1, None, closed="left"), None],
        "batchnorm": ["boolean"],
        "bottleneck": [Interval(Integral, 1, None, closed="left"), None],
        "depth": [Interval(Integral, 1, None, closed="left")],
        "layers": [list, tuple, None],
        "crop_padding": [Interval(Integral, 0, None, closed="left")],
        "lr_schedule": [StrOptions({"step", "onecycle", "cosine", "constant"})],
        "optimizer": [StrOptions(set(_OPTIMIZERS)), type],
    }

    def __init__(
        self,
        patch_size=6,
        *,
        n_atoms=2048,
        n_neighbors=0.4,
        dictionary="data",
        encoding="hard",
        alpha=0.25,
        both_signs="raw",
        whiten="zca",
        whiten_reg=1e-3,
        whiten_form="inside_sqrt",
        n_full_components=8,
        full_input="whitened",
        patch_normalize=False,
        n_patches_fit=262144,
        pooling=(5, 3),
        final_pooling=None,
        batchnorm=True,
        bottleneck=128,
        depth=1,
        layers=None,
        augment=("crop", "flip"),
        crop_padding=4,
        max_epochs=80,
        batch_size=128,
        optimizer="sgd",
        lr=3e-3,
        momentum=0.9,
        weight_decay=0.0,
        lr_schedule="step",
        train_split=None,
        device="auto",
        amp="auto",
        random_state=None,
        verbose=1,
        callbacks=None,
        image_shape=None,
    ):
        self.patch_size = patch_size
        self.n_atoms = n_atoms
        self.n_neighbors = n_neighbors
        self.dictionary = dictionary
        self.encoding = encoding
        self.alpha = alpha
        self.both_signs = both_signs
        self.whiten = whiten
        self.whiten_reg = whiten_reg
        self.whiten_form = whiten_form
        self.n_full_components = n_full_components
        self.full_input = full_input
        self.patch_normalize = patch_normalize
        self.n_patches_fit = n_patches_fit
        self.pooling = pooling
        self.final_pooling = final_pooling
        self.batchnorm = batchnorm
        self.bottleneck = bottleneck
        self.depth = depth
        self.layers = layers
        self.augment = augment
        self.crop_padding = crop_padding
        self.max_epochs = max_epochs
        self.batch_size = batch_size
        self.optimizer = optimizer
        self.lr = lr
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.lr_schedule = lr_schedule
        self.train_split = train_split
        self.device = device
        self.amp = amp
        self.random_state = random_state
        self.verbose = verbose
        self.callbacks = callbacks
        self.image_shape = image_shape

    # ---- settings --------------------------------------------------------
    def _layer_settings(self):
        """One dict of the per-layer settings per layer, each checked."""
        if self.layers is None:
            n_layers, overrides = int(self.depth), [{}] * int(self.depth)
        else:
            overrides = list(self.layers)
            if not overrides:
                raise ValueError("layers=[] holds no layer; pass None or a list of dicts.")
            if self.depth not in (1, len(overrides)):
                raise ValueError(
                    f"depth={self.depth} contradicts layers, a list of {len(overrides)} "
                    "layer settings; leave depth=1 when layers is given."
                )
            n_layers = len(overrides)
        base = {key: getattr(self, key) for key in _LAYER_KEYS}
        settings = []
        for index, override in enumerate(overrides):
            where = "" if self.layers is None else f"layers[{index}]: "
            if not isinstance(override, dict):
                raise ValueError(f"{where}each entry of layers must be a dict, got "
                                 f"{type(override).__name__}.")
            unknown = sorted(set(override) - set(_LAYER_KEYS))
            if unknown:
                raise ValueError(f"{where}unknown layer settings {unknown}; layers entries "
                                 f"take keys among {list(_LAYER_KEYS)}.")
            layer = {**base, **override}
            try:
                PatchDictionaryEmbedding(**{k: layer[k] for k in _EMBEDDING_KEYS})._validate_params()
                self._check_head_settings(layer)
            except (ValueError, TypeError) as exc:
                raise type(exc)(f"{where}{exc}") from None
            if index < n_layers - 1 and layer["bottleneck"] is None:
                raise ValueError(
                    f"{where}bottleneck=None in layer {index} of {n_layers}: every layer but "
                    "the last needs a bottleneck, whose output map the next dictionary "
                    "is fitted on."
                )
            settings.append(layer)
        return settings

    @staticmethod
    def _check_head_settings(layer):
        pooling = layer["pooling"]
        if pooling is not None and not (
            isinstance(pooling, (tuple, list)) and len(pooling) == 2
            and all(isinstance(v, Integral) and not isinstance(v, bool) and v >= 1
                    for v in pooling)
        ):
            raise ValueError(
                f"pooling={pooling!r} must be a pair (window size, window stride) of "
                "positive ints, or None (no pooling)."
            )
        for key in ("final_pooling", "bottleneck"):
            value = layer[key]
            if value is not None and (not isinstance(value, Integral) or isinstance(value, bool)
                                      or value < 1):
                raise ValueError(f"{key}={value!r} must be a positive int or None.")
        if not isinstance(layer["batchnorm"], (bool, np.bool_)):
            raise ValueError(f"batchnorm={layer['batchnorm']!r} must be a bool.")

    def _check_params_vs_input(self, images):
        check_device_param(self.device)
        augment = () if self.augment is None else tuple(self.augment)
        unknown = [a for a in augment if a not in _CLASSIFIER_AUGMENTATIONS]
        if unknown:
            raise ValueError(
                f"augment must hold entries of {_CLASSIFIER_AUGMENTATIONS}, got {self.augment!r}."
            )
        self._augment = augment

    def _uses_patch_inference(self):
        return False

    @available_if(_no_patch_logits)
    def patch_logits(self, X, *, stride=None, padding=0):  # pragma: no cover - unavailable
        """Not available: see the class Notes."""

    def _skorch_callbacks(self):
        callbacks = super()._skorch_callbacks()
        if self.lr_schedule == "step":
            milestones = sorted({max(1, round(f * self.max_epochs)) for f in _STEP_MILESTONES})
            callbacks.insert(0, ("lr_schedule", LRScheduler(
                policy=torch.optim.lr_scheduler.MultiStepLR, milestones=milestones, gamma=0.1,
            )))
        return callbacks

    # ---- fitting ---------------------------------------------------------
    def _standardized(self, images):
        """``(n, C, H, W)`` float32 images standardized as ``PatchNetModule`` does."""
        x = np.ascontiguousarray(images.transpose(0, 3, 1, 2), dtype=np.float32)
        # the statistics the base computes in fit, to the bit
        mean = x.mean(axis=(0, 2, 3), dtype=np.float64)
        std = x.std(axis=(0, 2, 3), dtype=np.float64)
        std[std < 1e-8] = 1.0
        mean32 = torch.as_tensor(mean.astype(np.float32)).view(1, -1, 1, 1)
        std32 = torch.as_tensor(std.astype(np.float32)).view(1, -1, 1, 1)
        return (torch.from_numpy(x) - mean32) / std32, mean, std

    def _layer_inputs(self, x, n_layers):
        """Output maps ``(n, h, w, c)`` of the first ``n_layers`` trained layers (eval mode)."""
        if n_layers == 0:
            return x.permute(0, 2, 3, 1).numpy()
        core = self.module_.core
        device = self.device_
        chunks = []
        with torch.no_grad():
            for start in range(0, x.shape[0], self.batch_size):
                batch = x[start : start + self.batch_size].to(device)
                out = core.eval().features(batch, n_layers)
                chunks.append(out.float().permute(0, 2, 3, 1).cpu().numpy())
        return np.concatenate(chunks)

    def _fit_dictionary(self, index, inputs, seed):
        layer = self._settings[index]
        embedding = PatchDictionaryEmbedding(
            **{k: layer[k] for k in _EMBEDDING_KEYS}, stride=1,
            pooling=None if layer["pooling"] is None else tuple(layer["pooling"]),
            device=self.device, random_state=seed, verbose=max(0, int(self.verbose) - 1),
        )
        try:
            embedding.fit(inputs)
        except ValueError as exc:
            where = f"layer {index} (on its {inputs.shape[1]} x {inputs.shape[2]} input map)"
            raise ValueError(f"{where}: {exc}") from None
        self._check_final_pooling(index, embedding)
        return embedding

    def _check_final_pooling(self, index, embedding):
        final = self._settings[index]["final_pooling"]
        grid = embedding.pooled_grid_shape_
        if final is not None and final > min(grid):
            raise ValueError(
                f"final_pooling={final} in layer {index}: the pooled map is only "
                f"{grid[0]} x {grid[1]}; final_pooling must be <= {min(grid)}."
            )

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y, sample_weight=None):
        """Fit the dictionaries and train the head, layer by layer.

        Parameters
        ----------
        X : array-like of shape (n, H, W), (n, H, W, C) or (n, H*W*C)
            Training images (2-D rows need ``image_shape``); uint8 is scaled to [0, 1].
        y : array-like of shape (n,)
            Class labels; at least two classes.
        sample_weight : array-like of shape (n,) or float, default=None
            Weights of the images in the loss of every layer's training (see
            the class Notes); the dictionaries are fitted without them.
            Finite, non-negative, not all zero; equal weights train exactly
            as None.

        Returns
        -------
        self : PatchDictionaryClassifier

        Raises
        ------
        ValueError
            If training diverges (a non-finite loss or weight), naming the
            layer, the epoch and ``lr``; the estimator is then left unfitted.
            If ``sample_weight`` is negative, non-finite, all zero or not one
            per image.
        """
        with self._fresh_fit():
            return self._fit_layers(X, y, sample_weight)

    def _fit_stage(self):
        n_layers = len(self._settings)
        return "" if n_layers == 1 else f"layer {self._stage + 1} of {n_layers}"

    def _fit_layers(self, X, y, sample_weight=None):
        self._settings = self._layer_settings()
        rng = check_random_state(self.random_state)
        seeds = rng.randint(np.iinfo(np.int32).max, size=len(self._settings))
        images = validate_images(self, X, reset=True, dtype="float")
        self._validate_targets(images, y)  # labels of one class fail before any dictionary
        _fit_sample_weight(sample_weight, images)  # so do bad weights
        self._check_params_vs_input(images)
        self.device_ = resolve_device(self.device)
        x, mean, std = self._standardized(images)
        self._channel_stats = (mean, std)
        self.embeddings_, self.layer_histories_, self._trained_layers = [], [], []
        for index in range(len(self._settings)):
            inputs = self._layer_inputs(x, index)
            self.embeddings_.append(self._fit_dictionary(index, inputs, int(seeds[index])))
            self._stage = index
            self._fit_net(X, y, sample_weight)
            self.layer_histories_.append(self.history_)
            self._trained_layers = list(self.module_.core.layers)
            self.module_.core.generator = None  # a CUDA generator would not unpickle on a CPU
        self.n_layers_ = len(self._settings)
        del self._trained_layers
        return self

    def _build_module(self, n_classes, n_channels, generator):
        index = self._stage
        layer = self._settings[index]
        codes = PatchDictionaryCodes.from_embedding(self.embeddings_[index])
        embedding = self.embeddings_[index]
        grid = embedding.pooled_grid_shape_
        if layer["final_pooling"] is not None:
            grid = (layer["final_pooling"],) * 2
        pooling = None if layer["pooling"] is None else tuple(layer["pooling"])
        n_codes, width = codes.n_codes, layer["bottleneck"]
        out_channels = n_codes if width is None else int(width)

        def trainable():
            parts = torch.nn.Module()
            parts.norm = torch.nn.BatchNorm2d(n_codes) if layer["batchnorm"] else torch.nn.Identity()
            parts.bottleneck = (torch.nn.Identity() if width is None
                                else torch.nn.Conv2d(n_codes, out_channels, 1))
            parts.classifier = torch.nn.Linear(out_channels * grid[0] * grid[1], n_classes)
            return parts

        parts = build_initialized(trainable, generator)
        new = PatchDictionaryLayer(codes, pooling=pooling, final_pooling=layer["final_pooling"],
                                   batchnorm=layer["batchnorm"], bottleneck=width)
        new.norm, new.bottleneck = parts.norm, parts.bottleneck
        frozen = [copy.deepcopy(trained) for trained in self._trained_layers[:index]]
        crop_seed = int(torch.randint(2**62, (1,), generator=generator))
        crop_generator = torch.Generator(device=self.device_).manual_seed(crop_seed)
        # 0 before standardization: the black padding of torchvision's RandomCrop
        mean, std = self._channel_stats
        pad_value = (-mean / std).astype(np.float32)
        return PatchDictionaryNet(
            frozen + [new], parts.classifier, n_frozen=index,
            crop_padding=self.crop_padding if "crop" in self._augment else 0,
            pad_value=pad_value, generator=crop_generator,
        )
