"""At `delta=1` the losses are Keras's cross-entropies, wherever Keras's own
losses take the input: Keras's unit tests for `SparseCategoricalCrossentropy`
and `CategoricalCrossentropy` (keras/src/losses/losses_test.py, Keras 3.15),
and side-by-side comparisons with the installed Keras on the same inputs:
float class ids, a size-1 class axis in `y_true`, probabilities with zeros.
"""

import keras
import numpy as np
import pytest
from keras import ops

from keras_as_softmax import ASSoftmaxCrossentropy
from keras_as_softmax import SparseASSoftmaxCrossentropy
from keras_as_softmax import sparse_as_softmax_crossentropy
from tests import reference
from tests.helpers import JIT
from tests.helpers import reset_compiled_functions
from tests.helpers import to_numpy
from tests.helpers import value_and_grad

BACKEND = keras.backend.backend()

# The inputs of Keras's unit tests.
ONE_HOT = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1]])
CLASS_IDS = np.array([0, 1, 2])
PROBS = np.array(
    [[0.9, 0.05, 0.05], [0.5, 0.89, 0.6], [0.05, 0.01, 0.94]], dtype="float32"
)
LOGITS = np.array([[8.0, 1.0, 1.0], [0.0, 9.0, 1.0], [2.0, 3.0, 5.0]])
SAMPLE_WEIGHT = np.array([[1.2], [3.4], [5.6]])


def both_losses(from_logits, **kwargs):
    """`(targets, loss)` pairs: class ids with the sparse loss, one-hot
    targets with the one-hot loss, each at `delta=1`."""
    return [
        (CLASS_IDS, SparseASSoftmaxCrossentropy(1.0, from_logits, **kwargs)),
        (ONE_HOT, ASSoftmaxCrossentropy(1.0, from_logits, **kwargs)),
    ]


# Keras's unit tests ----------------------------------------------------------


@pytest.mark.parametrize("from_logits", [False, True])
def test_keras_all_correct_unweighted(from_logits):
    y_pred = 10.0 * np.eye(3) if from_logits else np.eye(3, dtype="float32")
    for y_true, loss in both_losses(from_logits):
        np.testing.assert_almost_equal(to_numpy(loss(y_true, y_pred)), 0.0, 3)
    column = CLASS_IDS[:, None]
    loss = SparseASSoftmaxCrossentropy(1.0, from_logits)
    np.testing.assert_almost_equal(to_numpy(loss(column, y_pred)), 0.0, 3)


@pytest.mark.parametrize(
    "from_logits, sample_weight, expected",
    [
        (False, None, 0.3239),
        (True, None, 0.0573),
        (False, 2.3, 0.7449),
        (True, 2.3, 0.1317),
        (False, SAMPLE_WEIGHT, 1.0696),
        (True, SAMPLE_WEIGHT, 0.31829),
    ],
)
def test_keras_weighted_and_unweighted(from_logits, sample_weight, expected):
    y_pred = LOGITS if from_logits else PROBS
    for y_true, loss in both_losses(from_logits):
        value = loss(y_true, y_pred, sample_weight=sample_weight)
        np.testing.assert_almost_equal(to_numpy(value), expected, 3)


def test_keras_no_reduction():
    for y_true, loss in both_losses(True, reduction=None):
        np.testing.assert_allclose(
            to_numpy(loss(y_true, LOGITS)),
            (0.001822, 0.000459, 0.169846),
            rtol=1e-6,
            atol=1e-6,
        )


def test_keras_ignore_class():
    logits = np.array([[[0.854, 0.698, 0.598], [0.088, 0.86, 0.018]]])
    loss = SparseASSoftmaxCrossentropy(
        1.0, from_logits=True, ignore_class=-1, reduction=None
    )
    for y_true in (np.array([[-1, 2]]), np.array([[[-1], [2]]])):
        np.testing.assert_allclose(
            to_numpy(loss(y_true, logits)), [[0.0, 1.480129]], rtol=1e-6
        )


SEGMENTATION_IDS = np.array([[0, 1, 2, 0], [1, 0, 1, 0], [0, 0, 1, 1], [1, 1, 0, 1]])


