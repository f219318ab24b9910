"""Single-label AS-Softmax: values, gradients, reductions, dtypes, errors."""

import keras
import numpy as np
import pytest
from keras import ops

from keras_as_softmax import ASSoftmaxCrossentropy
from keras_as_softmax import SparseASSoftmaxCrossentropy
from keras_as_softmax import as_softmax_crossentropy
from keras_as_softmax import as_softmax_mask
from keras_as_softmax import sparse_as_softmax_crossentropy
from keras_as_softmax import sparse_as_softmax_mask
from keras_as_softmax._keras_private import set_keras_mask
from tests import reference
from tests.helpers import to_numpy
from tests.helpers import value_and_grad

EXAMPLE_LOGITS = np.array(
    [[1.2, 1.5, 1.0, -0.35], [2.5, 3.5, 0.4, 0.3]], dtype="float32"
)
EXAMPLE_TARGETS = np.array([1, 2])


def random_inputs(shape, scale, seed, ignore_class=None):
    """Logits of `shape` (classes last) and integer targets for them.

    About half the positions get a target logit near or above the row's
    maximum, as a partly trained model would, so that classes are dropped at
    every class count.
    """
    rng = np.random.default_rng(seed)
    logits = scale * rng.standard_normal(shape)
    targets = rng.integers(0, shape[-1], size=shape[:-1])
    confident = logits.max(-1) + scale * rng.uniform(-0.5, 1.5, shape[:-1])
    target_logits = np.take_along_axis(logits, targets[..., None], -1)[..., 0]
    boosted = np.where(rng.random(shape[:-1]) < 0.5, confident, target_logits)
    np.put_along_axis(logits, targets[..., None], boosted[..., None], -1)
    logits = logits.astype("float32")
    if ignore_class is not None:
        targets = np.where(rng.random(shape[:-1]) < 0.3, ignore_class, targets)
    return targets, logits


