"""AS-Speed: `AdaptiveModel`'s window rule, updates and saved state."""

import keras
import numpy as np
import pytest

from keras_as_softmax import AdaptiveModel
from keras_as_softmax import AdaptiveSequential
from keras_as_softmax import MultiLabelASSoftmaxCrossentropy
from keras_as_softmax import SparseASSoftmaxCrossentropy
from tests import reference
from tests.helpers import BatchLogs
from tests.helpers import JIT

NUM_CLASSES = 4
BATCH = 10


def reference_windows(masked_counts, batch_size, accumulation_lambda, max_steps):
    """The reference rule in plain Python: the window of every batch."""
    window, micro_step, windows = 1, 0, []
    for masked in masked_counts:
        if micro_step == 0:
            unmasked = batch_size - masked
            proposed = (
                max_steps
                if unmasked == 0
                else max(1, round(accumulation_lambda * batch_size / unmasked))
            )
            window = min(max(proposed, window), window + 1, max_steps)
        micro_step += 1
        if micro_step == window:
            micro_step = 0
        windows.append(window)
    return windows


def scripted_batches(masked_counts, seed=0):
    """Logits (as inputs) and targets whose batch `i` has `masked_counts[i]`
    masked samples at delta 0.5: a masked row is sure of its target, the
    others are uniform."""
    rng = np.random.default_rng(seed)
    x = np.zeros((len(masked_counts) * BATCH, NUM_CLASSES), "float32")
    y = rng.integers(0, NUM_CLASSES, len(x)).astype("int32")
    for batch, masked in enumerate(masked_counts):
        rows = np.arange(batch * BATCH, batch * BATCH + masked)
        x[rows, y[rows]] = 20.0
    return x, y


def frozen_logits_model(max_steps, accumulation_lambda=1.0):
    """Its logits are its inputs (plus a bias that SGD with rate 0 keeps 0)."""
    inputs = keras.Input((NUM_CLASSES,))
    outputs = keras.layers.Dense(
        NUM_CLASSES, kernel_initializer="identity", trainable=True
    )(inputs)
    return AdaptiveModel(
        inputs,
        outputs,
        max_accumulation_steps=max_steps,
        accumulation_lambda=accumulation_lambda,
    )


def fit_scripted(masked_counts, max_steps, jit_compile, accumulation_lambda=1.0):
    model = frozen_logits_model(max_steps, accumulation_lambda)
    model.compile(
        optimizer=keras.optimizers.SGD(0.0),
        loss=SparseASSoftmaxCrossentropy(delta=0.5),
        jit_compile=jit_compile,
    )
    x, y = scripted_batches(masked_counts)
    recorder = BatchLogs()
    model.fit(x, y, batch_size=BATCH, shuffle=False, verbose=0, callbacks=[recorder])
    return model, recorder.logs


def window_starts(windows):
    """The window of each window's first batch."""
    starts, position = [], 0
    while position < len(windows):
        starts.append(windows[position])
        position += windows[position]
    return starts


@JIT
@pytest.mark.parametrize(
    "start_ratios, max_steps, expected",
    [
        ([0.1, 0.5, 0.1, 0.1], 2, [1, 2, 2, 2]),
        ([0.1, 0.5, 0.1, 0.9, 0.9, 0.5], 4, [1, 2, 2, 3, 4, 4]),
    ],
    ids=["max2", "max4"],
)
def test_window_follows_the_reference_examples(
    start_ratios, max_steps, expected, jit_compile
):
    # Each window's first batch has the given masked ratio; the others none.
    masked_counts = []
    for ratio, window in zip(start_ratios, expected):
        masked_counts += [round(ratio * BATCH)] + [0] * (window - 1)
    model, logs = fit_scripted(masked_counts, max_steps, jit_compile)
    windows = [int(log["accumulation_steps"]) for log in logs]
    assert window_starts(windows) == expected
    assert int(model.optimizer.iterations.numpy()) == len(expected)
    assert [int(log["optimizer_updates"]) for log in logs][-1] == len(expected)
    np.testing.assert_allclose(
        logs[-1]["masked_ratio"], sum(masked_counts) / (BATCH * len(masked_counts))
    )


@JIT
@pytest.mark.parametrize("max_steps, accumulation_lambda", [(3, 1.0), (5, 0.7)])
def test_window_matches_reference_rule_on_random_counts(
    max_steps, accumulation_lambda, jit_compile
):
    masked_counts = list(np.random.default_rng(max_steps).integers(0, BATCH + 1, 30))
    model, logs = fit_scripted(
        masked_counts, max_steps, jit_compile, accumulation_lambda
    )
    expected = reference_windows(masked_counts, BATCH, accumulation_lambda, max_steps)
    assert [int(log["accumulation_steps"]) for log in logs] == expected
    # A window still open at the end is applied when `fit` returns.
    assert int(model.optimizer.iterations.numpy()) == len(window_starts(expected))


