"""AS-Speed with `skip_masked="buffer"`: training passes over gathered
samples that need a gradient.

Each update must equal AS-Softmax's update on its stretch of the sample
stream taken as one batch (`keras_as_softmax.sample_buffer`). The reference
below rebuilds the stretches on its own: a plain `keras.Sequential` with the
same loss, which samples need a gradient from the float64 NumPy reference,
and one `train_on_batch` per stretch.
"""

import functools

import keras
import numpy as np
import pytest

from keras_as_softmax import AdaptiveSequential
from keras_as_softmax import MultiLabelASSoftmaxCrossentropy
from keras_as_softmax import SparseASSoftmaxCrossentropy
from keras_as_softmax.sample_buffer import SampleBuffer
from keras_as_softmax.sample_buffer import write_rows
from tests import reference
from tests.helpers import BatchLogs
from tests.helpers import CrashAt
from tests.helpers import JIT
from tests.helpers import to_numpy

BATCH_SIZE = 16


def reference_needs(loss, y, logits, weights):
    """Per sample, whether some counted position has a loss above 0 (a
    masked position's loss is exactly 0), in float64."""
    logits = to_numpy(logits)
    if isinstance(loss, MultiLabelASSoftmaxCrossentropy):
        losses = reference.multilabel_as_softmax(y, logits, loss.delta)[0]
    else:
        losses = reference.sparse_as_softmax(
            y, logits, loss.delta, ignore_class=loss.ignore_class
        )[0]
    unmasked = (losses > 0).reshape(len(y), -1)
    return unmasked.any(axis=1) & (np.asarray(weights) != 0)


class StretchTrainer:
    """The buffer mode's definition, written out: walks the sample stream
    batch by batch; a stretch ends at its `BATCH_SIZE`-th sample that needs
    a gradient (the rest of that batch is judged again with the new
    weights), at the end of its `max_batches`-th batch, or at the end of
    training; each stretch is one `train_on_batch` of a plain model."""

    def __init__(self, model, loss, max_batches):
        self.model, self.loss, self.max_batches = model, loss, max_batches
        self.stretch, self.needed, self.batches = [], 0, set()
        self.updates = []  # Per update: (samples, needed, batches, within_batch).

    def fit(self, x, y, weights, epochs):
        for epoch in range(epochs):
            for start in range(0, len(x), BATCH_SIZE):
                batch = (epoch, start)
                position, end = start, min(start + BATCH_SIZE, len(x))
                while position < end:
                    rows = np.arange(position, end)
                    needs = reference_needs(
                        self.loss,
                        y[rows],
                        self.model(x[rows], training=False),
                        weights[rows],
                    )
                    position = end
                    for row, need in zip(rows, needs):
                        self.stretch.append(row)
                        self.batches.add(batch)
                        self.needed += int(need)
                        if self.needed == BATCH_SIZE:
                            self.update(x, y, weights, within_batch=row + 1 < end)
                            position = row + 1
                            break
                if len(self.batches) >= self.max_batches:
                    self.update(x, y, weights)
        if self.batches:
            self.update(x, y, weights)

    def update(self, x, y, weights, within_batch=False):
        rows = np.array(self.stretch)
        self.model.train_on_batch(x[rows], y[rows], sample_weight=weights[rows])
        self.updates.append((len(rows), self.needed, len(self.batches), within_batch))
        self.stretch, self.needed, self.batches = [], 0, set()


def dense_layers(regularizer=None, num_classes=4):
    return [
        keras.Input((6,)),
        keras.layers.Dense(16, activation="tanh", kernel_regularizer=regularizer),
        keras.layers.Dense(num_classes),
    ]


def classification_data(num_samples=208, seed=1):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((num_samples, 6)).astype("float32")
    y = ((x[:, 0] > 0) + 2 * (x[:, 1] > 0)).astype("int32")
    weights = rng.uniform(0, 2, num_samples).astype("float32")
    weights[::7] = 0.0
    return x, y, weights


