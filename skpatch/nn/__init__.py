"""Pure torch modules used by the skpatch classifiers.

Importing this subpackage imports torch; ``import skpatch`` does not.
"""

from ._patch_net import (
    PatchNetModule,
    build_initialized,
    build_seeded,
    init_parameters,
    random_crop,
    sliding_window_logits,
)
from ._dictionary import PatchDictionaryCodes, PatchDictionaryLayer, PatchDictionaryNet
from .bagnet import BAGNET_KERNEL3, BagNet, Bottleneck, bagnet9, bagnet17, bagnet33
from .resnet import BasicBlock, CIFARResNet, resnet, resnet10, resnet18, resnet34

__all__ = [
    "BAGNET_KERNEL3",
    "BagNet",
    "BasicBlock",
    "Bottleneck",
    "CIFARResNet",
    "PatchDictionaryCodes",
    "PatchDictionaryLayer",
    "PatchDictionaryNet",
    "PatchNetModule",
    "bagnet9",
    "bagnet17",
    "bagnet33",
    "build_initialized",
    "build_seeded",
    "init_parameters",
    "random_crop",
    "resnet",
    "resnet10",
    "resnet18",
    "resnet34",
    "sliding_window_logits",
]