def dense_model(cls, seed=0, **kwargs):
    keras.utils.set_random_seed(seed)
    layers = [
        keras.Input((6,)),
        keras.layers.Dense(8, activation="tanh"),
        keras.layers.Dense(NUM_CLASSES),
    ]
    return cls(layers, **kwargs)


def regression_data(num_batches, batch_size=8, seed=1):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((num_batches * batch_size, 6)).astype("float32")
    y = rng.integers(0, NUM_CLASSES, len(x)).astype("int32")
    return x, y


def make_optimizer(kind):
    if kind == "sgd":
        return keras.optimizers.SGD(0.5)
    # Each of these would give other weights if it acted once per batch.
    return keras.optimizers.AdamW(
        keras.optimizers.schedules.ExponentialDecay(0.05, decay_steps=1, decay_rate=0.7),
        weight_decay=0.1,
        clipnorm=0.05,
        use_ema=True,
        ema_momentum=0.5,
    )


@JIT
@pytest.mark.parametrize(
    "num_batches, optimizer",
    [(11, "sgd"), (13, "adamw")],
    ids=["whole_sgd", "partial_last_adamw_schedule_clip_ema"],
)
def test_window_update_equals_one_update_on_concatenated_batches(
    num_batches, optimizer, jit_compile
):
    # delta = 1 masks nothing, so with lambda 3 the windows are 2, 3, 3, 3;
    # 13 batches end with an open window of 2 batches, applied at the end.
    x, y = regression_data(num_batches)
    model = dense_model(
        AdaptiveSequential, max_accumulation_steps=3, accumulation_lambda=3.0
    )
    model.compile(
        optimizer=make_optimizer(optimizer),
        loss=SparseASSoftmaxCrossentropy(delta=1.0),
        jit_compile=jit_compile,
    )
    model.fit(x, y, batch_size=8, shuffle=False, verbose=0)

    reference = dense_model(keras.Sequential)
    reference.compile(
        optimizer=make_optimizer(optimizer),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    start, windows = 0, []
    for window in [2, 3, 3, 3, 2][: 4 if num_batches == 11 else 5]:
        rows = slice(start * 8, (start + window) * 8)
        reference.train_on_batch(x[rows], y[rows])
        start += window
        windows.append(window)
    reference.optimizer.finalize_variable_values(reference.trainable_variables)
    assert start == num_batches
    assert int(model.optimizer.iterations.numpy()) == len(windows)
    for actual, expected in zip(model.get_weights(), reference.get_weights()):
        np.testing.assert_allclose(actual, expected, atol=1e-5)


class Classifier(AdaptiveModel, keras.Model):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.hidden = keras.layers.Dense(8, activation="tanh")
        self.logits = keras.layers.Dense(NUM_CLASSES)

    def call(self, inputs):
        return self.logits(self.hidden(inputs))


@JIT
@pytest.mark.parametrize("route", ["subclass", "functional", "sequential"])
def test_every_route_trains_and_logs(route, jit_compile):
    x, y = regression_data(16)
    y = np.argmax(x[:, :NUM_CLASSES], axis=-1).astype("int32")
    keras.utils.set_random_seed(0)
    if route == "subclass":
        model = Classifier(max_accumulation_steps=2)
    elif route == "functional":
        inputs = keras.Input((6,))
        outputs = keras.layers.Dense(NUM_CLASSES)(
            keras.layers.Dense(8, activation="tanh")(inputs)
        )
        model = AdaptiveModel(inputs, outputs, max_accumulation_steps=2)
    else:
        model = dense_model(AdaptiveSequential, max_accumulation_steps=2)
    model.compile(
        optimizer=keras.optimizers.Adam(0.05),
        loss=SparseASSoftmaxCrossentropy(delta=0.2),
        jit_compile=jit_compile,
    )
    history = model.fit(x, y, batch_size=16, epochs=15, verbose=0).history
    assert history["loss"][-1] < 0.5 * history["loss"][0]
    assert history["masked_ratio"][-1] > history["masked_ratio"][0]
    assert history["accumulation_steps"][-1] == 2  # Most samples are masked.
    updates = int(model.optimizer.iterations.numpy())
    assert history["optimizer_updates"][-1] == updates < 15 * 8
    # `evaluate` reports the masked ratio of the float64 reference: the
    # samples whose every class but the target is dropped.
    logits = model.predict(x, verbose=0)
    _, _, keep, num_ties = reference.sparse_as_softmax(y, logits, delta=0.2)
    assert num_ties == 0
    masked = keep.sum(-1) == 1
    assert 0 < masked.sum() < len(y)
    evaluation = model.evaluate(x, y, batch_size=32, verbose=0, return_dict=True)
    np.testing.assert_allclose(evaluation["masked_ratio"], masked.mean(), atol=1e-6)


@JIT
def test_tokens_with_ignore_class_and_sample_weights(jit_compile):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 5, 6)).astype("float32")
    y = np.argmax(x[..., :NUM_CLASSES], axis=-1).astype("int32")
    y[:, 3:] = -1  # Padding.
    weights = np.where(np.arange(64) % 4 == 0, 0.0, 1.0).astype("float32")
    inputs = keras.Input((5, 6))
    outputs = keras.layers.Dense(NUM_CLASSES)(inputs)
    model = AdaptiveModel(inputs, outputs, max_accumulation_steps=3)
    loss = SparseASSoftmaxCrossentropy(delta=0.3, ignore_class=-1)
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss=loss, jit_compile=jit_compile)
    history = model.fit(
        x, y, sample_weight=weights, batch_size=16, epochs=10, verbose=0
    ).history
    assert history["loss"][-1] < history["loss"][0]
    evaluation = model.evaluate(
        x, y, sample_weight=weights, batch_size=64, verbose=0, return_dict=True
    )
    logits = model.predict(x, verbose=0)
    _, _, keep, num_ties = reference.sparse_as_softmax(
        y, logits, delta=0.3, ignore_class=-1
    )
    assert num_ties == 0
    # Padding and weight-0 samples are left out of the count.
    counted = (y != -1) & (weights[:, None] != 0)
    assert counted.sum() == 48 * 3
    masked = (keep.sum(-1) == 1) & counted
    assert 0 < masked.sum() < counted.sum()
    np.testing.assert_allclose(
        evaluation["masked_ratio"], masked.sum() / counted.sum(), atol=1e-6
    )


