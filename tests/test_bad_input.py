"""Bad input gets a `ValueError`/`TypeError` that names the argument and the fix.

`tests/test_as_softmax.py` and `tests/test_multilabel.py` call the sparse and
one-hot functions and losses directly with bad shapes, dtypes and deltas;
this file covers what they do not: the same mistakes through `model.fit`
(compiled or not), `AdaptiveModel`, the mask helpers, the multi-label forms
and `DeltaWarmup`.

Class ids are checked whenever their values are known: eagerly (JAX and
PyTorch with `jit_compile=False`, any backend with `run_eagerly=True`).
Inside a compiled step an out-of-range id gives a NaN loss and no gradient,
on every backend (see the README).

An error raised inside a JAX training or test step leaves the model's
variables emptied (Keras's JAX trainer restores them only when the loop ends
normally), so each failing call below gets a model of its own.
"""

import re

import keras
import numpy as np
import pytest

from keras_as_softmax import AdaptiveModel
from keras_as_softmax import AdaptiveSequential
from keras_as_softmax import ASSoftmaxCrossentropy
from keras_as_softmax import DeltaWarmup
from keras_as_softmax import MultiLabelASSoftmaxCrossentropy
from keras_as_softmax import SparseASSoftmaxCrossentropy
from keras_as_softmax import as_softmax_crossentropy
from keras_as_softmax import as_softmax_mask
from keras_as_softmax import multilabel_as_softmax_crossentropy
from keras_as_softmax import multilabel_as_softmax_mask
from keras_as_softmax import sparse_as_softmax_crossentropy
from keras_as_softmax import sparse_as_softmax_mask
from tests.helpers import JIT
from tests.helpers import reset_compiled_functions

NUM_CLASSES = 5
RNG = np.random.default_rng(0)
X = RNG.standard_normal((8, 6)).astype("float32")
IDS = RNG.integers(0, NUM_CLASSES, 8).astype("int32")

# In a traced step the batch size may be unknown (None).
SPARSE_SHAPE = (
    r"`y_true` must hold one class id per position of `y_pred`, shape "
    r"\((8|None),\); received y_true\.shape=\((8|None), "
)
ONE_HOT_SHAPE = (
    r"`y_true` must be one-hot and must have the same shape as `y_pred`.*use "
    r"`sparse_as"
)
MULTI_HOT_SHAPE = r"`y_true` must be multi-hot with the shape of `y_pred`"
OUT_OF_RANGE = (
    r"`y_true` holds class id 9, outside \[0, 5\) for `y_pred` with 5 classes\. "
    r"If it marks padding \(as -100 does in Hugging Face datasets\), pass "
    r"`ignore_class=9` to the loss\."
)


def model_with(loss, cls=keras.Sequential, jit_compile=True, **compile_kwargs):
    model = cls([keras.Input((6,)), keras.layers.Dense(NUM_CLASSES)])
    model.compile(
        optimizer="sgd", loss=loss, jit_compile=jit_compile, **compile_kwargs
    )
    return model


def fit(model, y, **kwargs):
    return model.fit(X, y, batch_size=8, epochs=1, verbose=0, **kwargs)


# Targets, loss: what a user might get wrong, and the message it must give.
SHAPE_CASES = {
    "sparse_extra_axis": (np.zeros((8, 2), "int32"), SparseASSoftmaxCrossentropy,
                          ValueError, SPARSE_SHAPE),
    "sparse_token_axis": (np.zeros((8, 3, 1), "int32"), SparseASSoftmaxCrossentropy,
                          ValueError, SPARSE_SHAPE),
    "one_hot_classes": (np.eye(4, dtype="float32")[IDS % 4], ASSoftmaxCrossentropy,
                        ValueError, ONE_HOT_SHAPE),
    "one_hot_given_ids": (IDS, ASSoftmaxCrossentropy, ValueError, ONE_HOT_SHAPE),
    "multilabel_given_ids": (IDS.astype("float32"), MultiLabelASSoftmaxCrossentropy,
                             ValueError, MULTI_HOT_SHAPE),
    "multilabel_labels": (np.zeros((8, 4), "float32"), MultiLabelASSoftmaxCrossentropy,
                          ValueError, MULTI_HOT_SHAPE),
}


