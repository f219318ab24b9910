"""Pruning samples masked when last seen: `AdaptiveModel(prune_masked=r)`,
and the `PruneMasked` callback for a plain `keras.Model`.

The pruned-and-reweighted data must give the full data's gradient in
expectation (a statistical test, against the float64 NumPy reference), a
pruned sample must get no forward pass, the flags must be the loss's own
(against the reference), and the state must survive resuming and saving.
"""

import keras
import numpy as np
import pytest
from keras import ops

from keras_as_softmax import AdaptiveSequential
from keras_as_softmax import PrunableDataset
from keras_as_softmax import SparseASSoftmaxCrossentropy
from keras_as_softmax.pruning import MASKED
from keras_as_softmax.pruning import NEEDED
from keras_as_softmax.pruning import UNSEEN
from keras_as_softmax.pruning import SamplePruning
from tests import reference
from tests.helpers import CrashAt
from tests.helpers import JIT
from tests.helpers import value_and_grad

NUM_CLASSES, FEATURES, BATCH_SIZE = 4, 6, 16


def classification_data(num_samples, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((num_samples, FEATURES)).astype("float32")
    y = (x[:, 0] > 0).astype("int32") + 2 * (x[:, 1] > 0).astype("int32")
    return x, y


def pruned_model(jit_compile, rate=0.5, until=0.875, skip_masked=False, seed=3):
    keras.utils.set_random_seed(0)
    model = AdaptiveSequential(
        network(),
        max_accumulation_steps=1,
        skip_masked=skip_masked,
        prune_masked=rate,
        prune_until=until,
        prune_seed=seed,
    )
    return compiled(model, jit_compile)


def network():
    return [keras.Input((FEATURES,)), keras.layers.Dense(16, activation="relu"),
            keras.layers.Dense(NUM_CLASSES)]


def compiled(model, jit_compile):
    model.compile(
        optimizer=keras.optimizers.SGD(0.5),
        loss=SparseASSoftmaxCrossentropy(delta=0.3),
        jit_compile=jit_compile,
        run_eagerly=jit_compile is None,
    )
    return model


def test_reweighted_pruning_is_unbiased():
    """Over many draws, the mean gradient of the samples an epoch keeps,
    weighted as it serves them, is the full data's gradient; unweighted it
    is not (the previously masked samples that carry a gradient again would
    count `1 - r` times)."""
    rate, num_samples, draws = 0.5, 24, 400
    rng = np.random.default_rng(0)
    x = rng.standard_normal((num_samples, FEATURES)).astype("float32")
    y = rng.integers(0, NUM_CLASSES, num_samples).astype("int32")
    user_weights = rng.uniform(0.5, 2.0, num_samples).astype("float32")
    kernel = rng.standard_normal((FEATURES, NUM_CLASSES)).astype("float32")
    loss_fn = SparseASSoftmaxCrossentropy(delta=0.5, reduction="sum")

    _, dz, _, _ = reference.sparse_as_softmax(y, x.astype(np.float64) @ kernel, 0.5)
    full = x.T.astype(np.float64) @ (user_weights[:, None] * dz)
    # Half the samples were masked when last seen, but most carry a gradient
    # now (forgotten since): exactly what unweighted pruning gets wrong.
    pruning = SamplePruning(rate, seed=1)
    pruning.start(num_samples, batch_size=num_samples)
    pruning.last_masked[:] = np.where(np.arange(num_samples) % 2 == 0, MASKED, NEEDED)
    assert np.count_nonzero(np.abs(dz[::2]).sum(axis=1) > 1e-3) >= 6

    data = PrunableDataset(x, y, user_weights, batch_size=num_samples, shuffle=True)
    weighted, unweighted = [], []
    for epoch in range(draws):
        data.begin_epoch(*pruning.draw(epoch, epochs=10 * draws, shuffle=True))
        batch_x, batch_y, batch_weights = data[0]
        kept = pruning.order

        def batch_loss(w, batch_weights=batch_weights):
            return loss_fn(batch_y, ops.matmul(batch_x, w), sample_weight=batch_weights)

        weighted.append(value_and_grad(batch_loss, kernel)[1])
        unweighted.append(x[kept].T @ (user_weights[kept, None] * dz[kept]))
    weighted, unweighted = np.array(weighted), np.array(unweighted)
    standard_error = weighted.std(axis=0) / np.sqrt(draws) + 1e-6
    assert np.max(np.abs(weighted.mean(axis=0) - full) / standard_error) < 4.5
    assert np.max(np.abs(unweighted.mean(axis=0) - full) / standard_error) > 10


def jax_tracer():
    import jax

    return jax.core.Tracer


class ForwardedSamples(keras.layers.Layer):
    """Records the sample ids (the last input feature) it sees in training."""

    def __init__(self, seen, **kwargs):
        super().__init__(**kwargs)
        self.record = seen.extend  # (A list attribute would be copied.)

    def call(self, x):
        if keras.backend.backend() != "jax" or not isinstance(x, jax_tracer()):
            # (Keras builds the model once on JAX with abstract values.)
            self.record(ops.convert_to_numpy(x[:, -1]).astype(int).tolist())
        return x[:, :-1]

    def compute_output_spec(self, x):
        return keras.KerasTensor((x.shape[0], x.shape[1] - 1), x.dtype)


class EpochRecord(keras.callbacks.Callback):
    def __init__(self, seen):
        super().__init__()
        self.seen, self.epochs = seen, []

    def on_epoch_begin(self, epoch, logs=None):
        pruning = self.model.sample_pruning
        self.epochs.append(
            {"order": pruning.order.copy(), "before": pruning.last_masked.copy()}
        )
        self.seen.clear()

    def on_epoch_end(self, epoch, logs=None):
        self.epochs[-1]["seen"] = set(self.seen)
        self.epochs[-1]["logs"] = dict(logs)


@pytest.mark.parametrize("skip_masked", [False, True])
def test_pruned_samples_get_no_forward_pass(skip_masked):
    x, y = classification_data(96)
    ids = np.arange(len(x), dtype="float32")[:, None]
    seen = []
    keras.utils.set_random_seed(0)
    model = AdaptiveSequential(
        [keras.Input((FEATURES + 1,)), ForwardedSamples(seen),
         keras.layers.Dense(NUM_CLASSES)],
        max_accumulation_steps=1, skip_masked=skip_masked, prune_masked=0.6,
        prune_until=0.75, prune_seed=0,
    )
    model.compile(optimizer=keras.optimizers.SGD(1.0),
                  loss=SparseASSoftmaxCrossentropy(delta=0.3), run_eagerly=True)
    record = EpochRecord(seen)
    model.fit(np.concatenate([x, ids], axis=1), y, batch_size=BATCH_SIZE, epochs=8,
              verbose=0, callbacks=[record])
    pruned_any = False
    for epoch, state in enumerate(record.epochs):
        order = set(state["order"].tolist())
        assert state["seen"] == order  # Forward passes: the kept samples only.
        pruned = set(range(len(x))) - order
        assert all(state["before"][i] == MASKED for i in pruned)
        assert state["logs"]["pruned_fraction"] == pytest.approx(len(pruned) / len(x))
        if epoch >= 6:  # The annealing epochs (the last quarter).
            assert not pruned
        pruned_any |= bool(pruned)
    assert pruned_any


@JIT
def test_flags_are_the_losss_and_resume_prunes_alike(jit_compile, tmp_path):
    """With the weights fixed (learning rate 0) each sample's recorded flag
    is the reference's; a fit resumed by `BackupAndRestore` and a model
    loaded from a `.keras` file prune as the uninterrupted fit does."""
    x, y = classification_data(80)
    frozen = pruned_model(jit_compile)
    frozen.fit(x, y, batch_size=BATCH_SIZE, epochs=3, verbose=0)
    frozen.sample_pruning.last_masked[:] = UNSEEN  # The next epoch keeps all.
    frozen.optimizer.learning_rate.assign(0.0)
    frozen.fit(x, y, batch_size=BATCH_SIZE, epochs=1, verbose=0)
    losses, _, _, _ = reference.sparse_as_softmax(y, frozen.predict(x, verbose=0), 0.3)
    expected = np.where(losses > 0, NEEDED, MASKED)
    assert NEEDED in expected and MASKED in expected
    np.testing.assert_array_equal(frozen.sample_pruning.last_masked, expected)

    def fit(model, epochs=6, callbacks=()):
        return model.fit(x, y, batch_size=BATCH_SIZE, epochs=epochs, verbose=0,
                         callbacks=list(callbacks)).history

    uninterrupted = pruned_model(jit_compile)
    history = fit(uninterrupted)
    assert max(history["pruned_fraction"]) > 0.1
    backup = keras.callbacks.BackupAndRestore(str(tmp_path / "backup"))
    with pytest.raises(RuntimeError, match="interrupted"):
        fit(pruned_model(jit_compile), callbacks=[backup, CrashAt(epoch=3, batch=1)])
    resumed = pruned_model(jit_compile)
    resumed_history = fit(resumed, callbacks=[backup])
    assert resumed_history["pruned_fraction"] == history["pruned_fraction"][3:]
    np.testing.assert_array_equal(
        resumed.sample_pruning.last_masked, uninterrupted.sample_pruning.last_masked
    )
    for actual, expected in zip(resumed.get_weights(), uninterrupted.get_weights()):
        np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-6)

    uninterrupted.save(tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras")
    assert loaded.as_speed_config() == uninterrupted.as_speed_config()
    np.testing.assert_array_equal(
        loaded.sample_pruning.last_masked, uninterrupted.sample_pruning.last_masked
    )
    continued, loaded_continued = fit(uninterrupted, epochs=2), fit(loaded, epochs=2)
    assert loaded_continued["pruned_fraction"] == continued["pruned_fraction"]
    np.testing.assert_allclose(loaded_continued["loss"], continued["loss"], rtol=1e-5)


def test_sample_weights_and_sequences():
    """The served weights are the user's times the pruning factor; a
    sequence counts as masked when all its counted positions are."""
    x = np.arange(12, dtype="float32").reshape(6, 2)
    weights = np.array([1.0, 2.0, 3.0, 0.5, 1.0, 4.0], "float32")
    data = PrunableDataset(x, np.zeros(6, "int32"), weights, batch_size=4, shuffle=False)
    data.begin_epoch(np.array([5, 0, 3]), np.array([2, 2, 1, 1, 1, 1], "float32"))
    batch_x, _, batch_weights = data[0]  # Padded to the batch size, weight 0.
    np.testing.assert_array_equal(batch_x, x[[5, 0, 3, 5]])
    np.testing.assert_array_equal(batch_weights, [4.0, 2.0, 0.5, 0.0])
    assert data.num_batches == 1

    # Logits 8 * one_hot(x): a position whose target is its input is masked.
    rng = np.random.default_rng(0)
    tokens, steps, vocabulary = 40, 5, 6
    x = rng.integers(1, vocabulary, (tokens, steps)).astype("int32")
    other = (x + rng.integers(1, vocabulary - 1, x.shape)) % vocabulary
    y = np.where(rng.random(x.shape) < 0.1, other, x)
    y = np.where(rng.random(x.shape) < 0.3, 0, y).astype("int32")
    model = AdaptiveSequential(
        [keras.Input((steps,), dtype="int32"), keras.layers.Embedding(vocabulary, vocabulary)],
        max_accumulation_steps=1, prune_masked=0.5, prune_seed=0,
    )
    model.layers[0].set_weights([8.0 * np.eye(vocabulary)])
    loss = SparseASSoftmaxCrossentropy(delta=0.5, ignore_class=0)
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss=loss)
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    losses, _, _, _ = reference.sparse_as_softmax(
        y, model.predict(x, verbose=0), 0.5, ignore_class=0
    )
    expected = np.where((losses > 0).any(axis=1), NEEDED, MASKED)
    assert NEEDED in expected and MASKED in expected
    np.testing.assert_array_equal(model.sample_pruning.last_masked, expected)


