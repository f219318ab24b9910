"""Mixed precision: the AS losses, `DeltaWarmup` and `AdaptiveModel` train
under `mixed_bfloat16` and `mixed_float16`, and class ids above 256
(bfloat16) and 2048 (float16) stay exact through `fit` and `evaluate`.

Every backend runs both policies on the CPU (float16 included), so nothing
here is skipped. `torch.compile` takes 10 to 40 s a model on a 2-core CPU,
so on PyTorch only `test_large_class_ids_stay_exact_in_adaptive_model` (an
AS loss inside `AdaptiveModel`'s compiled step, both policies) compiles; the
other tests run eagerly there, and compiled on JAX and TensorFlow.
"""

import keras
import numpy as np
import pytest
from keras import ops

from keras_as_softmax import AdaptiveSequential
from keras_as_softmax import ASSoftmaxCrossentropy
from keras_as_softmax import DeltaWarmup
from keras_as_softmax import MultiLabelASSoftmaxCrossentropy
from keras_as_softmax import SparseASSoftmaxCrossentropy
from tests import reference
from tests.helpers import JIT

BACKEND = keras.backend.backend()
# The mixed-precision training runs compile on TensorFlow and JAX only (the
# compiled PyTorch case is `test_large_class_ids_stay_exact_in_adaptive_model`).
JIT_BUT_TORCH = pytest.mark.parametrize(
    "jit_compile",
    [pytest.param(False, id="eager")]
    + ([] if BACKEND == "torch" else [pytest.param(True, id="jit")]),
)
COMPUTE_DTYPES = {"mixed_bfloat16": "bfloat16", "mixed_float16": "float16"}


@pytest.fixture(params=list(COMPUTE_DTYPES))
def policy(request):
    keras.mixed_precision.set_dtype_policy(request.param)
    try:
        yield request.param
    finally:
        keras.mixed_precision.set_dtype_policy("float32")


def finite(values):
    return all(np.isfinite(np.asarray(v, "float64")).all() for v in values)


@pytest.mark.slow
@JIT_BUT_TORCH
def test_every_loss_with_warmup_trains(policy, jit_compile):
    # One model, a head per AS loss, and the warm-up moving all three deltas.
    rng = np.random.default_rng(0)
    x = rng.standard_normal((32, 8)).astype("float32")
    y = {
        "sparse": np.argmax(x[:, :5], axis=-1).astype("int32"),
        "one_hot": np.eye(5, dtype="float32")[np.argmax(x[:, 3:8], axis=-1)],
        "multilabel": (x[:, :4] > 0.3).astype("float32"),
    }
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8,))
    hidden = keras.layers.Dense(16, activation="tanh")(inputs)
    outputs = {
        name: keras.layers.Dense(units, name=name)(hidden)
        for name, units in (("sparse", 5), ("one_hot", 5), ("multilabel", 4))
    }
    model = keras.Model(inputs, outputs)
    model.compile(
        optimizer=keras.optimizers.Adam(0.02),
        loss={
            "sparse": SparseASSoftmaxCrossentropy(delta=0.2, name="sparse_as"),
            "one_hot": ASSoftmaxCrossentropy(delta=0.2, name="one_hot_as"),
            "multilabel": MultiLabelASSoftmaxCrossentropy(delta=0.2, name="multi_as"),
        },
        jit_compile=jit_compile,
    )
    initial = model.get_weights()
    history = model.fit(
        x, y, batch_size=16, epochs=3, verbose=0,
        callbacks=[DeltaWarmup(initial_delta=1.0, warmup_steps=4)],
    ).history
    for name in y:
        assert keras.backend.standardize_dtype(
            model.get_layer(name).output.dtype
        ) == COMPUTE_DTYPES[policy]
    for key in ("loss", "sparse_loss", "one_hot_loss", "multilabel_loss"):
        assert finite(history[key]) and history[key][0] > 0, (key, history[key])
    # The epochs end at batches 1, 3 and 5 of a 4-batch warm-up.
    for name in ("sparse_as", "one_hot_as", "multi_as"):
        np.testing.assert_allclose(history[f"{name}_delta"], [0.8, 0.4, 0.2], rtol=1e-6)
    assert finite(model.get_weights())
    assert all(np.abs(w - w0).max() > 0 for w, w0 in zip(model.get_weights(), initial))
    # The loss is computed in float32 from the low-precision logits (which
    # `predict` and `evaluate` may round differently: 3 significant digits).
    logits = model.predict(x, batch_size=32, verbose=0)["sparse"]
    logits = ops.convert_to_numpy(ops.cast(logits, "float32"))
    evaluation = model.evaluate(x, y, batch_size=32, verbose=0, return_dict=True)
    expected = reference.sparse_as_softmax(y["sparse"], logits, 0.2)[0]
    np.testing.assert_allclose(evaluation["sparse_loss"], expected.mean(), rtol=1e-2)