@JIT
@pytest.mark.parametrize("adaptive", [False, True], ids=["model", "adaptive"])
@pytest.mark.parametrize("case", list(SHAPE_CASES))
def test_wrong_targets_in_fit_and_evaluate(case, adaptive, jit_compile):
    y, loss_class, error, message = SHAPE_CASES[case]
    cls = AdaptiveSequential if adaptive else keras.Sequential
    with pytest.raises(error, match=message):
        fit(model_with(loss_class(), cls, jit_compile), y)
    with pytest.raises(error, match=message):
        model_with(loss_class(), cls, jit_compile).evaluate(X, y, verbose=0)


def test_shape_message_prints_plain_shapes_in_fit():
    # 12 samples in batches of 8: the traced batch size is unknown.
    x = np.zeros((12, 6), "float32")
    model = model_with(SparseASSoftmaxCrossentropy())
    with pytest.raises(ValueError, match="one class id per position") as error:
        model.fit(x, np.zeros((12, 2), "int32"), batch_size=8, verbose=0)
    assert "Tensor" not in str(error.value)
    assert re.search(r"y_pred\.shape=\((8|12|None), 5\)", str(error.value))


def test_wrong_targets_to_the_mask_helpers_and_multilabel_function():
    logits = RNG.standard_normal((4, 3, NUM_CLASSES)).astype("float32")
    with pytest.raises(ValueError, match=r"one class id per position.*\(4, 3\)"):
        sparse_as_softmax_mask(np.zeros((4,), "int32"), logits)
    with pytest.raises(TypeError, match="class ids as integers.*received dtype bool"):
        sparse_as_softmax_mask(np.zeros((4, 3), bool), logits)
    with pytest.raises(ValueError, match="must be one-hot and must have the same"):
        as_softmax_mask(np.zeros((4, NUM_CLASSES), "float32"), logits)
    # Per-sample labels for per-token logits.
    with pytest.raises(ValueError, match=MULTI_HOT_SHAPE + r".*\(4, 5\)"):
        multilabel_as_softmax_crossentropy(np.zeros((4, NUM_CLASSES)), logits)
    with pytest.raises(ValueError, match=MULTI_HOT_SHAPE):
        multilabel_as_softmax_mask(np.zeros((4, 3, 4)), logits)
    with pytest.raises(ValueError, match=MULTI_HOT_SHAPE):
        MultiLabelASSoftmaxCrossentropy()(np.zeros((4, 3)), logits)


# Class ids: checked wherever their values are known.

@pytest.mark.parametrize("adaptive", [False, True], ids=["model", "adaptive"])
def test_class_ids_out_of_range_in_eager_fit_and_evaluate(adaptive):
    y = IDS.copy()
    y[3] = 9
    cls = AdaptiveSequential if adaptive else keras.Sequential

    def model():
        return model_with(SparseASSoftmaxCrossentropy(), cls, False, run_eagerly=True)

    with pytest.raises(ValueError, match=OUT_OF_RANGE):
        fit(model(), y)
    with pytest.raises(ValueError, match=OUT_OF_RANGE):
        model().evaluate(X, y, verbose=0)
    # The same id is fine as the ignored class.
    model = model_with(SparseASSoftmaxCrossentropy(ignore_class=9), cls, False,
                       run_eagerly=True)
    assert np.isfinite(fit(model, y).history["loss"][0])


COMPILED = [True] + ([False] if keras.backend.backend() == "tensorflow" else [])


# Hugging Face's padding, a negative id, the class count, the largest int32.
BAD_IDS = {1: -100, 3: -1, 5: NUM_CLASSES, 6: 2**31 - 1}