def test_class_weights_become_sample_weights():
    x, y = classification_data(40)
    model = pruned_model(jit_compile=False)
    datasets, prunable_data = [], model._prunable_data
    model._prunable_data = lambda arguments: datasets.append(prunable_data(arguments)) or datasets[-1]
    model.fit(x, y, class_weight={0: 3.0, 2: 0.5}, batch_size=8, epochs=1, verbose=0)
    (dataset,) = datasets
    for index in range(dataset.num_batches):
        _, batch_y, batch_weights = dataset[index]
        np.testing.assert_array_equal(
            batch_weights, np.select([batch_y == 0, batch_y == 2], [3.0, 0.5], 1.0)
        )


def test_seeded_draws_repeat():
    x, y = classification_data(64)
    histories = [
        pruned_model(jit_compile=False).fit(
            x, y, batch_size=BATCH_SIZE, epochs=5, verbose=0
        ).history["pruned_fraction"]
        for _ in range(2)
    ]
    assert histories[0] == histories[1] and max(histories[0]) > 0


def test_bad_settings_and_data():
    for rate in (1.0, -0.1, "0.5", True):
        with pytest.raises(ValueError, match="prune_masked"):
            pruned_model(jit_compile=False, rate=rate)
    with pytest.raises(ValueError, match="prune_until"):
        pruned_model(jit_compile=False, until=0.0)
    model = pruned_model(jit_compile=False)
    x, y = classification_data(32)

    def batches():
        while True:
            yield x[:8], y[:8]

    with pytest.raises(ValueError, match="stable sample order"):
        model.fit(batches(), epochs=1, steps_per_epoch=None, verbose=0)
    with pytest.raises(ValueError, match="steps_per_epoch"):
        model.fit(x, y, epochs=1, steps_per_epoch=2, verbose=0)
    with pytest.raises(ValueError, match="same number of samples"):
        PrunableDataset(x, y[:10])
    with pytest.raises(ValueError, match="cannot both"):
        model.fit(x, y, sample_weight=np.ones(32), class_weight={0: 2.0}, verbose=0)
    with pytest.raises(ValueError, match="its `sample_weight`"):
        model.fit(PrunableDataset(x, y), class_weight={0: 2.0}, verbose=0)
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    with pytest.raises(ValueError, match="AS-Softmax"):
        model.fit(x, y, epochs=1, verbose=0)


