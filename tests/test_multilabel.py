"""Multi-label AS-Softmax: values, gradients, edge cases, training."""

import keras
import numpy as np
import pytest
from keras import ops

from keras_as_softmax import MultiLabelASSoftmaxCrossentropy
from keras_as_softmax import multilabel_as_softmax_crossentropy
from keras_as_softmax import multilabel_as_softmax_mask
from keras_as_softmax._keras_private import set_keras_mask
from tests import reference
from tests.helpers import JIT
from tests.helpers import value_and_grad
from tests.helpers import to_numpy

EXAMPLE_LOGITS = np.array(
    [[1.2, 1.5, 1.0, -0.35], [2.5, 3.5, 0.4, 0.3], [2.5, 3.5, 0.4, 0.3]],
    dtype="float32",
)
EXAMPLE_TARGETS = np.array([[1, 1, 0, 0], [0, 1, 1, 0], [1, 1, 0, 1]])


def random_multilabel(shape, scale, seed):
    """Logits and multi-hot targets, with positives pushed up in half the rows,
    and some rows with no positive or no negative label."""
    rng = np.random.default_rng(seed)
    positive = rng.random(shape) < rng.uniform(0.05, 0.5, shape[:-1] + (1,))
    rows = positive.reshape(-1, shape[-1])
    rows[0] = False
    rows[1] = True
    logits = scale * rng.standard_normal(shape)
    learned = rng.random(shape[:-1] + (1,)) < 0.5
    logits = np.where(positive & learned, logits + 2.0 * scale, logits)
    return positive.astype("float32"), logits.astype("float32")


