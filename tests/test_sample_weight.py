"""``fit(X, y, sample_weight)`` of the three torch patch classifiers.

Each batch's loss is the weighted mean of its images' losses. The invariants
are checked bit for bit on seeded CPU fits: an image of weight 0 whose label
is changed trains the same network (removing it instead would change the
batches and the crops drawn, so that is not what is compared), and equal
weights of any value train exactly as no weights (the weights are divided by
the largest, and equal ones take the unweighted path).
"""

import copy

import numpy as np
import pytest
import sklearn
import torch
from sklearn.exceptions import UnsetMetadataPassedError
from sklearn.model_selection import GridSearchCV, KFold
from sklearn.pipeline import Pipeline
from skorch.callbacks import Callback

from _helpers import TINY_BAGNET, TINY_PATCH_CNN, TinyPatchNet, reference_images
from skpatch import BagNetClassifier, PatchCNNClassifier, PatchDictionaryClassifier

N_IMAGES = 24


def _patch_cnn(**params):
    return PatchCNNClassifier(patch_size=4, **{**TINY_PATCH_CNN, "max_epochs": 2, **params})


def _bagnet(**params):
    return BagNetClassifier(**{**TINY_BAGNET, "max_epochs": 2, **params})


def _dictionary(**params):
    settings = dict(
        patch_size=3, n_atoms=16, n_neighbors=4, pooling=(3, 3), bottleneck=4,
        max_epochs=2, batch_size=8, lr=0.05, device="cpu", verbose=0, random_state=0,
    )
    return PatchDictionaryClassifier(**{**settings, **params})


CLASSIFIERS = {
    "PatchCNNClassifier": _patch_cnn,
    "BagNetClassifier": _bagnet,
    "PatchDictionaryClassifier": _dictionary,
}


@pytest.fixture(scope="module")
def data():
    return reference_images(N_IMAGES, 12, 12, 3)


def _unequal_weights():
    weights = np.ones(N_IMAGES)
    weights[::5] = 2.5
    weights[3] = 0.0
    return weights


def _state(clf):
    return [t.detach().clone() for t in (*clf.module_.parameters(), *clf.module_.buffers())]


def _assert_same_network(a, b):
    state_a, state_b = _state(a), _state(b)
    assert len(state_a) == len(state_b)
    for tensor_a, tensor_b in zip(state_a, state_b):
        assert tensor_a.shape == tensor_b.shape
        assert torch.equal(tensor_a, tensor_b)


def _assert_different_network(a, b):
    assert not all(torch.equal(p, q) for p, q in zip(_state(a), _state(b)))


@pytest.mark.parametrize("name", sorted(CLASSIFIERS))
def test_zero_weight_image_label_is_never_read(name, data):
    X, y = data
    make = CLASSIFIERS[name]
    weights = _unequal_weights()
    relabelled = y.copy()
    relabelled[3] = 1 - relabelled[3]  # the image of weight 0 changes class
    a = make().fit(X, y, sample_weight=weights)
    b = make().fit(X, relabelled, sample_weight=weights)
    _assert_same_network(a, b)
    np.testing.assert_array_equal(a.predict_proba(X), b.predict_proba(X))
    # the weights do change the fit (the test above is not vacuous)
    _assert_different_network(a, make().fit(X, y))


@pytest.mark.parametrize("name", sorted(CLASSIFIERS))
@pytest.mark.parametrize("value", [1.0, 2.0, 0.3])
def test_equal_weights_train_exactly_as_no_weights(name, value, data):
    X, y = data
    make = CLASSIFIERS[name]
    plain = make().fit(X, y)
    weighted = make().fit(X, y, sample_weight=np.full(N_IMAGES, value))
    _assert_same_network(plain, weighted)
    np.testing.assert_array_equal(plain.predict_proba(X), weighted.predict_proba(X))
    scalar = make().fit(X, y, sample_weight=value)
    _assert_same_network(plain, scalar)


@pytest.mark.parametrize("name", sorted(CLASSIFIERS))
def test_weights_scale_free(name, data):
    # a batch's loss is a weighted mean: multiplying all weights by 2 changes nothing
    X, y = data
    make = CLASSIFIERS[name]
    weights = _unequal_weights()
    _assert_same_network(
        make().fit(X, y, sample_weight=weights), make().fit(X, y, sample_weight=2 * weights)
    )