def segmentation_probs(num_classes):
    """Keras's segmentation tests: one-hot probabilities of
    `SEGMENTATION_IDS` (ids >= `num_classes` made 1), then four pixels
    changed; returns `(ids, exact, changed, expected mean loss)`."""
    ids = np.minimum(SEGMENTATION_IDS, num_classes - 1)
    exact = np.eye(num_classes)[ids]
    changed = exact.copy()
    if num_classes == 2:
        changed[0, 3] = [0.2, 0.8]
        changed[3, 3] = [0.6, 0.4]
        expected = -np.log(0.2) - np.log(0.4)
    else:
        changed[0, 3] = [0.2, 0.0, 0.8]
        changed[1, 0] = [0.7, 0.3, 0.0]
        changed[3, 2] = [0.5, 0.5, 0.0]
        expected = -np.log(0.2) - np.log(0.3) - np.log(0.5)
    return ids, exact, changed, expected / 16.0  # 16 pixels


@pytest.mark.parametrize("num_classes", [2, 3])
def test_keras_segmentation(num_classes):
    ids, exact, changed, expected = segmentation_probs(num_classes)
    loss = SparseASSoftmaxCrossentropy(1.0, from_logits=False)
    np.testing.assert_allclose(to_numpy(loss(ids, exact)), 0.0, atol=1e-6)
    np.testing.assert_allclose(to_numpy(loss(ids, changed)), expected, rtol=1e-6)


@pytest.mark.parametrize("num_classes", [2, 3])
def test_keras_segmentation_different_axis(num_classes):
    # Keras runs these on PyTorch only (its TensorFlow and JAX losses take
    # the class axis last); ours take any axis on every backend.
    ids, exact, changed, expected = segmentation_probs(num_classes)
    loss = SparseASSoftmaxCrossentropy(1.0, from_logits=False, axis=0)
    channels_first = np.moveaxis(exact, 2, 0)
    np.testing.assert_allclose(to_numpy(loss(ids, channels_first)), 0.0, atol=1e-6)
    channels_first = np.moveaxis(changed, 2, 0)
    np.testing.assert_allclose(
        to_numpy(loss(ids, channels_first)), expected, rtol=1e-6
    )
    loss = SparseASSoftmaxCrossentropy(1.0, from_logits=False, axis=1)
    batch = np.stack([channels_first] * 3)
    np.testing.assert_allclose(
        to_numpy(loss(np.stack([ids] * 3), batch)), expected, rtol=1e-6
    )


def test_keras_squeezes_singleton_class_dim_on_user_axis():
    rng = np.random.default_rng(0)
    y_true = rng.integers(0, 2, size=(2, 1, 4, 4)).astype("float32")
    y_pred = rng.random((2, 2, 4, 4)).astype("float32")
    loss = sparse_as_softmax_crossentropy(
        y_true, y_pred, delta=1.0, from_logits=False, axis=1
    )
    assert tuple(loss.shape) == (2, 4, 4)
    # Keras's own loss, with the classes last (where all its backends agree).
    expected = keras.losses.sparse_categorical_crossentropy(
        y_true[:, 0], np.moveaxis(y_pred, 1, -1)
    )
    np.testing.assert_allclose(to_numpy(loss), to_numpy(expected), rtol=1e-6)


def test_keras_shape_mismatch():
    with pytest.raises(ValueError, match="must have the same shape"):
        ASSoftmaxCrossentropy(1.0, from_logits=False)(CLASS_IDS[:, None], PROBS)


def test_keras_dtype_arg():
    for y_true, loss in both_losses(False, dtype="bfloat16"):
        value = loss(y_true.astype("int64"), np.eye(3, dtype="float32"))
        assert keras.backend.standardize_dtype(value.dtype) == "bfloat16"


# Side by side with the installed Keras ---------------------------------------


def keras_sparse_crossentropy(from_logits, **kwargs):
    """Keras's sparse cross-entropy as a function `(y_true, y_pred,
    sample_weight=None)`. From probabilities on TensorFlow it is Keras's
    categorical loss on one-hot targets: Keras's TensorFlow sparse loss alone
    clips before normalising and renormalises after, so it differs from
    Keras's other backends (and its own categorical loss) by up to
    log(1 + zeros * epsilon), with no gradient for clipped probabilities.
    Ours follow the categorical loss there."""
    if from_logits or BACKEND != "tensorflow":
        return keras.losses.SparseCategoricalCrossentropy(from_logits, **kwargs)
    categorical = keras.losses.CategoricalCrossentropy(from_logits, **kwargs)

    def on_one_hot(y_true, y_pred, sample_weight=None):
        one_hot = ops.one_hot(ops.cast(y_true, "int32"), y_pred.shape[-1])
        return categorical(one_hot, y_pred, sample_weight=sample_weight)

    return on_one_hot