@JIT
def test_multilabel_loss(jit_compile):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((128, 6)).astype("float32")
    y = (x[:, :NUM_CLASSES] > 0.3).astype("float32")
    model = dense_model(AdaptiveSequential, max_accumulation_steps=2)
    model.compile(
        optimizer=keras.optimizers.Adam(0.05),
        loss=MultiLabelASSoftmaxCrossentropy(delta=0.2),
        jit_compile=jit_compile,
    )
    history = model.fit(x, y, batch_size=32, epochs=15, verbose=0).history
    assert history["loss"][-1] < 0.5 * history["loss"][0]
    assert history["masked_ratio"][-1] > 0
    evaluation = model.evaluate(x, y, batch_size=128, verbose=0, return_dict=True)
    _, _, keep, num_ties = reference.multilabel_as_softmax(
        y, model.predict(x, verbose=0), delta=0.2
    )
    assert num_ties == 0
    masked = ~keep.any(-1)
    assert 0 < masked.sum() < len(y)
    np.testing.assert_allclose(evaluation["masked_ratio"], masked.mean(), atol=1e-6)


def open_window_model(jit_compile):
    model = dense_model(
        AdaptiveSequential, max_accumulation_steps=3, accumulation_lambda=3.0
    )
    model.compile(
        optimizer=keras.optimizers.Adam(0.01),
        loss=SparseASSoftmaxCrossentropy(delta=1.0),
        jit_compile=jit_compile,
    )
    return model