@pytest.mark.parametrize("jit_compile", COMPILED, ids=lambda jit: f"jit={jit}")
@pytest.mark.parametrize("adaptive", [False, True], ids=["model", "adaptive"])
def test_class_ids_out_of_range_in_compiled_steps(adaptive, jit_compile):
    # Where no check can read the ids: a NaN loss that `fit` and `evaluate`
    # report, no gradient from that sample, finite weights. Every bad id in
    # one batch, so that one compiled step covers them all.
    reset_compiled_functions()
    y = IDS.copy()
    y[list(BAD_IDS)] = list(BAD_IDS.values())
    cls = AdaptiveSequential if adaptive else keras.Sequential
    model = model_with(SparseASSoftmaxCrossentropy(), cls, jit_compile)
    history = fit(model, y).history
    assert np.isnan(history["loss"][0])
    assert all(np.isfinite(w).all() for w in model.get_weights())
    # Each id on its own: the same compiled test step, a NaN loss.
    for position, bad_id in BAD_IDS.items():
        one_bad = IDS.copy()
        one_bad[position] = bad_id
        logs = model.evaluate(X, one_bad, verbose=0, return_dict=True)
        assert np.isnan(logs["loss"]), bad_id
    # The other samples trained as without the bad ones.
    keep = ~np.isin(np.arange(len(y)), list(BAD_IDS))
    reference = model_with(SparseASSoftmaxCrossentropy(), cls, jit_compile)
    model = model_with(SparseASSoftmaxCrossentropy(), cls, jit_compile)
    reference.set_weights(model.get_weights())
    fit(model, y)
    fit(reference, IDS, sample_weight=keep.astype("float32"))
    for actual, expected in zip(model.get_weights(), reference.get_weights()):
        np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-6)
    # As `ignore_class`, Hugging Face's padding id trains with a finite loss.
    y = IDS.copy()
    y[1] = -100
    model = model_with(SparseASSoftmaxCrossentropy(ignore_class=-100), cls, jit_compile)
    assert np.isfinite(fit(model, y).history["loss"][0])


@pytest.mark.parametrize("bad_id", [-2, 5, 2**31 - 1])
def test_class_ids_out_of_range_per_token(bad_id):
    y = np.zeros((2, 3), "int32")
    y[1, 2] = bad_id
    logits = np.zeros((2, 3, NUM_CLASSES), "float32")
    match = rf"class id {bad_id}, outside \[0, 5\)"
    with pytest.raises(ValueError, match=match):
        sparse_as_softmax_crossentropy(y, logits)
    with pytest.raises(ValueError, match=match):
        SparseASSoftmaxCrossentropy(ignore_class=-1)(y, logits)
    with pytest.raises(ValueError, match=match):
        sparse_as_softmax_mask(y, logits, ignore_class=-1)


def test_multilabel_targets_must_be_zero_or_one():
    logits = RNG.standard_normal((4, NUM_CLASSES)).astype("float32")
    soft = np.full((4, NUM_CLASSES), 0.2, "float32")
    soft[:, 0] = 0.9
    match = r"`y_true` must be multi-hot: 1 for each positive label, 0 elsewhere"
    for labels in (soft, 2 * (soft > 0.5).astype("int32")):
        with pytest.raises(ValueError, match=match):
            multilabel_as_softmax_crossentropy(labels, logits)
        with pytest.raises(ValueError, match=match):
            multilabel_as_softmax_mask(labels, logits)
        with pytest.raises(ValueError, match=match):
            MultiLabelASSoftmaxCrossentropy()(labels, logits)
    model = model_with(
        MultiLabelASSoftmaxCrossentropy(), keras.Sequential, False, run_eagerly=True
    )
    with pytest.raises(ValueError, match=match):
        fit(model, np.full((8, NUM_CLASSES), 0.5, "float32"))


# sample_weight: the shape of the per-sample losses or a prefix of it.

WEIGHT_SHAPE = r"`sample_weight` must have the shape of the per-sample losses"


@pytest.mark.parametrize("weight_shape", [(2, 2), (3,), (2, 3, 2), (3, 1)])
def test_sample_weight_that_would_broadcast(weight_shape):
    ids = np.array([[1, 2, 0], [3, 4, 0]], "int32")
    logits = RNG.standard_normal((2, 3, NUM_CLASSES)).astype("float32")
    labels = (logits > 0).astype("float32")
    weights = np.ones(weight_shape, "float32")
    sparse = SparseASSoftmaxCrossentropy(ignore_class=0)
    multilabel = MultiLabelASSoftmaxCrossentropy()
    calls = [
        lambda: sparse(ids, logits, sample_weight=weights),
        lambda: sparse.masked_counts(ids, logits, sample_weight=weights),
        lambda: sparse_as_softmax_mask(ids, logits, sample_weight=weights),
        lambda: multilabel(labels, logits, sample_weight=weights),
        lambda: multilabel_as_softmax_mask(labels, logits, sample_weight=weights),
    ]
    for call in calls:
        with pytest.raises(ValueError, match=WEIGHT_SHAPE + r".*\(2, 3\)"):
            call()