def sequence_data(num_samples=96, seed=3):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(1, 20, (num_samples, 5)).astype("int32")
    y = (tokens % 4).astype("int32")
    y[:, 3:][rng.random((num_samples, 2)) < 0.5] = -1  # Padding, ignored.
    return tokens, y, rng.uniform(0.5, 1.5, num_samples).astype("float32")


def multilabel_data(num_samples=128, seed=4):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((num_samples, 6)).astype("float32")
    # Every sample has a positive and a negative label, so it can be masked.
    y = np.stack([x[:, 0] > 0, x[:, 0] <= 0, x[:, 1] > 0], -1).astype("float32")
    return x, y, np.ones(num_samples, "float32")


CASES = {
    # name: (layers, loss, optimizer, data, epochs, max_accumulation_steps)
    "sgd_regulariser_weights": (
        lambda: dense_layers(keras.regularizers.L2(0.01)),
        lambda: SparseASSoftmaxCrossentropy(delta=0.3),
        lambda: keras.optimizers.SGD(0.5),
        classification_data,
        3,
        3,
    ),
    "adam_mean_with_sample_weight": (
        dense_layers,
        lambda: SparseASSoftmaxCrossentropy(
            delta=0.3, reduction="mean_with_sample_weight"
        ),
        lambda: keras.optimizers.Adam(0.05),
        classification_data,
        3,
        3,
    ),
    "sequences_ignore_class": (
        lambda: [
            keras.Input((5,), dtype="int32"),
            keras.layers.Embedding(20, 8),
            keras.layers.Dense(4),
        ],
        lambda: SparseASSoftmaxCrossentropy(delta=0.3, ignore_class=-1),
        lambda: keras.optimizers.Adam(0.1),
        sequence_data,
        6,
        2,
    ),
    "multilabel_sum": (
        lambda: dense_layers(num_classes=3),
        lambda: MultiLabelASSoftmaxCrossentropy(delta=0.1, reduction="sum"),
        lambda: keras.optimizers.Adam(0.02),
        multilabel_data,
        6,
        4,
    ),
}


@functools.lru_cache
def stretch_reference(case):
    """`StretchTrainer`'s final weights and updates for a case: the same for
    the compiled and the eager step, so computed once."""
    layers, loss, optimizer, data, epochs, max_batches = CASES[case]
    x, y, weights = data()
    keras.utils.set_random_seed(0)
    plain = keras.Sequential(layers())
    plain.compile(optimizer=optimizer(), loss=loss())
    stretches = StretchTrainer(plain, loss(), max_batches)
    stretches.fit(x, y, weights, epochs)
    return plain.get_weights(), stretches.updates


@JIT
@pytest.mark.parametrize("case", list(CASES))
def test_each_update_is_as_softmax_on_its_stretch(case, jit_compile):
    layers, loss, optimizer, data, epochs, max_batches = CASES[case]
    x, y, weights = data()
    keras.utils.set_random_seed(0)
    model = AdaptiveSequential(
        layers(), max_accumulation_steps=max_batches, skip_masked="buffer"
    )
    model.compile(optimizer=optimizer(), loss=loss(), jit_compile=jit_compile)
    recorder = BatchLogs()
    history = model.fit(
        x,
        y,
        sample_weight=weights,
        batch_size=BATCH_SIZE,
        epochs=epochs,
        shuffle=False,
        verbose=0,
        callbacks=[recorder],
    )

    expected_weights, updates = stretch_reference(case)
    for actual, expected in zip(model.get_weights(), expected_weights):
        np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-6)
    assert int(model.optimizer.iterations.numpy()) == len(updates)
    assert history.history["optimizer_updates"][-1] == len(updates)
    # The run met every kind of stretch: one that completes within a batch
    # (its batch's rest judged again), one gathered over several batches,
    # one closed by the window limit, and the last one, padded.
    samples, needed, batches, within = zip(*updates)
    assert any(within)
    assert max(batches) > 1
    assert any(n < BATCH_SIZE and b == max_batches for n, b in zip(needed[:-1], batches))
    assert needed[-1] < BATCH_SIZE
    assert min(log["backward_fraction"] for log in recorder.logs) < 1.0