def assert_matches_reference(y, z, delta, ignore_class=None, jit=False):
    """Checks per-position losses and their gradient against the reference."""
    keep = sparse_as_softmax_mask(y, z, delta, ignore_class=ignore_class)[0]
    ref_loss, ref_grad, ref_keep, num_ties = reference.sparse_as_softmax(
        y, z, delta, ignore_class, tie_keep=to_numpy(keep).astype(bool)
    )
    assert num_ties <= max(2, ref_keep.size // 1000)
    # Random per-position weights make the gradient check cover every position.
    weights = np.random.default_rng(1).random(ref_loss.shape)

    def weighted_sum(logits):
        losses = sparse_as_softmax_crossentropy(
            y, logits, delta=delta, ignore_class=ignore_class
        )
        return ops.sum(losses * ops.convert_to_tensor(weights, "float32"))

    value, grad = value_and_grad(weighted_sum, z, jit=jit)
    losses = to_numpy(
        sparse_as_softmax_crossentropy(y, z, delta=delta, ignore_class=ignore_class)
    )
    np.testing.assert_allclose(losses, ref_loss, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(value, np.sum(ref_loss * weights), rtol=1e-5)
    np.testing.assert_allclose(
        grad, ref_grad * weights[..., None], rtol=1e-4, atol=1e-6
    )
    valid = np.ones(np.shape(y), bool) if ignore_class is None else y != ignore_class
    np.testing.assert_array_equal(to_numpy(keep).astype(bool)[valid], ref_keep[valid])
    return ref_keep


def test_reference_readme_example():
    losses = to_numpy(
        sparse_as_softmax_crossentropy(EXAMPLE_TARGETS, EXAMPLE_LOGITS, delta=0.1)
    )
    np.testing.assert_allclose(losses, [0.0, 3.4741], atol=1e-4)
    keep, num_masked, num_counted = sparse_as_softmax_mask(
        EXAMPLE_TARGETS, EXAMPLE_LOGITS, delta=0.1
    )
    np.testing.assert_array_equal(
        ops.convert_to_numpy(keep), [[0, 1, 0, 0], [1, 1, 1, 1]]
    )
    assert int(num_masked) == 1 and int(num_counted) == 2
    # Without AS the first sample would cost 0.918.
    plain = to_numpy(
        sparse_as_softmax_crossentropy(EXAMPLE_TARGETS, EXAMPLE_LOGITS, delta=1.0)
    )
    np.testing.assert_allclose(plain[0], 0.918, atol=1e-3)
    # The masked sample has zero gradient too.
    _, grad = value_and_grad(
        lambda z: ops.sum(sparse_as_softmax_crossentropy(EXAMPLE_TARGETS, z)),
        EXAMPLE_LOGITS,
    )
    np.testing.assert_array_equal(grad[0], np.zeros(4))


@pytest.mark.parametrize(
    "shape, scale",
    [((8, 2), 2.0), ((32, 10), 2.0), ((4, 7, 13), 3.0), ((6, 5000), 6.0)],
    ids=["C2", "C10", "tokens", "C5000"],
)
@pytest.mark.parametrize("delta", [0.0, 0.05, 0.1, 0.5, 1.0])
def test_matches_numpy_reference(shape, scale, delta):
    y, z = random_inputs(shape, scale, seed=shape[-1])
    keep = assert_matches_reference(y, z, delta)
    if delta == 1.0:
        assert keep.all()
    elif delta <= 0.1:
        assert not keep.all(), "inputs too easy: nothing was dropped"


@pytest.mark.parametrize("delta", [0.1, 1.0])
def test_matches_numpy_reference_compiled(delta):
    y, z = random_inputs((4, 6, 50), 4.0, seed=3, ignore_class=-1)
    assert_matches_reference(y, z, delta, ignore_class=-1, jit=True)


def test_ignore_class_matches_reference():
    y, z = random_inputs((5, 9, 11), 3.0, seed=7, ignore_class=-100)
    assert (y == -100).any() and (y != -100).any()
    assert_matches_reference(y, z, 0.1, ignore_class=-100)


def test_loss_class_means_over_counted_positions():
    y, z = random_inputs((5, 9, 11), 3.0, seed=7, ignore_class=0)
    ref_loss = reference.sparse_as_softmax(y, z, 0.1, ignore_class=0)[0]
    valid = y != 0
    loss = SparseASSoftmaxCrossentropy(delta=0.1, ignore_class=0)(y, z)
    np.testing.assert_allclose(
        to_numpy(loss), ref_loss.sum() / valid.sum(), rtol=1e-5
    )
    # A Keras mask on y_pred (e.g. from Embedding(mask_zero=True)) is the same.
    masked_logits = ops.convert_to_tensor(z)
    set_keras_mask(masked_logits, ops.convert_to_tensor(valid))
    y_any = np.where(valid, y, 1)
    ref_any = reference.sparse_as_softmax(y_any, z, 0.1)[0]
    loss = SparseASSoftmaxCrossentropy(delta=0.1)(y_any, masked_logits)
    np.testing.assert_allclose(
        to_numpy(loss), (ref_any * valid).sum() / valid.sum(), rtol=1e-5
    )


def test_sample_weight_follows_keras_reduction():
    y, z = random_inputs((12, 7), 3.0, seed=11)
    weights = np.random.default_rng(0).random(12).astype("float32")
    weights[:4] = 0.0
    ref_loss = reference.sparse_as_softmax(y, z, 0.1)[0]
    for reduction, expected in [
        ("sum_over_batch_size", np.sum(ref_loss * weights) / 12),
        ("sum", np.sum(ref_loss * weights)),
        ("mean_with_sample_weight", np.sum(ref_loss * weights) / weights.sum()),
    ]:
        loss = SparseASSoftmaxCrossentropy(delta=0.1, reduction=reduction)
        np.testing.assert_allclose(
            to_numpy(loss(y, z, sample_weight=weights)), expected, rtol=1e-5
        )
    per_sample = SparseASSoftmaxCrossentropy(delta=0.1, reduction=None)
    np.testing.assert_allclose(
        to_numpy(per_sample(y, z, sample_weight=weights)),
        ref_loss * weights,
        rtol=1e-5,
        atol=1e-6,
    )


@pytest.mark.parametrize("batch, length", [(4, 6), (6, 6)])
def test_per_sample_weights_broadcast_over_tokens(batch, length):
    y, z = random_inputs((batch, length, 7), 3.0, seed=15, ignore_class=-1)
    weights = np.random.default_rng(3).random(batch).astype("float32")
    token_weights = np.repeat(weights[:, None], length, axis=1)
    ref_loss = reference.sparse_as_softmax(y, z, 0.1, ignore_class=-1)[0]
    valid = y != -1
    expected = np.sum(ref_loss * token_weights) / valid.sum()
    loss_fn = SparseASSoftmaxCrossentropy(delta=0.1, ignore_class=-1)
    for sample_weight in (weights, weights[:, None], token_weights):
        np.testing.assert_allclose(
            to_numpy(loss_fn(y, z, sample_weight=sample_weight)), expected,
            rtol=1e-5,
        )


def test_symbolic_inputs():
    logits = keras.Input((5,))
    losses = sparse_as_softmax_crossentropy(keras.Input((), dtype="int32"), logits)
    assert isinstance(losses, keras.KerasTensor) and tuple(losses.shape) == (None,)
    losses = as_softmax_crossentropy(keras.Input((5,)), logits)
    assert isinstance(losses, keras.KerasTensor) and tuple(losses.shape) == (None,)


def test_nothing_counted_gives_zero():
    y = np.full((3, 4), -1)
    z = np.random.default_rng(0).standard_normal((3, 4, 5)).astype("float32")
    z[0, 0, :] = -np.inf
    loss_fn = SparseASSoftmaxCrossentropy(ignore_class=-1)
    assert to_numpy(loss_fn(y, z)) == 0.0
    value, grad = value_and_grad(lambda logits: loss_fn(y, logits), z)
    assert value == 0.0 and np.all(grad == 0.0)
    zero_weights = np.zeros((3, 4), "float32")
    loss = SparseASSoftmaxCrossentropy()(np.ones((3, 4), int), z[1:2].repeat(3, 0),
                                         sample_weight=zero_weights)
    assert to_numpy(loss) == 0.0


@pytest.mark.parametrize("ignore_class", [None, -1])
def test_delta_one_equals_keras_crossentropy(ignore_class):
    y, z = random_inputs((6, 8, 30), 4.0, seed=5, ignore_class=ignore_class)
    weights = np.random.default_rng(2).random((6, 8)).astype("float32")
    ours = SparseASSoftmaxCrossentropy(delta=1.0, ignore_class=ignore_class)
    keras_loss = keras.losses.SparseCategoricalCrossentropy(
        from_logits=True, ignore_class=ignore_class
    )
    np.testing.assert_allclose(
        to_numpy(ours(y, z, sample_weight=weights)),
        to_numpy(keras_loss(y, z, sample_weight=weights)),
        rtol=1e-6,
        atol=1e-6,
    )


def test_delta_one_equals_keras_crossentropy_from_probabilities():
    y, z = random_inputs((16, 12), 3.0, seed=9)
    probs = to_numpy(ops.softmax(z)).astype("float32")
    ours = SparseASSoftmaxCrossentropy(delta=1.0, from_logits=False)
    theirs = keras.losses.SparseCategoricalCrossentropy(from_logits=False)
    np.testing.assert_allclose(
        to_numpy(ours(y, probs)), to_numpy(theirs(y, probs)), rtol=1e-6
    )
    one_hot = np.eye(12, dtype="float32")[y]
    ours = ASSoftmaxCrossentropy(delta=1.0, from_logits=False)
    theirs = keras.losses.CategoricalCrossentropy(from_logits=False)
    np.testing.assert_allclose(
        to_numpy(ours(one_hot, probs)), to_numpy(theirs(one_hot, probs)), rtol=1e-6
    )


@pytest.mark.parametrize("delta", [0.1, 0.4])
def test_from_probabilities_matches_reference(delta):
    y, z = random_inputs((16, 12), 3.0, seed=9)
    # Unnormalised, with exact zeros in classes other than the target.
    probs = 2.0 * reference.softmax(z)
    probs[np.arange(16) % 4 == 0, (y[np.arange(16) % 4 == 0] + 1) % 12] = 0.0
    probs = probs.astype("float32")
    weights = np.random.default_rng(1).random(16)
    ref_loss, ref_grad, ref_masked = reference.sparse_as_softmax_from_probabilities(
        y, probs, delta
    )
    assert 0 < ref_masked.sum() < 16
    losses = sparse_as_softmax_crossentropy(y, probs, delta, from_logits=False)
    np.testing.assert_allclose(to_numpy(losses), ref_loss, rtol=1e-5, atol=1e-6)
    _, num_masked, _ = sparse_as_softmax_mask(y, probs, delta, from_logits=False)
    assert int(num_masked) == ref_masked.sum()
    value, grad = value_and_grad(
        lambda p: ops.sum(
            sparse_as_softmax_crossentropy(y, p, delta, from_logits=False)
            * ops.convert_to_tensor(weights, "float32")
        ),
        probs,
    )
    np.testing.assert_allclose(grad, ref_grad * weights[:, None], rtol=1e-4, atol=1e-6)


def test_one_hot_equals_sparse():
    y, z = random_inputs((4, 5, 20), 3.0, seed=4)
    one_hot = np.eye(20, dtype="float32")[y]
    np.testing.assert_allclose(
        to_numpy(as_softmax_crossentropy(one_hot, z, delta=0.1)),
        reference.sparse_as_softmax(y, z, 0.1)[0],
        rtol=1e-5,
        atol=1e-6,
    )
    np.testing.assert_allclose(
        to_numpy(ASSoftmaxCrossentropy(delta=0.05)(one_hot, z)),
        to_numpy(SparseASSoftmaxCrossentropy(delta=0.05)(y, z)),
        rtol=1e-6,
    )
    _, one_hot_masked, one_hot_counted = as_softmax_mask(one_hot, z, delta=0.1)
    _, masked, counted = sparse_as_softmax_mask(y, z, delta=0.1)
    assert int(one_hot_masked) == int(masked) and int(one_hot_counted) == 20


def test_class_axis_argument():
    y, z = random_inputs((4, 6, 9), 3.0, seed=8)
    channels_first = np.moveaxis(z, -1, 1)
    np.testing.assert_allclose(
        to_numpy(sparse_as_softmax_crossentropy(y, channels_first, axis=1)),
        reference.sparse_as_softmax(y, z, 0.1)[0],
        rtol=1e-5,
        atol=1e-6,
    )


def test_targets_with_trailing_unit_axis():
    y, z = random_inputs((10, 6), 3.0, seed=2)
    np.testing.assert_allclose(
        to_numpy(SparseASSoftmaxCrossentropy()(y[:, None], z)),
        to_numpy(SparseASSoftmaxCrossentropy()(y, z)),
    )


def test_mask_helper_counts():
    y, z = random_inputs((6, 10, 4), 5.0, seed=12, ignore_class=-1)
    weights = np.ones((6, 10), "float32")
    weights[0] = 0.0
    keras_mask = np.ones((6, 10), bool)
    keras_mask[:, -2:] = False
    _, _, ref_keep, _ = reference.sparse_as_softmax(y, z, 0.2, ignore_class=-1)
    counted = (y != -1) & (weights != 0) & keras_mask
    masked = counted & (ref_keep.sum(-1) == 1)
    assert 0 < masked.sum() < counted.sum()
    _, num_masked, num_counted = sparse_as_softmax_mask(
        y, z, 0.2, ignore_class=-1, sample_weight=weights, mask=keras_mask
    )
    assert int(num_masked) == masked.sum()
    assert int(num_counted) == counted.sum()
    # Per-sample weights of shape (B,) broadcast over the token axis.
    _, num_masked, num_counted = sparse_as_softmax_mask(
        y, z, 0.2, ignore_class=-1, sample_weight=weights[:, 0]
    )
    counted = (y != -1) & (weights != 0)
    assert int(num_counted) == counted.sum()
    assert int(num_masked) == (counted & (ref_keep.sum(-1) == 1)).sum()


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_low_precision_logits(dtype):
    y, z = random_inputs((8, 5, 300), 4.0, seed=6)
    z_low = ops.cast(z, dtype)
    rounded = to_numpy(z_low)
    losses = sparse_as_softmax_crossentropy(y, z_low, delta=0.1)
    assert keras.backend.standardize_dtype(losses.dtype) == "float32"
    ref_loss, _, _, _ = reference.sparse_as_softmax(
        y, rounded, 0.1,
        tie_keep=to_numpy(sparse_as_softmax_mask(y, z_low)[0]).astype(bool),
    )
    np.testing.assert_allclose(to_numpy(losses), ref_loss, rtol=1e-5, atol=1e-5)
    value, grad = value_and_grad(
        lambda logits: SparseASSoftmaxCrossentropy(dtype=dtype)(y, logits), z_low
    )
    assert np.isfinite(value) and np.isfinite(grad).all()


@pytest.mark.parametrize("dtype, label", [("float16", 2049), ("bfloat16", 257)])
def test_integer_targets_stay_exact_under_low_precision_loss(dtype, label):
    # Logits exactly representable in both float16 and bfloat16.
    z = np.zeros((1, 3000), "float32")
    z[0, label] = 4.0
    z[0, label - 1] = 2.0
    z[0, label + 1] = 1.0
    y = np.array([label])
    expected = reference.sparse_as_softmax(y, z, 1.0)[0][0]
    loss = SparseASSoftmaxCrossentropy(delta=1.0, dtype=dtype)(y, z)
    np.testing.assert_allclose(to_numpy(loss), expected, rtol=1e-2)
    # The label as that dtype would round it: a different class, far off.
    rounded_label = int(to_numpy(ops.cast(ops.convert_to_tensor(y), dtype))[0])
    assert rounded_label != label
    rounded = reference.sparse_as_softmax([rounded_label], z, 1.0)[0][0]
    assert abs(rounded - expected) > 1.0


def test_negative_infinity_logits():
    y, z = random_inputs((10, 8), 3.0, seed=13)
    rng = np.random.default_rng(0)
    for row, target in enumerate(y):
        others = [c for c in range(8) if c != target]
        z[row, rng.choice(others, size=3, replace=False)] = -np.inf
    for delta in (0.1, 1.0):
        assert_matches_reference(y, z, delta)


def test_gradient_does_not_flow_through_the_mask():
    # With the mask fixed, the loss is a plain log-sum-exp over kept classes:
    # the gradient of a kept logit is its softmax-over-kept probability.
    y, z = random_inputs((3, 6), 3.0, seed=21)
    keep = to_numpy(sparse_as_softmax_mask(y, z, 0.3)[0]).astype(bool)
    _, grad = value_and_grad(
        lambda logits: ops.sum(sparse_as_softmax_crossentropy(y, logits, 0.3)), z
    )
    kept = np.where(keep, np.exp(z - z.max(-1, keepdims=True)), 0.0)
    expected = kept / kept.sum(-1, keepdims=True) - np.eye(6)[y]
    np.testing.assert_allclose(grad, expected, rtol=1e-5, atol=1e-6)
    assert (grad[~keep] == 0).all()


@pytest.mark.parametrize(
    "delta, error", [(-0.1, ValueError), (1.5, ValueError), (float("nan"), ValueError),
                     ("0.1", TypeError), (True, TypeError), (None, TypeError)]
)
def test_bad_delta(delta, error):
    with pytest.raises(error, match="`delta`"):
        SparseASSoftmaxCrossentropy(delta=delta)
    with pytest.raises(error, match="`delta`"):
        sparse_as_softmax_crossentropy(EXAMPLE_TARGETS, EXAMPLE_LOGITS, delta=delta)
    with pytest.raises(error, match="`delta`"):
        ASSoftmaxCrossentropy(delta=delta)


def test_loss_objects_take_numbers_only():
    for delta in (keras.Variable(0.1), ops.convert_to_tensor(0.1)):
        with pytest.raises(TypeError, match="must be a Python number"):
            SparseASSoftmaxCrossentropy(delta=delta)
        with pytest.raises(TypeError, match="must be a Python number"):
            ASSoftmaxCrossentropy(delta=delta)
    assert SparseASSoftmaxCrossentropy(delta=np.array(0.2)).delta == 0.2


def test_tensor_delta_is_clipped_to_its_range():
    y, z = random_inputs((16, 9), 3.0, seed=14)
    for raw, clipped in ((-1.0, 0.0), (5.0, 1.0)):
        losses = sparse_as_softmax_crossentropy(
            y, z, delta=ops.convert_to_tensor(raw)
        )
        np.testing.assert_allclose(
            to_numpy(losses), reference.sparse_as_softmax(y, z, clipped)[0],
            rtol=1e-5, atol=1e-6,
        )


def test_non_scalar_delta_tensor():
    with pytest.raises(ValueError, match="`delta` must be a scalar"):
        sparse_as_softmax_crossentropy(
            EXAMPLE_TARGETS, EXAMPLE_LOGITS, delta=ops.ones((2,)) * 0.1
        )


def test_delta_may_be_a_variable():
    delta = keras.Variable(1.0)
    losses = sparse_as_softmax_crossentropy(
        EXAMPLE_TARGETS, EXAMPLE_LOGITS, delta=delta
    )
    assert to_numpy(losses)[0] > 0.9
    delta.assign(0.1)
    losses = sparse_as_softmax_crossentropy(
        EXAMPLE_TARGETS, EXAMPLE_LOGITS, delta=delta
    )
    assert to_numpy(losses)[0] == 0.0


@pytest.mark.parametrize(
    "y_true, y_pred_shape",
    [
        (np.zeros((3,), int), (4, 5)),  # batch size mismatch
        (np.zeros((4, 2), int), (4, 5)),  # rank: extra target axis
        (np.zeros((4,), int), (4, 6, 5)),  # rank: missing token axis
        (np.zeros((4, 7), int), (4, 6, 5)),  # sequence length mismatch
    ],
)
def test_target_shape_mismatch(y_true, y_pred_shape):
    y_pred = np.zeros(y_pred_shape, "float32")
    with pytest.raises(ValueError, match="`y_true` must hold one class id"):
        sparse_as_softmax_crossentropy(y_true, y_pred)
    with pytest.raises(ValueError, match="`y_true` must hold one class id"):
        SparseASSoftmaxCrossentropy()(y_true, y_pred)


def test_one_hot_from_python_lists():
    losses = as_softmax_crossentropy(
        np.eye(4)[EXAMPLE_TARGETS].tolist(), EXAMPLE_LOGITS.tolist(), delta=0.1
    )
    np.testing.assert_allclose(to_numpy(losses), [0.0, 3.4741], atol=1e-4)


@pytest.mark.parametrize(
    "y_true",
    [[[0.0, 0.9, 0.1, 0.0], [0, 0, 1, 0]], [[0, 0, 0, 0], [0, 0, 1, 0]],
     [[0, 1, 1, 0], [0, 0, 1, 0]]],
    ids=["smoothed", "all_zero", "two_ones"],
)
def test_targets_that_are_not_one_hot(y_true):
    with pytest.raises(ValueError, match="`y_true` must be one-hot"):
        ASSoftmaxCrossentropy()(np.array(y_true, "float32"), EXAMPLE_LOGITS)


def test_one_hot_shape_mismatch():
    with pytest.raises(ValueError, match="`y_true` must be one-hot"):
        as_softmax_crossentropy(np.eye(4)[:3], EXAMPLE_LOGITS)
    with pytest.raises(ValueError, match="`y_true` must be one-hot"):
        ASSoftmaxCrossentropy()(EXAMPLE_TARGETS, EXAMPLE_LOGITS)


def test_integer_logits():
    with pytest.raises(TypeError, match="`y_pred` must be floating point"):
        sparse_as_softmax_crossentropy(EXAMPLE_TARGETS, np.ones((2, 4), int))


@pytest.mark.parametrize("bad_id", [4, -1, 100])
def test_class_ids_out_of_range(bad_id):
    y = np.array([1, bad_id])
    with pytest.raises(ValueError, match=f"class id {bad_id}, outside \\[0, 4\\)"):
        SparseASSoftmaxCrossentropy()(y, EXAMPLE_LOGITS)
    with pytest.raises(ValueError, match="outside"):
        sparse_as_softmax_mask(ops.convert_to_tensor(y), EXAMPLE_LOGITS)
    # The same id is fine when it is the ignored class.
    loss = SparseASSoftmaxCrossentropy(ignore_class=bad_id)(y, EXAMPLE_LOGITS)
    assert np.isfinite(to_numpy(loss))


@pytest.mark.parametrize(
    "loss",
    [
        SparseASSoftmaxCrossentropy(
            delta=0.2, ignore_class=-1, axis=1, reduction="sum", name="as",
            from_logits=False,
        ),
        ASSoftmaxCrossentropy(delta=0.3, from_logits=False, reduction=None),
    ],
    ids=["sparse", "one_hot"],
)
def test_config_round_trip(loss):
    config = loss.get_config()
    clone = loss.__class__.from_config(config)
    assert clone.get_config() == config
    restored = keras.losses.deserialize(keras.losses.serialize(loss))
    assert type(restored) is type(loss)
    assert restored.get_config() == config
    assert restored.delta == loss.delta


def test_loss_and_mask_helper_agree_at_borderline_deltas():
    # Deltas equal to some row's p_t - p_i as the softmax computes it, on
    # logits with many ties: the loss (PyTorch's own kernel there) and the
    # mask helper (`keras.ops`) must take the same keep decisions.
    rng = np.random.default_rng(0)
    total_masked = 0
    for num_classes in (3, 17, 1000):
        z = (rng.integers(-4, 5, size=(2000, num_classes)) * 0.5).astype("float32")
        y = rng.integers(0, num_classes, size=2000)
        p = to_numpy(ops.softmax(z))
        rows = np.arange(2000)
        gaps = p[rows, y] - p[rows, rng.integers(0, num_classes, size=2000)]
        gaps = gaps[gaps > 0]
        for delta in (0.0, 0.1, float(gaps[0]), float(np.median(gaps))):
            loss = SparseASSoftmaxCrossentropy(delta=delta)
            num_masked, _ = loss.masked_counts(y, z)
            _, helper_masked, _ = sparse_as_softmax_mask(y, z, delta)
            assert int(num_masked) == int(helper_masked)
            total_masked += int(num_masked)
    assert total_masked > 0


def kernel_inputs(rng, num_classes, ties, dtype):
    """Logits `(400, C)` and class ids: confident rows as `random_inputs`
    makes them, or (`ties`) half-integer logits with many ties, and deltas
    for them (none at some row's `p_t - p_i` exactly: there rounding
    decides, and the core compares `exp(z - max)` where the kernels compare
    `torch.softmax`)."""
    if not ties:
        targets, logits = random_inputs((400, num_classes), 3.0, seed=num_classes)
        return logits, targets, (0.0, 0.05, 0.1, 0.5, 1.0)
    logits = (rng.integers(-4, 5, size=(400, num_classes)) * 0.5).astype(dtype)
    targets = rng.integers(0, num_classes, size=400)
    return logits, targets, (0.0, 0.1, 0.3, 1.0)


@pytest.mark.skipif(keras.backend.backend() != "torch", reason="PyTorch's kernels")
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("kernel", ["eager", "compiled"])
def test_torch_kernels_equal_the_keras_ops_core(kernel, dtype):
    # The kernels differ from the `keras.ops` core for speed only: the same
    # losses, masked flags and gradients, with tied logits too (eager).
    import torch

    from keras_as_softmax.as_softmax import _logit_losses
    from keras_as_softmax.backend import torch as torch_backend

    function = {
        "eager": torch_backend._SparseASSoftmaxLoss,
        "compiled": torch_backend._CompiledSparseASSoftmaxLoss,
    }[kernel]
    rng = np.random.default_rng(0)
    weights = torch.tensor(rng.random(400), dtype=getattr(torch, dtype))
    total_masked = 0
    for num_classes in (3, 17, 1000):
        for ties in (False, True) if kernel == "eager" else (False,):
            z, y, deltas = kernel_inputs(rng, num_classes, ties, dtype)
            target_index = torch.tensor(y[:, None], dtype=torch.int32)
            for delta in deltas:
                results = []
                for loss_fn in (function.apply, _logit_losses):
                    logits = torch.tensor(z, dtype=getattr(torch, dtype),
                                          requires_grad=True)
                    losses, masked = loss_fn(target_index, logits, delta)
                    (losses * weights).sum().backward()
                    results.append((losses.detach().numpy(), masked.numpy(),
                                    logits.grad.numpy()))
                (losses, masked, grad), (core_losses, core_masked, core_grad) = results
                np.testing.assert_array_equal(masked, core_masked)
                np.testing.assert_allclose(losses, core_losses, rtol=1e-6, atol=1e-5)
                np.testing.assert_allclose(grad, core_grad, rtol=1e-6, atol=1e-6)
                total_masked += int(masked.sum())
    assert total_masked > 0
