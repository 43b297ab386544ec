"""``set_output`` and feature names of every public transformer.

A transformer with a 2-D output names its features and can return a pandas
DataFrame (scikit-learn's own set_output checks run on it); one whose output
is N-D (an unflattened patch grid or image) refuses a DataFrame with a
``ValueError`` that says why. Methods returning maps never go through the
output wrapper.
"""

import numpy as np
import pytest
from sklearn import config_context
from sklearn.base import TransformerMixin, clone
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import (
    check_global_output_transform_pandas,
    check_set_output_transform,
    check_set_output_transform_pandas,
)

import skpatch
from _helpers import TINY_EMBEDDING
from skpatch import PatchDictionaryEmbedding, PatchExtractor, PatchOrderer

pd = pytest.importorskip("pandas")

# public transformer -> settings whose output is 2-D rows (image_shape=(1, -1):
# any row is a one-pixel-high image, as in test_common)
TABLE_SETTINGS = {
    "PatchExtractor": PatchExtractor(patch_size=(1, 2), flatten=True, image_shape=(1, -1)),
    "PatchOrderer": PatchOrderer(patch_size=(1, 1), measure="l2", flatten=True,
                                 image_shape=(1, -1)),
    "PatchDictionaryEmbedding": PatchDictionaryEmbedding(
        patch_size=1, n_atoms=4, n_neighbors=2, dictionary="gaussian", pooling=1,
        image_shape=(1, -1), random_state=0,
    ),
}
# public transformer -> settings whose output is N-D
ND_SETTINGS = {
    "PatchExtractor": PatchExtractor(patch_size=2),
    "PatchOrderer": PatchOrderer(patch_size=4),
}


def _public_transformers():
    names = []
    for name in skpatch.__all__:
        try:
            value = getattr(skpatch, name)
        except ImportError:  # an optional package is absent
            continue
        if isinstance(value, type) and issubclass(value, TransformerMixin):
            names.append(name)
    return names


def _images(n=6, size=8, channels=3, seed=0):
    return np.random.default_rng(seed).random((n, size, size, channels)).astype(np.float32)


def test_every_public_transformer_is_covered():
    found = set(_public_transformers())
    assert {"PatchExtractor", "PatchOrderer", "PatchDictionaryEmbedding"} <= found
    assert found <= set(TABLE_SETTINGS), f"add set_output settings for {found - set(TABLE_SETTINGS)}"


# the checks feed a DataFrame to fit and arrays to transform, or the reverse
@pytest.mark.filterwarnings("ignore:X (has|does not have valid) feature names:UserWarning")
@pytest.mark.parametrize("name", sorted(TABLE_SETTINGS))
@pytest.mark.parametrize(
    "check",
    [check_set_output_transform, check_set_output_transform_pandas,
     check_global_output_transform_pandas],
    ids=lambda check: check.__name__,
)
def test_sklearn_set_output_checks(name, check):
    check(name, clone(TABLE_SETTINGS[name]))


@pytest.mark.parametrize("name", sorted(TABLE_SETTINGS))
def test_two_d_output_names_its_features(name):
    X = np.random.default_rng(0).random((8, 6))
    transformer = clone(TABLE_SETTINGS[name])
    out = transformer.fit_transform(X)
    names = transformer.get_feature_names_out()
    assert names.shape == (out.shape[1],) and len(set(names)) == len(names)


def test_pipeline_with_flattened_orderer_outputs_a_dataframe():
    X = _images()
    plain = make_pipeline(PatchOrderer(flatten=True), StandardScaler()).fit_transform(X)
    pipe = make_pipeline(PatchOrderer(flatten=True), StandardScaler())
    frame = pipe.set_output(transform="pandas").fit_transform(X)
    assert isinstance(frame, pd.DataFrame)
    assert list(frame.columns[:4]) == ["row0_col0_ch0", "row0_col0_ch1", "row0_col0_ch2",
                                       "row0_col1_ch0"]
    assert list(frame.columns) == list(pipe[0].get_feature_names_out())
    np.testing.assert_array_equal(frame.to_numpy(), plain)
    assert isinstance(pipe.transform(X), pd.DataFrame)


def test_orderer_feature_names_follow_the_image_layout():
    orderer = PatchOrderer(patch_size=2, flatten=True).fit(_images(size=4, channels=1)[..., 0])
    names = orderer.get_feature_names_out()
    assert names[0] == "row0_col0_ch0" and names[-1] == "row3_col3_ch0" and len(names) == 16
    assert not hasattr(PatchOrderer(patch_size=2).fit(_images()), "get_feature_names_out")


@pytest.mark.parametrize("name", sorted(ND_SETTINGS))
@pytest.mark.parametrize("output", ["pandas", "polars"])
def test_nd_output_refuses_a_dataframe_with_the_reason(name, output):
    transformer = clone(ND_SETTINGS[name])
    with pytest.raises(ValueError, match=r"flatten=False\) returns .* not a 2-D table.*flatten=True"):
        transformer.set_output(transform=output)
    with pytest.raises(ValueError, match="not a 2-D table"):
        make_pipeline(transformer, StandardScaler()).set_output(transform=output)
    # the default container is fine, and arrays come out
    assert transformer.set_output(transform="default") is transformer
    assert transformer.set_output() is transformer
    assert isinstance(transformer.fit_transform(_images()), np.ndarray)


@pytest.mark.parametrize("name", sorted(ND_SETTINGS))
def test_dataframe_output_then_unflattened_is_an_error_not_an_array(name):
    transformer = clone(ND_SETTINGS[name]).set_params(flatten=True).set_output(transform="pandas")
    assert isinstance(transformer.fit_transform(_images()), pd.DataFrame)
    transformer.set_params(flatten=False)
    with pytest.raises(ValueError, match="not a 2-D table"):
        transformer.fit_transform(_images())


@pytest.mark.parametrize("name", sorted(ND_SETTINGS))
def test_global_pandas_output_passes_nd_arrays_through(name):
    X = _images()
    expected = clone(ND_SETTINGS[name]).fit_transform(X)
    with config_context(transform_output="pandas"):
        out = clone(ND_SETTINGS[name]).fit_transform(X)
    assert isinstance(out, np.ndarray)
    np.testing.assert_array_equal(out, expected)


def test_transform_maps_is_never_wrapped():
    X = _images()
    embedding = PatchDictionaryEmbedding(**TINY_EMBEDDING).fit(X)
    expected = embedding.transform_maps(X)
    assert expected.ndim == 4
    embedding.set_output(transform="pandas")
    assert isinstance(embedding.transform(X), pd.DataFrame)
    maps = embedding.transform_maps(X)
    assert isinstance(maps, np.ndarray)
    np.testing.assert_array_equal(maps, expected)
    embedding.set_output(transform="default")
    with config_context(transform_output="pandas"):
        maps = embedding.transform_maps(X)
    assert isinstance(maps, np.ndarray)
    np.testing.assert_array_equal(maps, expected)