def test_the_host_bookkeeping_of_stretches():
    buffer = SampleBuffer()
    buffer.build((np.zeros((4, 2), "float32"), np.zeros(4, "int32"), np.ones(4, "float32")))
    shares = np.array([1.0, 2.0, 3.0, 4.0])
    # Two needed: not full; the stretch's divisor holds the whole batch.
    assert buffer.add_batch([True, False, True, False], shares, 5) is None
    assert (buffer.fill, buffer.stretch_divisor, buffer.stretch_batches) == (2, 10.0, 1)
    # Needs 2 more: the stretch ends at sample 2 (divisor 10 + 1 + 2 + 3).
    assert buffer.add_batch([True, False, True, True], shares, 5) == (4, 16.0, 3)
    # The rest (sample 3) starts the next stretch, within this batch.
    assert (buffer.fill, buffer.stretch_divisor, buffer.stretch_batches) == (0, 4.0, 1)
    buffer.add_rest([False, False, False, True])
    assert buffer.fill == 1
    # A last sample that completes the stretch leaves no rest.
    assert buffer.add_batch([False, True, True, True], shares, 5) == (4, 4.0 + 10.0, None)
    assert (buffer.fill, buffer.stretch_divisor, buffer.stretch_batches) == (0, 0.0, 0)
    # The window limit closes a stretch that is not full, at its batch's end.
    assert buffer.add_batch([False, True, False, False], shares, 2) is None
    assert buffer.add_batch([False, False, False, False], None, 2) == (1, 10.0, None)
    assert buffer.close() is None  # Nothing open.
    assert buffer.add_batch([False, True, False, False], shares, 5) is None
    assert buffer.close() == (1, 10.0)
    assert (buffer.fill, buffer.stretch_batches) == (0, 0)


def test_rows_are_written_needed_first_after_the_buffered_ones():
    rng = np.random.default_rng(0)
    rows = [rng.standard_normal((8, 3)), np.arange(8)]
    batch = [rng.standard_normal((4, 3)), np.arange(100, 104)]
    needs = np.array([False, True, False, True])
    written = [keras.ops.convert_to_numpy(r) for r in write_rows(
        [keras.ops.convert_to_tensor(r) for r in rows],
        [keras.ops.convert_to_tensor(b) for b in batch],
        keras.ops.convert_to_tensor(needs),
        keras.ops.convert_to_tensor(3, "int32"),
    )]
    order = [1, 3, 0, 2]  # Needed first, each group in batch order.
    expected_ids = np.concatenate([np.arange(3), 100 + np.array(order), [7]])
    np.testing.assert_array_equal(written[1], expected_ids)
    np.testing.assert_allclose(written[0][3:7], batch[0][order], rtol=1e-6)
    np.testing.assert_allclose(written[0][:3], rows[0][:3], rtol=1e-6)


def buffered_model(jit_compile, max_batches=4):
    keras.utils.set_random_seed(0)
    model = AdaptiveSequential(
        dense_layers(), max_accumulation_steps=max_batches, skip_masked="buffer"
    )
    model.compile(
        optimizer=keras.optimizers.Adam(0.05),
        loss=SparseASSoftmaxCrossentropy(delta=0.3),
        jit_compile=jit_compile,
    )
    return model


class BufferAtEpochEnd(keras.callbacks.Callback):
    """Records the rows waiting in the buffer at each epoch's end."""

    def on_train_begin(self, logs=None):
        self.fills = []

    def on_epoch_end(self, epoch, logs=None):
        self.fills.append(self.model.sample_buffer.fill)


