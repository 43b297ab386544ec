"""Patch classifiers trained with skorch, each in its own module over one shared base.

- :class:`PatchCNNClassifier` (``_patch_cnn.py``): a CNN trained on random
  TxT crops, predicting by averaging patch logits (Madala et al.);
- :class:`BagNetClassifier` (``_bagnet.py``): BagNet-9/17/33 and the loading
  of the authors' weights (Brendel & Bethge 2019);
- :class:`PatchDictionaryClassifier` (``_dictionary.py``): the published
  heads on a frozen patch dictionary, layer by layer (Thiry et al. 2021;
  Brutzkus et al. 2022).

The training loop, devices, divergence checks and chunked patch inference
they share are in ``_base.py``. Importing this package imports torch.
"""

from ._bagnet import BagNetClassifier
from ._dictionary import PatchDictionaryClassifier
from ._patch_cnn import PatchCNNClassifier

__all__ = ["BagNetClassifier", "PatchCNNClassifier", "PatchDictionaryClassifier"]