def test_unseen_samples_are_kept():
    pruning = SamplePruning(0.9, seed=0)
    pruning.start(50, batch_size=8)
    assert (pruning.last_masked == UNSEEN).all()
    order, scale = pruning.draw(epoch=0, epochs=10, shuffle=True)
    assert sorted(order.tolist()) == list(range(50)) and (scale == 1).all()


def test_settings_are_saved():
    from keras_as_softmax import AdaptiveModel

    inputs = keras.Input((FEATURES,))
    model = AdaptiveModel(inputs, keras.layers.Dense(NUM_CLASSES)(inputs),
                          prune_masked=0.25, prune_until=0.5, prune_seed=5)
    restored = type(model).from_config(model.get_config())
    assert restored.as_speed_config() == model.as_speed_config()
    assert restored.sample_pruning.rate == 0.25 and restored.sample_pruning.seed == 5
    model.configure_pruning(0.0)
    assert model.sample_pruning is None and "prune_masked" not in model.as_speed_config()


def plain_model(jit_compile):
    """`pruned_model`'s network as a plain `keras.Sequential`."""
    keras.utils.set_random_seed(0)
    return compiled(keras.Sequential(network()), jit_compile)


@JIT
def test_plain_model_prunes_with_the_callback(jit_compile, tmp_path):
    """A plain model with `PruneMasked` records the reference's flags (the
    loss records them; validation records nothing), prunes and trains as
    `AdaptiveModel(prune_masked=...)` with window 1 does, and resumes under
    `BackupAndRestore` as uninterrupted."""
    from keras_as_softmax import PruneMasked

    x, y = classification_data(80)
    validation = classification_data(24, seed=1)

    frozen = plain_model(jit_compile)
    frozen.fit(x, y, batch_size=BATCH_SIZE, epochs=3, verbose=0)
    frozen.optimizer.learning_rate.assign(0.0)
    losses, _, _, _ = reference.sparse_as_softmax(y, frozen.predict(x, verbose=0), 0.3)
    data = PrunableDataset(x, y, batch_size=BATCH_SIZE)
    callback = PruneMasked(data, seed=3)
    frozen.fit(data, epochs=1, shuffle=False, verbose=0, validation_data=validation,
               callbacks=[callback])
    expected = np.where(losses > 0, NEEDED, MASKED)
    assert NEEDED in expected and MASKED in expected
    np.testing.assert_array_equal(callback.pruning.last_masked, expected)
    # After `fit` the model and its loss are as before.
    assert not hasattr(frozen, "sample_pruning") and frozen.loss.sample_pruning is None
    assert all(not isinstance(m, SamplePruning) for m in frozen.metrics)

    def fit_plain(callbacks=()):
        model = plain_model(jit_compile)
        data = PrunableDataset(x, y, batch_size=BATCH_SIZE)
        pruning = PruneMasked(data, rate=0.5, seed=3)
        history = model.fit(data, epochs=6, shuffle=False, verbose=0,
                            validation_data=validation,
                            callbacks=[pruning, *callbacks]).history
        return model, pruning, history

    adaptive = pruned_model(jit_compile)
    adaptive_history = adaptive.fit(x, y, batch_size=BATCH_SIZE, epochs=6, verbose=0,
                                    validation_data=validation).history
    plain, pruning, history = fit_plain()
    assert max(history["pruned_fraction"]) > 0.1
    assert history["pruned_fraction"] == adaptive_history["pruned_fraction"]
    np.testing.assert_array_equal(pruning.pruning.last_masked,
                                  adaptive.sample_pruning.last_masked)
    for actual, expected in zip(plain.get_weights(), adaptive.get_weights()):
        np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-6)

    backup = keras.callbacks.BackupAndRestore(str(tmp_path / "backup"))
    with pytest.raises(RuntimeError, match="interrupted"):
        fit_plain(callbacks=[backup, CrashAt(epoch=3, batch=1)])
    resumed, resumed_pruning, resumed_history = fit_plain(callbacks=[backup])
    assert resumed_history["pruned_fraction"] == history["pruned_fraction"][3:]
    np.testing.assert_array_equal(resumed_pruning.pruning.last_masked,
                                  pruning.pruning.last_masked)
    for actual, expected in zip(resumed.get_weights(), plain.get_weights()):
        np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-6)