@pytest.mark.parametrize("route", ["subclass", "functional", "sequential"])
def test_save_and_load_keep_settings_and_accumulators(tmp_path, route):
    x, y = regression_data(4)
    if route == "subclass":
        keras.saving.get_custom_objects()["Classifier"] = Classifier
        model = Classifier(max_accumulation_steps=3, accumulation_lambda=3.0)
    elif route == "functional":
        inputs = keras.Input((6,))
        model = AdaptiveModel(
            inputs,
            keras.layers.Dense(NUM_CLASSES)(inputs),
            max_accumulation_steps=3,
            accumulation_lambda=3.0,
        )
    else:
        model = open_window_model(jit_compile=False)
    model.compile(optimizer="adam", loss=SparseASSoftmaxCrossentropy(delta=1.0))

    class Save(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch == 2:  # Inside the second window (of 3 batches).
                self.model.save(tmp_path / "model.keras")

    model.fit(x, y, batch_size=8, shuffle=False, verbose=0, callbacks=[Save()])
    loaded = keras.models.load_model(tmp_path / "model.keras")
    assert type(loaded) is type(model)
    assert loaded.max_accumulation_steps == 3
    assert loaded.accumulation_lambda == 3.0
    state = loaded.gradient_accumulator
    assert int(state.window.numpy()) == 3
    assert int(state.micro_step.numpy()) == 1
    assert int(state.updates.numpy()) == 1
    assert any(np.abs(g.numpy()).max() > 0 for g in state.gradients)
    # Training goes on from the loaded state.
    loaded.fit(x, y, batch_size=8, shuffle=False, verbose=0)
    assert int(state.updates.numpy()) > 1


def test_bad_settings_and_losses_raise_clear_errors():
    with pytest.raises(ValueError, match="max_accumulation_steps"):
        dense_model(AdaptiveSequential, max_accumulation_steps=0)
    with pytest.raises(ValueError, match="accumulation_lambda"):
        dense_model(AdaptiveSequential, accumulation_lambda=-1.0)
    with pytest.raises(TypeError, match="mixin"):
        AdaptiveModel()
    model = dense_model(AdaptiveSequential)
    model.compile(
        optimizer="adam",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    x, y = regression_data(2)
    with pytest.raises(ValueError, match="single AS-Softmax loss"):
        model.fit(x, y, verbose=0)


class RecordAtTrainEnd(keras.callbacks.Callback):
    def on_train_end(self, logs=None):
        self.weights = self.model.get_weights()
        self.logs = logs


def test_open_window_is_applied_before_training_ends():
    x, y = regression_data(4)
    model = open_window_model(jit_compile=False)
    record = RecordAtTrainEnd()
    history = model.fit(
        x, y, batch_size=8, shuffle=False, verbose=0, callbacks=[record]
    ).history
    assert int(model.optimizer.iterations.numpy()) == 2
    # `History` counts the update applied when `fit` ends.
    assert history["optimizer_updates"] == [2]
    for seen, final in zip(record.weights, model.get_weights()):
        np.testing.assert_array_equal(seen, final)
    # Only training reports the window and the updates.
    evaluation = model.evaluate(x, y, verbose=0, return_dict=True)
    assert set(evaluation) == {"loss", "masked_ratio"}


def test_unfreezing_layers_between_fits():
    x, y = regression_data(4)
    model = dense_model(AdaptiveSequential)
    model.layers[0].trainable = False
    model.compile(optimizer="sgd", loss=SparseASSoftmaxCrossentropy(delta=1.0))
    model.fit(x, y, batch_size=8, verbose=0)
    frozen = model.layers[0].get_weights()[0].copy()
    model.layers[0].trainable = True
    model.compile(optimizer="sgd", loss=SparseASSoftmaxCrossentropy(delta=1.0))
    model.fit(x, y, batch_size=8, verbose=0)
    assert len(model.gradient_accumulator.gradients) == 4
    assert np.abs(model.layers[0].get_weights()[0] - frozen).max() > 0


def test_weights_saved_before_training_load_after_training(tmp_path):
    x, y = regression_data(4)
    model = open_window_model(jit_compile=False)
    model.save_weights(tmp_path / "initial.weights.h5")
    initial = model.get_weights()
    model.fit(x, y, batch_size=8, verbose=0)
    model.load_weights(tmp_path / "initial.weights.h5")
    for restored, expected in zip(model.get_weights(), initial):
        np.testing.assert_array_equal(restored, expected)
    state = model.gradient_accumulator
    assert int(state.updates.numpy()) == 0
    assert all(np.abs(g.numpy()).max() == 0 for g in state.gradients)


def test_optimizer_updates_follow_the_optimizer_after_loading(tmp_path):
    x, y = regression_data(4)
    model = open_window_model(jit_compile=False)
    model.fit(x, y, batch_size=8, shuffle=False, verbose=0)
    model.save(tmp_path / "model.keras")
    loaded = keras.models.load_model(tmp_path / "model.keras")
    assert int(loaded.optimizer.iterations.numpy()) == 2
    history = loaded.fit(x, y, batch_size=8, shuffle=False, verbose=0).history
    # 4 batches in windows of 3: one more update, and the open one at the end.
    assert history["optimizer_updates"] == [4]
    assert int(loaded.optimizer.iterations.numpy()) == 4
    # A new optimizer starts its own count; the log follows it.
    loaded.compile(optimizer="adam", loss=SparseASSoftmaxCrossentropy(delta=1.0))
    history = loaded.fit(x, y, batch_size=8, shuffle=False, verbose=0).history
    assert history["optimizer_updates"] == [int(loaded.optimizer.iterations.numpy())]
    assert history["optimizer_updates"] == [2]