@pytest.mark.parametrize("adaptive", [False, True], ids=["model", "adaptive"])
def test_square_sample_weight_in_fit(adaptive):
    cls = AdaptiveSequential if adaptive else keras.Sequential
    model = model_with(SparseASSoftmaxCrossentropy(), cls)
    with pytest.raises(ValueError, match=WEIGHT_SHAPE):
        fit(model, IDS, sample_weight=np.ones((8, 8), "float32"))


def test_sample_weight_shapes_that_are_fine():
    ids = np.array([[1, 2, 0], [3, 4, 0]], "int32")
    logits = RNG.standard_normal((2, 3, NUM_CLASSES)).astype("float32")
    loss = SparseASSoftmaxCrossentropy(delta=1.0, reduction="sum")
    full = float(loss(ids, logits))
    for weights in (2.0, np.full((2,), 2.0), np.full((2, 1), 2.0),
                    np.full((2, 3), 2.0), np.full((2, 3, 1), 2.0)):
        np.testing.assert_allclose(
            float(loss(ids, logits, sample_weight=weights)), 2 * full, rtol=1e-6
        )


# delta: outside [0, 1] or not a number, wherever it is given.

BAD_DELTAS = [(-0.1, ValueError), (1.01, ValueError), (float("nan"), ValueError),
              (float("inf"), ValueError), ("0.1", TypeError), (None, TypeError),
              (True, TypeError), ([0.1], TypeError)]
ONE_HOT = np.eye(4, dtype="float32")[[1, 2]]
LOGITS = np.array([[1.2, 1.5, 1.0, -0.35], [2.5, 3.5, 0.4, 0.3]], "float32")


@pytest.mark.parametrize("delta, error", BAD_DELTAS)
def test_bad_delta_everywhere_else(delta, error):
    # `test_as_softmax.py` covers the sparse function and the sparse and
    # one-hot loss classes.
    message = r"`delta` must be (a number )?in \[0, 1\]"
    calls = [
        lambda: as_softmax_crossentropy(ONE_HOT, LOGITS, delta=delta),
        lambda: as_softmax_mask(ONE_HOT, LOGITS, delta=delta),
        lambda: sparse_as_softmax_mask([1, 2], LOGITS, delta=delta),
        lambda: multilabel_as_softmax_crossentropy(ONE_HOT, LOGITS, delta=delta),
        lambda: multilabel_as_softmax_mask(ONE_HOT, LOGITS, delta=delta),
        lambda: MultiLabelASSoftmaxCrossentropy(delta=delta),
    ]
    for call in calls:
        with pytest.raises(error, match=message):
            call()
    with pytest.raises(error, match=r"`initial_delta` must be (a number )?in \[0, 1\]"):
        DeltaWarmup(initial_delta=delta, warmup_steps=3)