@pytest.mark.parametrize("name", sorted(CLASSIFIERS))
@pytest.mark.parametrize(
    "weights, match",
    [
        (-np.ones(N_IMAGES), "sample_weight"),
        (np.r_[np.ones(N_IMAGES - 1), np.nan], "sample_weight"),
        (np.r_[np.ones(N_IMAGES - 1), np.inf], "sample_weight"),
        (np.ones(N_IMAGES - 1), "sample_weight"),
        (np.ones((N_IMAGES, 2)), "sample_weight"),
        (np.zeros(N_IMAGES), "sample_weight"),
    ],
    ids=["negative", "nan", "inf", "too-few", "2-d", "all-zero"],
)
def test_bad_weights_are_a_value_error_naming_sample_weight(name, weights, match, data):
    X, y = data
    clf = CLASSIFIERS[name]()
    with pytest.raises(ValueError, match=match):
        clf.fit(X, y, sample_weight=weights)
    assert not hasattr(clf, "classes_")  # nothing of a half fit is left


class _InitialModule(Callback):
    """Keeps a copy of the module as it is before the first step."""

    def on_train_begin(self, net, X=None, y=None, **kwargs):
        self.module = copy.deepcopy(net.module_).eval()


def test_batch_loss_is_the_weighted_cross_entropy(data):
    X, y = data
    weights = np.linspace(0.0, 3.0, N_IMAGES)
    initial = _InitialModule()
    # one batch of whole images (crop = image, no flips): its loss is computable by hand
    clf = PatchCNNClassifier(
        patch_size=12, module=TinyPatchNet, augment=None, max_epochs=1, batch_size=32,
        lr=0.05, lr_schedule="constant", device="cpu", verbose=0, random_state=0,
        callbacks=[("initial", initial)],
    ).fit(X, y, sample_weight=weights)
    batches = clf.history_[0]["batches"]
    assert len(batches) == 1
    with torch.no_grad():
        logits = clf.callbacks_["initial"].module(
            torch.as_tensor(np.ascontiguousarray(X.transpose(0, 3, 1, 2)))
        )
    losses = torch.nn.functional.cross_entropy(
        logits.double(), torch.as_tensor(np.array(y, dtype=np.int64)), reduction="none"
    ).numpy()
    expected = np.sum(weights * losses) / np.sum(weights)
    # float32 sums in the shuffled batch order against a float64 sum
    np.testing.assert_allclose(batches[0]["train_loss"], expected, rtol=1e-6)
    assert not np.isclose(expected, losses.mean(), rtol=1e-3)


def test_fit_request_routes_through_pipeline_and_grid_search(data):
    X, y = data
    weights = _unequal_weights()
    expected = _patch_cnn().fit(X, y, sample_weight=weights)
    with sklearn.config_context(enable_metadata_routing=True):
        clf = _patch_cnn().set_fit_request(sample_weight=True)
        pipe = Pipeline([("clf", clf)]).fit(X, y, sample_weight=weights)
        _assert_same_network(pipe.named_steps["clf"], expected)

        clf = _patch_cnn().set_fit_request(sample_weight=True)
        clf.set_score_request(sample_weight=True)
        search = GridSearchCV(clf, {"lr": [0.05]}, cv=KFold(2)).fit(
            X, y, sample_weight=weights
        )
        _assert_same_network(search.best_estimator_, expected)

        # asked for nothing: routing refuses weights it would otherwise drop
        with pytest.raises(UnsetMetadataPassedError):
            Pipeline([("clf", _patch_cnn())]).fit(X, y, sample_weight=weights)


def test_pipeline_step_parameter_without_routing(data):
    X, y = data
    weights = _unequal_weights()
    pipe = Pipeline([("clf", _patch_cnn())]).fit(X, y, clf__sample_weight=weights)
    _assert_same_network(pipe.named_steps["clf"], _patch_cnn().fit(X, y, sample_weight=weights))


@pytest.mark.parametrize("name", sorted(CLASSIFIERS))
def test_sample_weight_is_documented(name):
    cls = type(CLASSIFIERS[name]())
    assert "sample_weight" in cls.__doc__
    assert "sample_weight" in cls.fit.__doc__
    assert "set_fit_request" in cls.__doc__