ADAPTIVE_LOSSES = {
    "sparse": (SparseASSoftmaxCrossentropy,
               lambda rng: rng.integers(0, 4, 24).astype("int32")),
    "one_hot": (ASSoftmaxCrossentropy,
                lambda rng: np.eye(4, dtype="float32")[rng.integers(0, 4, 24)]),
    "multilabel": (MultiLabelASSoftmaxCrossentropy,
                   lambda rng: (rng.random((24, 4)) < 0.4).astype("float32")),
}


@pytest.mark.slow
@pytest.mark.parametrize(
    "kind, jit_compile",
    [
        pytest.param(kind, jit, id=f"{kind}-{'jit' if jit else 'eager'}")
        for kind, jit in [("sparse", False), ("multilabel", False)]
        + ([("one_hot", False)] if BACKEND == "torch"
           else [("sparse", True), ("one_hot", True)])
    ],
)
def test_adaptive_model_with_an_open_window(policy, kind, jit_compile):
    # delta 1 masks nothing and lambda 3 asks for windows of 2: 3 batches
    # give one window and an open one, applied when `fit` ends.
    rng = np.random.default_rng(1)
    x = rng.standard_normal((24, 6)).astype("float32")
    loss_class, make_targets = ADAPTIVE_LOSSES[kind]
    y = make_targets(rng)
    keras.utils.set_random_seed(0)
    model = AdaptiveSequential(
        [keras.Input((6,)), keras.layers.Dense(8, activation="tanh"),
         keras.layers.Dense(4)],
        max_accumulation_steps=2,
        accumulation_lambda=3.0,
    )
    model.compile(
        optimizer=keras.optimizers.Adam(0.01),
        loss=loss_class(delta=1.0),
        jit_compile=jit_compile,
    )
    # Keras scales the loss under float16 only.
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer) == (
        policy == "mixed_float16"
    )
    initial = model.get_weights()
    history = model.fit(x, y, batch_size=8, shuffle=False, verbose=0).history
    assert keras.backend.standardize_dtype(model.layers[-1].output.dtype) == (
        COMPUTE_DTYPES[policy]
    )
    assert finite(history["loss"]) and finite(model.get_weights())
    assert history["accumulation_steps"] == [2]
    assert int(model.optimizer.iterations.numpy()) == 2
    assert int(model.gradient_accumulator.micro_step.numpy()) == 0
    assert all(np.abs(w - w0).max() > 0 for w, w0 in zip(model.get_weights(), initial))


# Class ids that bfloat16 (8 significant bits) or float16 (11) would round:
# bfloat16 257 -> 256, 2051 -> 2048, 2999 -> 3008 (out of range);
# float16 2049 -> 2048, 2051 -> 2052, 2999 -> 3000 (out of range).
NUM_CLASSES = 3000
LARGE_IDS = np.array([257, 2049, 2051, 2999, 7], "int32")


def logits_table():
    """Row i: 8 at class `LARGE_IDS[i]`, 0 elsewhere (exact in both dtypes).

    At the true id the loss is `log(e^8 + 2999) - 8 = 0.70`; at any other id
    it is `8.70`. With delta 0.1 the true id masks the sample.
    """
    table = np.zeros((len(LARGE_IDS), NUM_CLASSES), "float32")
    table[np.arange(len(LARGE_IDS)), LARGE_IDS] = 8.0
    return table