def test_plain_model_pruned_samples_get_no_forward_pass():
    from keras_as_softmax import PruneMasked

    x, y = classification_data(96)
    ids = np.arange(len(x), dtype="float32")[:, None]
    seen = []
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((FEATURES + 1,)), ForwardedSamples(seen),
         keras.layers.Dense(NUM_CLASSES)]
    )
    model.compile(optimizer=keras.optimizers.SGD(1.0),
                  loss=SparseASSoftmaxCrossentropy(delta=0.3), run_eagerly=True)
    data = PrunableDataset(np.concatenate([x, ids], axis=1), y, batch_size=BATCH_SIZE)
    callback = PruneMasked(data, rate=0.6, until=0.75, seed=0)

    class Record(EpochRecord):
        def on_epoch_begin(self, epoch, logs=None):
            self.epochs.append({"order": callback.pruning.order.copy(),
                                "before": callback.pruning.last_masked.copy()})
            self.seen.clear()

    record = Record(seen)
    model.fit(data, epochs=8, shuffle=False, verbose=0, callbacks=[callback, record])
    pruned_any = False
    for epoch, state in enumerate(record.epochs):
        order = set(state["order"].tolist())
        assert state["seen"] == order
        pruned = set(range(len(x))) - order
        assert all(state["before"][i] == MASKED for i in pruned)
        if epoch >= 6:
            assert not pruned
        pruned_any |= bool(pruned)
    assert pruned_any


def test_plain_model_bad_input():
    from keras_as_softmax import PruneMasked

    x, y = classification_data(64)
    data = PrunableDataset(x, y, batch_size=BATCH_SIZE)
    with pytest.raises(TypeError, match="PrunableDataset"):
        PruneMasked(x)
    with pytest.raises(ValueError, match="`rate` is the fraction"):
        PruneMasked(data, rate=1.0)
    with pytest.raises(ValueError, match="`until` is the fraction"):
        PruneMasked(data, until=0.0)
    model = plain_model(jit_compile=False)
    with pytest.raises(ValueError, match="shuffle=False"):
        model.fit(data, epochs=1, verbose=0, callbacks=[PruneMasked(data, seed=0)])
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    with pytest.raises(ValueError, match="one AS-Softmax"):
        model.fit(data, epochs=1, shuffle=False, verbose=0, callbacks=[PruneMasked(data)])
    with pytest.raises(ValueError, match="prunes by itself"):
        pruned_model(jit_compile=False).fit(
            data, epochs=1, verbose=0, callbacks=[PruneMasked(data)]
        )
