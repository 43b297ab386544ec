"""scikit-learn's estimator checks over every public estimator.

Each entry of ``ESTIMATORS`` is a fast, seeded setting. Images enter the
checks as 2-D rows; ``image_shape=(1, -1)`` reads each row as a one-pixel-high
strip, so every check (any number of features) has a valid image layout.
``EXPECTED_FAILED`` maps an estimator class name to the checks that cannot
apply to images, each with its reason. Later components add their rows here.
"""

from sklearn.utils.estimator_checks import parametrize_with_checks

from skpatch import PatchDictionaryEmbedding, PatchExtractor

ESTIMATORS = [
    PatchExtractor(patch_size=(1, 1), image_shape=(1, -1), flatten=True),
    PatchDictionaryEmbedding(
        patch_size=1, n_atoms=4, n_neighbors=2, dictionary="gaussian", pooling=1,
        image_shape=(1, -1), random_state=0,
    ),
]

EXPECTED_FAILED = {
    "PatchExtractor": {},
    "PatchDictionaryEmbedding": {},
}


def _expected_failed_checks(estimator):
    return EXPECTED_FAILED.get(type(estimator).__name__, {})


@parametrize_with_checks(ESTIMATORS, expected_failed_checks=_expected_failed_checks)
def test_sklearn_compatible_estimator(estimator, check):
    check(estimator)