def lookup_model(cls=keras.Sequential, **kwargs):
    """Its input is a row index; its logits are that row of `logits_table()`
    in the policy's compute dtype."""
    return cls(
        [
            keras.Input((), dtype="int32"),
            keras.layers.Embedding(
                len(LARGE_IDS), NUM_CLASSES,
                embeddings_initializer=keras.initializers.Constant(logits_table()),
            ),
        ],
        **kwargs,
    )


def test_large_ids_would_round_in_the_compute_dtype(policy):
    # The tests below are sharp: 3 (float16) or 4 (bfloat16) of the ids
    # round to another class (or out of range), whose loss is 8 higher.
    dtype = COMPUTE_DTYPES[policy]
    rounded = ops.convert_to_numpy(
        ops.cast(ops.cast(ops.convert_to_tensor(LARGE_IDS), dtype), "float32")
    ).astype(int)
    assert (rounded[:-1] != LARGE_IDS[:-1]).sum() >= 3
    table = logits_table()
    true_loss = reference.sparse_as_softmax(LARGE_IDS, table, 1.0)[0]
    in_range = rounded < NUM_CLASSES
    rounded_loss = reference.sparse_as_softmax(
        rounded[in_range], table[in_range], 1.0
    )[0]
    changed = rounded[in_range] != LARGE_IDS[in_range]
    assert np.all(rounded_loss[changed] - true_loss[in_range][changed] > 7.9)


@pytest.mark.slow
@JIT_BUT_TORCH
@pytest.mark.parametrize("loss_dtype", ["default", "compute"])
def test_large_class_ids_stay_exact_in_fit_and_evaluate(policy, loss_dtype, jit_compile):
    dtype = COMPUTE_DTYPES[policy] if loss_dtype == "compute" else None
    model = lookup_model()
    model.compile(
        optimizer=keras.optimizers.SGD(0.0),  # The logits stay as they are.
        loss=SparseASSoftmaxCrossentropy(delta=1.0, dtype=dtype),
        jit_compile=jit_compile,
    )
    rows = np.arange(len(LARGE_IDS), dtype="int32")
    logits = model.predict(rows, verbose=0)
    assert keras.backend.standardize_dtype(logits.dtype) == COMPUTE_DTYPES[policy]
    expected = reference.sparse_as_softmax(LARGE_IDS, logits_table(), 1.0)[0]
    np.testing.assert_allclose(expected, 0.6962, atol=1e-4)
    history = model.fit(rows, LARGE_IDS, batch_size=len(rows), epochs=2, verbose=0)
    # bfloat16 keeps 3 significant digits of the reduced loss.
    np.testing.assert_allclose(history.history["loss"], expected.mean(), rtol=1e-2)
    per_sample = [
        model.evaluate(rows[i:i + 1], LARGE_IDS[i:i + 1], verbose=0)
        for i in range(len(rows))
    ]
    np.testing.assert_allclose(per_sample, expected, rtol=1e-2)


@pytest.mark.slow
@JIT
def test_large_class_ids_stay_exact_in_adaptive_model(policy, jit_compile):
    # With delta 0.1 every sample is masked at its true id and none at a
    # rounded one: the masked ratio and the window show which ids were used.
    model = lookup_model(AdaptiveSequential, max_accumulation_steps=3)
    model.compile(
        optimizer=keras.optimizers.SGD(0.0),
        loss=SparseASSoftmaxCrossentropy(delta=0.1, dtype=COMPUTE_DTYPES[policy]),
        jit_compile=jit_compile,
    )
    rows = np.arange(len(LARGE_IDS), dtype="int32")
    history = model.fit(rows, LARGE_IDS, batch_size=len(rows), epochs=3, verbose=0)
    np.testing.assert_allclose(history.history["masked_ratio"], [1.0, 1.0, 1.0])
    np.testing.assert_allclose(history.history["loss"], [0.0, 0.0, 0.0])
    # Every batch fully masked: a window of 2 (epochs 1 and 2), then of 3.
    assert history.history["accumulation_steps"] == [2, 2, 3]
    evaluation = model.evaluate(rows, LARGE_IDS, verbose=0, return_dict=True)
    assert evaluation["masked_ratio"] == 1.0
