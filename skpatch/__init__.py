"""skpatch: scikit-learn compatible estimators for learning on image patches.

Every estimator takes images as ``(n, H, W)``, ``(n, H, W, C)`` or flattened
rows ``(n, H*W*C)`` with ``image_shape=(H, W[, C])``, and returns one row per
image, so they compose in a :class:`~sklearn.pipeline.Pipeline`.

Heavy dependencies (torch, faiss) are imported only when an estimator that
needs them is first accessed: ``import skpatch`` stays cheap.
"""

import importlib

__version__ = "0.1.0.dev0"

# public name -> submodule that defines it; loaded on first attribute access
_LAZY_NAMES = {
    "PatchExtractor": "extraction",
    "extract_patches": "extraction",
    "reconstruct_from_patches": "extraction",
    "check_images": "utils._validation",
    "PatchBoundPredictor": "bounds",
    "generalization_bound": "bounds",
    "PatchDictionaryEmbedding": "embedding",
    "PatchOrderer": "ordering",
    "order_patches": "ordering",
    "unorder_patches": "ordering",
    "PatchCNNClassifier": "classifiers",
    "BagNetClassifier": "classifiers",
    "PatchDictionaryClassifier": "classifiers",
    "class_heatmap": "inspection",
    "blackout_scores": "inspection",
}

_SUBMODULES = ["bounds", "datasets", "embedding", "extraction", "ordering", "utils"]
_SUBMODULES += ["classifiers", "diagnostics", "inspection", "nn", "plotting", "scaling"]

__all__ = sorted(list(_LAZY_NAMES) + _SUBMODULES + ["__version__"])


def __getattr__(name):
    if name in _LAZY_NAMES:
        module = importlib.import_module(f".{_LAZY_NAMES[name]}", __name__)
        value = getattr(module, name)
        globals()[name] = value
        return value
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'skpatch' has no attribute {name!r}")


def __dir__():
    return __all__