def test_delta_of_a_loss_object_must_be_a_number():
    with pytest.raises(TypeError, match="`delta` of a loss object must be a Python number"):
        MultiLabelASSoftmaxCrossentropy(delta=keras.Variable(0.1))
    with pytest.raises(TypeError, match="`initial_delta` must be a number"):
        DeltaWarmup(initial_delta=keras.Variable(1.0), warmup_steps=3)
    # NumPy numbers are numbers.
    assert DeltaWarmup(initial_delta=np.float32(0.5), warmup_steps=3).initial_delta == 0.5
    assert DeltaWarmup(initial_delta=np.array(1.0), warmup_steps=3).initial_delta == 1.0


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"warmup_steps": -1}, "`warmup_steps` must be a positive integer"),
        ({"warmup_steps": 2.5}, "`warmup_steps` must be a positive integer"),
        ({"warmup_steps": "3"}, "`warmup_steps` must be a positive integer"),
        ({"warmup_steps": True}, "`warmup_steps` must be a positive integer"),
        ({"warmup_fraction": 0.0}, r"`warmup_fraction` must be in \(0, 1\] \(a number"),
        ({"warmup_fraction": float("nan")}, r"`warmup_fraction` must be in \(0, 1\]"),
        ({"warmup_fraction": "0.5"}, r"`warmup_fraction` must be in \(0, 1\]"),
        ({"warmup_fraction": None}, "Pass exactly one of `warmup_steps` and"),
    ],
)
def test_bad_warmup_length(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DeltaWarmup(**kwargs)


def test_warmup_length_takes_numpy_numbers():
    assert DeltaWarmup(warmup_steps=np.int64(3)).warmup_steps == 3
    assert DeltaWarmup(warmup_fraction=np.float32(0.5)).warmup_fraction == 0.5


def test_warmup_with_no_as_loss_leaves_the_model_usable():
    model = model_with(keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    with pytest.raises(ValueError, match=(
        r"DeltaWarmup needs a model compiled with an AS-Softmax loss "
        r"\(SparseASSoftmaxCrossentropy.*the model's loss is")):
        fit(model, IDS, callbacks=[DeltaWarmup(warmup_steps=2)])
    assert np.isfinite(fit(model, IDS).history["loss"][0])


def test_warmup_fraction_needs_the_number_of_steps():
    model = model_with(SparseASSoftmaxCrossentropy())

    def batches():
        for _ in range(2):
            yield X, IDS

    with pytest.raises(ValueError, match=(
        "`warmup_fraction` needs the number of steps per epoch.*pass "
        "`steps_per_epoch` to `fit` or use `warmup_steps`")):
        model.fit(batches(), epochs=1, verbose=0, shuffle=False,
                  callbacks=[DeltaWarmup(warmup_fraction=0.5)])


# AdaptiveModel: the window settings and the loss it is compiled with.

class Classifier(AdaptiveModel, keras.Model):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.dense = keras.layers.Dense(NUM_CLASSES)

    def call(self, inputs):
        return self.dense(inputs)


def adaptive(route, **kwargs):
    if route == "subclass":
        return Classifier(**kwargs)
    if route == "functional":
        inputs = keras.Input((6,))
        return AdaptiveModel(inputs, keras.layers.Dense(NUM_CLASSES)(inputs), **kwargs)
    return AdaptiveSequential([keras.Input((6,)), keras.layers.Dense(NUM_CLASSES)],
                              **kwargs)


ROUTES = pytest.mark.parametrize("route", ["subclass", "functional", "sequential"])


@ROUTES
@pytest.mark.parametrize("steps", [0, -1, 1.5, 2.0, "2", True, None])
def test_bad_max_accumulation_steps(route, steps):
    with pytest.raises(ValueError, match=(
        r"`max_accumulation_steps` must be an integer >= 1 \(1 turns accumulation "
        rf"off; the reference uses 2\); received {steps!r}")):
        adaptive(route, max_accumulation_steps=steps)


@ROUTES
@pytest.mark.parametrize("value", [-0.5, -1, float("nan"), float("inf"), "1", None, False])
def test_bad_accumulation_lambda(route, value):
    with pytest.raises(ValueError, match=(
        r"`accumulation_lambda` must be a finite number >= 0 \(the reference uses "
        rf"1\.0\); received {value!r}")):
        adaptive(route, accumulation_lambda=value)


def test_window_settings_take_numpy_numbers():
    model = adaptive("sequential", max_accumulation_steps=np.int64(3),
                     accumulation_lambda=np.float32(0.5))
    assert model.max_accumulation_steps == 3 and model.accumulation_lambda == 0.5
    assert type(model.get_config()["max_accumulation_steps"]) is int


NOT_ONE_AS_LOSS = (
    r"An `AdaptiveModel` must be compiled with a single AS-Softmax loss "
    r"\(SparseASSoftmaxCrossentropy, ASSoftmaxCrossentropy or "
    r"MultiLabelASSoftmaxCrossentropy\) on a single output.*Received loss="
)


@ROUTES
@pytest.mark.parametrize(
    "loss",
    ["sparse_categorical_crossentropy", None, "two_as_losses"],
    ids=["keras_loss", "no_loss", "two_as_losses"],
)
def test_adaptive_model_needs_one_as_loss(route, loss):
    model = adaptive(route)
    if loss == "two_as_losses":
        loss = [SparseASSoftmaxCrossentropy(), SparseASSoftmaxCrossentropy()]
    model.compile(optimizer="sgd", loss=loss)
    with pytest.raises(ValueError, match=NOT_ONE_AS_LOSS):
        fit(model, IDS)
    with pytest.raises(ValueError, match=NOT_ONE_AS_LOSS):
        model.evaluate(X, IDS, verbose=0)
    # Both raise before a step runs: the model still predicts (which needs
    # no loss) on every backend.
    assert model.predict(X, verbose=0).shape == (8, NUM_CLASSES)