def assert_matches_reference(y, s, delta, jit=False, check_ties_rare=True):
    keep = to_numpy(multilabel_as_softmax_mask(y, s, delta)[0]).astype(bool)
    ref_loss, ref_grad, ref_keep, num_ties = reference.multilabel_as_softmax(
        y, s, delta, tie_keep=keep
    )
    if check_ties_rare:
        assert num_ties <= max(2, ref_keep.size // 1000)
    np.testing.assert_array_equal(keep, ref_keep)
    weights = np.random.default_rng(1).random(ref_loss.shape)

    def weighted_sum(logits):
        losses = multilabel_as_softmax_crossentropy(y, logits, delta=delta)
        return ops.sum(losses * ops.convert_to_tensor(weights, "float32"))

    value, grad = value_and_grad(weighted_sum, s, jit=jit)
    np.testing.assert_allclose(
        to_numpy(multilabel_as_softmax_crossentropy(y, s, delta=delta)),
        ref_loss, rtol=1e-5, atol=1e-5,
    )
    np.testing.assert_allclose(value, np.sum(ref_loss * weights), rtol=1e-5)
    np.testing.assert_allclose(
        grad, ref_grad * weights[..., None], rtol=1e-4, atol=1e-6
    )
    return ref_keep


def test_reference_readme_example():
    losses = to_numpy(multilabel_as_softmax_crossentropy(EXAMPLE_TARGETS, EXAMPLE_LOGITS))
    np.testing.assert_allclose(losses, [1.5765, 3.1894, 1.4674], atol=1e-4)
    loss = MultiLabelASSoftmaxCrossentropy(delta=0.1)(EXAMPLE_TARGETS, EXAMPLE_LOGITS)
    np.testing.assert_allclose(to_numpy(loss), 2.0778, atol=1e-4)
    plain = MultiLabelASSoftmaxCrossentropy(delta=1.0)(EXAMPLE_TARGETS, EXAMPLE_LOGITS)
    np.testing.assert_allclose(to_numpy(plain), 2.2152, atol=1e-4)


@pytest.mark.parametrize(
    "shape, scale",
    [((16, 10), 2.0), ((4, 6, 12), 2.0), ((8, 300), 3.0)],
    ids=["C10", "tokens", "C300"],
)
@pytest.mark.parametrize("delta", [0.0, 0.1, 0.5, 1.0])
def test_matches_numpy_reference(shape, scale, delta):
    y, s = random_multilabel(shape, scale, seed=shape[-1])
    keep = assert_matches_reference(y, s, delta)
    if delta == 1.0:
        assert keep.all()
    elif delta <= 0.1:
        assert not keep.all(), "inputs too easy: nothing was dropped"


def test_matches_numpy_reference_compiled():
    y, s = random_multilabel((4, 6, 40), 3.0, seed=2)
    assert_matches_reference(y, s, 0.1, jit=True)


def plain_multilabel_loss(y, s):
    every = np.ones_like(np.asarray(y), bool)
    return (
        reference._logsumexp_with_zero(np.where(y > 0.5, -np.inf, s), every)[0]
        + reference._logsumexp_with_zero(np.where(y > 0.5, -s, -np.inf), every)[0]
    )


def test_delta_one_is_the_plain_loss():
    y, s = random_multilabel((32, 15), 3.0, seed=4)
    np.testing.assert_allclose(
        to_numpy(multilabel_as_softmax_crossentropy(y, s, delta=1.0)),
        plain_multilabel_loss(y, s.astype(np.float64)), rtol=1e-5, atol=1e-6,
    )


def test_no_positive_and_all_positive_samples_keep_every_term():
    s = np.array([[3.0, -2.0, 0.5, -4.0], [3.0, -2.0, 0.5, -4.0]], "float32")
    y = np.array([[0, 0, 0, 0], [1, 1, 1, 1]], "float32")
    for delta in (0.0, 0.1):
        keep, num_masked, _ = multilabel_as_softmax_mask(y, s, delta)
        assert to_numpy(keep).all() and int(num_masked) == 0
        np.testing.assert_allclose(
            to_numpy(multilabel_as_softmax_crossentropy(y, s, delta)),
            plain_multilabel_loss(y, s.astype(np.float64)), rtol=1e-6,
        )


def test_equality_is_kept():
    # Equal logits give exactly equal probabilities: at delta 0 the negative
    # tied with the weakest positive, and that positive, are both kept.
    s = np.array([[1.0, 1.0, -5.0, 3.0]], "float32")
    y = np.array([[1, 0, 0, 1]], "float32")
    keep = to_numpy(multilabel_as_softmax_mask(y, s, 0.0)[0]).astype(bool)
    np.testing.assert_array_equal(keep, [[True, True, False, False]])


def test_masked_sample_has_zero_loss_and_gradient():
    # Positives far above negatives: every term is dropped at delta 0.1.
    s = np.array([[8.0, 7.5, -3.0, -4.0], [1.0, 0.5, 0.0, -0.2]], "float32")
    y = np.array([[1, 1, 0, 0], [1, 0, 0, 1]], "float32")
    keep, num_masked, num_counted = multilabel_as_softmax_mask(y, s, 0.1)
    assert int(num_masked) == 1 and int(num_counted) == 2
    assert not to_numpy(keep)[0].any()
    value, grad = value_and_grad(
        lambda logits: multilabel_as_softmax_crossentropy(y, logits, 0.1)[0], s
    )
    assert value == 0.0 and np.all(grad == 0.0)


def test_large_logits_stay_finite():
    rng = np.random.default_rng(5)
    s = (rng.uniform(-1e4, 1e4, (16, 20))).astype("float32")
    y = (rng.random((16, 20)) < 0.3).astype("float32")
    # Probabilities saturate to exactly 0 and 1, so at delta = 1 keeping a
    # positive is an exact tie (1 - 0 <= 1): many ties, all decided exactly.
    for delta in (0.1, 1.0):
        assert_matches_reference(y, s, delta, check_ties_rare=False)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_low_precision_logits(dtype):
    y, s = random_multilabel((8, 5, 30), 3.0, seed=6)
    s_low = ops.cast(s, dtype)
    losses = multilabel_as_softmax_crossentropy(y, s_low, delta=0.1)
    assert keras.backend.standardize_dtype(losses.dtype) == "float32"
    keep = to_numpy(multilabel_as_softmax_mask(y, s_low)[0]).astype(bool)
    ref_loss = reference.multilabel_as_softmax(y, to_numpy(s_low), 0.1, tie_keep=keep)[0]
    np.testing.assert_allclose(to_numpy(losses), ref_loss, rtol=1e-5, atol=1e-5)
    value, grad = value_and_grad(
        lambda logits: MultiLabelASSoftmaxCrossentropy(dtype=dtype)(y, logits), s_low
    )
    assert np.isfinite(value) and np.isfinite(grad).all()


def test_from_probabilities():
    y, s = random_multilabel((16, 12), 2.0, seed=7)
    probs = 1.0 / (1.0 + np.exp(-s.astype(np.float64)))
    losses = multilabel_as_softmax_crossentropy(
        y, probs.astype("float32"), delta=0.1, from_logits=False
    )
    clipped = np.clip(probs.astype("float32").astype(np.float64), 1e-7, 1 - 1e-7)
    np.testing.assert_allclose(
        to_numpy(losses),
        reference.multilabel_as_softmax(y, np.log(clipped / (1 - clipped)), 0.1)[0],
        rtol=1e-4, atol=1e-5,
    )


def test_mask_helper_counts_with_weights_and_mask():
    y, s = random_multilabel((6, 10, 8), 3.0, seed=8)
    weights = np.ones((6, 10), "float32")
    weights[0] = 0.0
    keras_mask = np.ones((6, 10), bool)
    keras_mask[:, -3:] = False
    ref_keep = reference.multilabel_as_softmax(y, s, 0.1)[2]
    counted = (weights != 0) & keras_mask
    masked = counted & ~ref_keep.any(-1)
    assert 0 < masked.sum() < counted.sum()
    _, num_masked, num_counted = multilabel_as_softmax_mask(
        y, s, 0.1, sample_weight=weights, mask=keras_mask
    )
    assert int(num_masked) == masked.sum() and int(num_counted) == counted.sum()


def test_sample_weight_and_reduction():
    y, s = random_multilabel((12, 9), 2.0, seed=9)
    weights = np.random.default_rng(0).random(12).astype("float32")
    ref_loss = reference.multilabel_as_softmax(y, s, 0.1)[0]
    loss = MultiLabelASSoftmaxCrossentropy(delta=0.1)(y, s, sample_weight=weights)
    np.testing.assert_allclose(to_numpy(loss), np.sum(ref_loss * weights) / 12, rtol=1e-5)
    loss = MultiLabelASSoftmaxCrossentropy(delta=0.1, reduction="sum")(y, s)
    np.testing.assert_allclose(to_numpy(loss), ref_loss.sum(), rtol=1e-5)


def test_per_sample_weights_broadcast_over_tokens_with_a_mask():
    y, s = random_multilabel((4, 6, 5), 2.0, seed=10)
    weights = np.random.default_rng(1).random(4).astype("float32")
    valid = np.random.default_rng(2).random((4, 6)) < 0.7
    logits = ops.convert_to_tensor(s)
    set_keras_mask(logits, ops.convert_to_tensor(valid))
    loss = MultiLabelASSoftmaxCrossentropy(delta=0.1)(y, logits, sample_weight=weights)
    ref_loss = reference.multilabel_as_softmax(y, s, 0.1)[0]
    np.testing.assert_allclose(
        to_numpy(loss), np.sum(ref_loss * weights[:, None] * valid) / valid.sum(),
        rtol=1e-5,
    )


def test_bad_input():
    with pytest.raises(ValueError, match="`y_true` must be multi-hot"):
        multilabel_as_softmax_crossentropy(EXAMPLE_TARGETS[:, :3], EXAMPLE_LOGITS)
    with pytest.raises(ValueError, match="`delta`"):
        MultiLabelASSoftmaxCrossentropy(delta=2.0)
    with pytest.raises(TypeError, match="`y_pred` must be floating point"):
        multilabel_as_softmax_crossentropy(EXAMPLE_TARGETS, EXAMPLE_TARGETS)


def test_config_round_trip():
    loss = MultiLabelASSoftmaxCrossentropy(delta=0.3, from_logits=False, reduction="sum")
    config = loss.get_config()
    assert MultiLabelASSoftmaxCrossentropy.from_config(config).get_config() == config
    restored = keras.losses.deserialize(keras.losses.serialize(loss))
    assert isinstance(restored, MultiLabelASSoftmaxCrossentropy)
    assert restored.get_config() == config


def multilabel_data(num_samples=512, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((num_samples, 16)).astype("float32")
    y = (x @ rng.standard_normal((16, 6)) > 0.8).astype("float32")
    return x, y


@pytest.mark.slow
@JIT
def test_fit_learns_and_saves(jit_compile, tmp_path):
    x, y = multilabel_data()
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((16,)), keras.layers.Dense(32, activation="relu"), keras.layers.Dense(6)]
    )
    model.compile(
        optimizer=keras.optimizers.Adam(1e-2),
        loss=MultiLabelASSoftmaxCrossentropy(delta=0.1),
        metrics=[keras.metrics.BinaryAccuracy(threshold=0.0)],
        jit_compile=jit_compile,
    )
    history = model.fit(x, y, batch_size=64, epochs=8, verbose=0).history
    assert history["loss"][-1] < 0.5 * history["loss"][0]
    assert history["binary_accuracy"][-1] > 0.9
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert loaded.loss.get_config() == model.loss.get_config()
    np.testing.assert_allclose(
        loaded.evaluate(x, y, verbose=0), model.evaluate(x, y, verbose=0), rtol=1e-6
    )