@pytest.mark.slow
@JIT
def test_resume_and_saving_with_samples_in_the_buffer(jit_compile, tmp_path):
    x, y, weights = classification_data(136)

    def fit(model, epochs=3, callbacks=()):
        model.fit(
            x, y, sample_weight=weights, batch_size=BATCH_SIZE, epochs=epochs,
            shuffle=False, verbose=0, callbacks=list(callbacks),
        )

    uninterrupted, fills = buffered_model(jit_compile), BufferAtEpochEnd()
    fit(uninterrupted, callbacks=[fills])
    # Resume after an epoch whose end left rows in the buffer (carried over).
    saved_epoch = next(epoch for epoch, fill in enumerate(fills.fills[:2]) if fill > 0)

    backup = keras.callbacks.BackupAndRestore(str(tmp_path / "backup"))
    interrupted = buffered_model(jit_compile)
    with pytest.raises(RuntimeError, match="interrupted"):
        fit(interrupted, callbacks=[backup, CrashAt(epoch=saved_epoch + 1, batch=3)])
    resumed = buffered_model(jit_compile)
    fit(resumed, callbacks=[backup])
    for actual, expected in zip(resumed.get_weights(), uninterrupted.get_weights()):
        np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-6)

    first = buffered_model(jit_compile)
    fit(first, epochs=1)  # Ends by training on its buffered rows...
    assert first.sample_buffer.fill == 0
    second = buffered_model(jit_compile)
    second.fit(x, y, sample_weight=weights, batch_size=BATCH_SIZE, epochs=3,
               shuffle=False, verbose=0,
               callbacks=[SaveAt(saved_epoch + 1, tmp_path / "m.keras")])
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    assert loaded.skip_masked == "buffer"
    assert loaded.sample_buffer.fill == fills.fills[saved_epoch]
    fit(loaded, epochs=2 - saved_epoch)
    for actual, expected in zip(loaded.get_weights(), uninterrupted.get_weights()):
        np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-6)


class SaveAt(keras.callbacks.Callback):
    """Saves the model as `path` at the end of epoch `epoch` (counted from
    1), while the buffer holds rows that `fit` trains on only when it ends."""

    def __init__(self, epoch, path):
        super().__init__()
        self.epoch, self.path = epoch, path

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.epoch - 1:
            self.model.save(self.path)


def test_bad_settings_and_batches():
    model = buffered_model(jit_compile=False)
    x, y, _ = classification_data(48)
    model.compile(
        optimizer="sgd", loss=SparseASSoftmaxCrossentropy(reduction=None)
    )
    with pytest.raises(ValueError, match="one of Keras's reductions"):
        model.fit(x, y, batch_size=16, verbose=0)
    with pytest.raises(TypeError, match='"buffer"'):
        AdaptiveSequential(dense_layers(), skip_masked="buffered")
    model = AdaptiveSequential(
        [keras.Input((None,), dtype="int32"), keras.layers.Embedding(10, 4),
         keras.layers.Dense(3)],
        skip_masked="buffer",
    )
    model.compile(optimizer="sgd", loss=SparseASSoftmaxCrossentropy())
    model.train_on_batch(np.ones((4, 5), "int32"), np.zeros((4, 5), "int32"))
    with pytest.raises(ValueError, match="Pad sequences to one length"):
        model.train_on_batch(np.ones((4, 6), "int32"), np.zeros((4, 6), "int32"))


def test_one_selection_and_one_training_pass_compiled(monkeypatch):
    """A compiled buffer step traces its passes once (no per-size branch); an
    eager one (PyTorch) runs them once per step and per update."""
    backend = keras.backend.backend()
    names = {"jax": ("_buffer_observe", "_buffer_train", "_stateless_select_rest")}.get(
        backend, ("_observe", "_buffer_train", "_select_rest")
    )
    model = buffered_model(jit_compile=True)
    calls = {name: 0 for name in names}

    def counting(name, method):
        def counted(*args):
            calls[name] += 1
            return method(*args)

        return counted

    for name in names:
        monkeypatch.setattr(model, name, counting(name, getattr(model, name)))
    x, y, weights = classification_data(160)  # 10 whole batches an epoch.
    history = model.fit(x, y, sample_weight=weights, batch_size=BATCH_SIZE, epochs=3,
                        shuffle=False, verbose=0)
    updates = int(history.history["optimizer_updates"][-1])
    observe, train, rest = (calls[name] for name in names)
    if backend == "torch":  # Eager: every call runs.
        assert observe == 30
        assert train == updates and 0 < rest < updates
    else:
        assert (observe, train, rest) == (1, 1, 1)
        assert updates > 3
