"""The whitened patch dictionary embedding (Coates et al. 2011; Thiry et al. 2021; Brutzkus et al. 2022).

:class:`PatchDictionaryEmbedding` is a thin estimator (``_embedding.py``) over
a private engine built from its fitted arrays: the search and the encodings
(``_encoder.py``, ``_encodings.py``), the whitening (``_whitening.py``) and
the spatial pooling (``_pooling.py``). torch and faiss load only when the
engine is first built.
"""

from ._embedding import PatchDictionaryEmbedding

__all__ = ["PatchDictionaryEmbedding"]