def assert_same_as_keras(ours, theirs, y_true, y_pred, keras_y_true=None):
    """Same values (1e-6) and gradients with respect to `y_pred`."""
    keras_y_true = y_true if keras_y_true is None else keras_y_true
    value, grad = value_and_grad(lambda x: ours(y_true, x), y_pred)
    expected_value, expected_grad = value_and_grad(
        lambda x: theirs(keras_y_true, x), y_pred
    )
    np.testing.assert_allclose(value, expected_value, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(grad, expected_grad, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
@pytest.mark.parametrize("from_logits", [True, False])
def test_float_class_ids(dtype, from_logits):
    rng = np.random.default_rng(3)
    ids = rng.integers(0, 50, size=(8, 5))
    logits = (3.0 * rng.standard_normal((8, 5, 50))).astype("float32")
    y_pred = logits if from_logits else to_numpy(ops.softmax(logits)).astype("float32")
    weights = rng.random((8, 5)).astype("float32")
    ours = SparseASSoftmaxCrossentropy(1.0, from_logits=from_logits)
    theirs = keras_sparse_crossentropy(from_logits)
    assert_same_as_keras(
        lambda y, x: ours(y, x, sample_weight=weights),
        lambda y, x: theirs(y, x, sample_weight=weights),
        ids.astype(dtype),
        y_pred,
    )
    # The same numbers as with integer ids, and the same masked positions.
    np.testing.assert_array_equal(
        to_numpy(ours(ids.astype(dtype), y_pred)), to_numpy(ours(ids, y_pred))
    )


@pytest.mark.parametrize("loss_dtype, label", [("float16", 2049), ("bfloat16", 257)])
def test_float_class_ids_stay_exact(loss_dtype, label):
    # A low-precision loss dtype would round these ids to another class.
    logits = np.zeros((1, 3000), "float32")
    logits[0, label] = 4.0
    y_true = np.array([label], dtype="float32")
    loss = SparseASSoftmaxCrossentropy(1.0, dtype=loss_dtype, reduction=None)
    np.testing.assert_allclose(
        to_numpy(loss(y_true, logits)),
        reference.softmax_crossentropy([label], logits),
        rtol=1e-2,
    )


def compiled(fn):
    """`fn(y_true, y_pred)` compiled, its arguments traced: no check can
    read their values."""
    if BACKEND == "tensorflow":
        import tensorflow as tf

        return tf.function(fn, jit_compile=True)
    if BACKEND == "jax":
        import jax

        return jax.jit(fn)
    import torch

    return torch.compile(fn)


@pytest.mark.parametrize("bad_id", [0.5, 2.25, np.nan, np.inf])
def test_fractional_float_class_ids(bad_id):
    y_true = np.array([1.0, bad_id, 2.0], dtype="float32")
    loss = SparseASSoftmaxCrossentropy(1.0, reduction=None)
    with pytest.raises(ValueError, match="float class ids must be whole numbers"):
        loss(y_true, LOGITS)
    # Where no check can see the values (a compiled function) the position
    # gets a NaN loss, as an id outside [0, C) does, never a truncated id.
    losses = to_numpy(
        compiled(loss)(ops.convert_to_tensor(y_true), ops.convert_to_tensor(LOGITS))
    )
    assert np.isnan(losses[1])
    np.testing.assert_allclose(
        losses[[0, 2]], to_numpy(loss(y_true[[0, 2]], LOGITS[[0, 2]])), rtol=1e-6
    )


@pytest.mark.parametrize("axis", [0, 1, 2, -1])
def test_size_one_class_axis_of_targets(axis):
    rng = np.random.default_rng(axis + 4)
    y_pred = (3.0 * rng.standard_normal((3, 4, 5, 6))).astype("float32")
    classes_last = np.moveaxis(y_pred, axis, -1)
    ids = rng.integers(0, classes_last.shape[-1], size=classes_last.shape[:-1])
    y_true = np.expand_dims(ids, axis)
    ours = SparseASSoftmaxCrossentropy(1.0, axis=axis, reduction=None)
    assert tuple(ours(y_true, y_pred).shape) == ids.shape
    theirs = keras.losses.SparseCategoricalCrossentropy(
        from_logits=True, reduction=None
    )
    np.testing.assert_allclose(
        to_numpy(ours(y_true, y_pred)),
        to_numpy(theirs(ids, classes_last)),
        rtol=1e-6,
        atol=1e-6,
    )
    if BACKEND == "torch" or axis in (-1, 3):
        # Keras's own loss takes this axis here: compare with it directly.
        theirs = keras.losses.SparseCategoricalCrossentropy(
            from_logits=True, axis=axis, reduction=None
        )
        np.testing.assert_allclose(
            to_numpy(ours(y_true, y_pred)),
            to_numpy(theirs(y_true, y_pred)),
            rtol=1e-6,
            atol=1e-6,
        )


@pytest.mark.parametrize(
    "num_classes", [1000, pytest.param(32000, marks=pytest.mark.slow)]
)
def test_probabilities_with_zeros(num_classes):
    """Keras normalises, clips and takes the log; it does not renormalise
    after clipping, so the zeros do not add `epsilon` each to the sum."""
    rng = np.random.default_rng(num_classes)
    probs = rng.random((4, num_classes)).astype("float32")
    probs[:, : num_classes // 2] = 0.0  # Half the classes have probability 0.
    probs /= probs.sum(-1, keepdims=True)
    ids = rng.integers(num_classes // 2, num_classes, size=4)
    one_hot = np.eye(num_classes, dtype="float32")[ids]
    assert_same_as_keras(
        ASSoftmaxCrossentropy(1.0, from_logits=False),
        keras.losses.CategoricalCrossentropy(from_logits=False),
        one_hot,
        probs,
    )
    assert_same_as_keras(
        SparseASSoftmaxCrossentropy(1.0, from_logits=False),
        keras_sparse_crossentropy(from_logits=False),
        ids,
        probs,
    )


@pytest.mark.parametrize("reduction", ["sum_over_batch_size", "sum", "mean", None])
def test_reductions_and_weights_match_keras(reduction):
    rng = np.random.default_rng(7)
    ids = rng.integers(0, 20, size=(6, 7))
    ids[rng.random(ids.shape) < 0.2] = -1
    logits = (3.0 * rng.standard_normal((6, 7, 20))).astype("float32")
    weights = rng.random((6, 7)).astype("float32")
    for ignore_class in (None, -1):
        y_true = ids if ignore_class is not None else np.maximum(ids, 0)
        ours = SparseASSoftmaxCrossentropy(
            1.0, ignore_class=ignore_class, reduction=reduction
        )
        theirs = keras.losses.SparseCategoricalCrossentropy(
            from_logits=True, ignore_class=ignore_class, reduction=reduction
        )
        assert_same_as_keras(
            lambda y, x: ops.sum(ours(y, x, sample_weight=weights)),
            lambda y, x: ops.sum(theirs(y, x, sample_weight=weights)),
            y_true,
            logits,
        )


@JIT
def test_float_class_ids_in_fit(jit_compile):
    # Labels read from a CSV or pandas arrive as floats: training on them is
    # training on the integer ids, eager and compiled.
    rng = np.random.default_rng(11)
    x = rng.standard_normal((32, 6)).astype("float32")
    ids = rng.integers(0, 5, size=32)
    weights = []
    for y in (ids.astype("int32"), ids.astype("float32")):
        # Both compiled afresh: past torch.compile's recompile limit a step
        # runs eagerly, which rounds differently.
        reset_compiled_functions()
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(5)])
        model.compile(
            optimizer="sgd",
            loss=SparseASSoftmaxCrossentropy(delta=0.3),
            jit_compile=jit_compile,
        )
        history = model.fit(x, y, batch_size=8, epochs=2, verbose=0)
        assert np.isfinite(history.history["loss"]).all()
        weights.append([w.numpy() for w in model.weights])
    for int_ids, float_ids in zip(*weights):
        np.testing.assert_array_equal(int_ids, float_ids)
