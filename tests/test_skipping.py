"""AS-Speed with `skip_masked=True`: backward passes on unmasked samples only.

The gradient of a step that skips must equal AS-Softmax's gradient of the
whole batch, so a deterministic model ends with the same weights with and
without skipping; the sub-batch sizes are checked against a float64 NumPy
reference of which samples are masked.
"""

import math

import keras
import numpy as np
import pytest

from keras_as_softmax import AdaptiveModel
from keras_as_softmax import AdaptiveSequential
from keras_as_softmax import MultiLabelASSoftmaxCrossentropy
from keras_as_softmax import SparseASSoftmaxCrossentropy
from keras_as_softmax import sparse_as_softmax_mask
from keras_as_softmax.skipping import FIXED_SHARE_PRIOR
from keras_as_softmax.skipping import SELECTION_SHARE_PRIOR
from keras_as_softmax.skipping import PassChooser
from keras_as_softmax.skipping import SkippingCosts
from keras_as_softmax.skipping import ladder_index
from keras_as_softmax.skipping import needs_backward
from tests import reference
from tests.helpers import BatchLogs
from tests.helpers import CrashAt
from tests.helpers import JIT

NUM_CLASSES = 4


def fit_both(build, compile_kwargs, x, y, sample_weight=None, epochs=2, batch_size=16):
    """Trains the model `build(skip_masked)` without and with skipping, from
    the same initial weights; returns both models and the skipping run's
    batch logs."""
    models, recorder = {}, BatchLogs()
    for skip in (False, True):
        keras.utils.set_random_seed(0)
        model = build(skip)
        model.compile(**compile_kwargs())
        model.fit(
            x,
            y,
            sample_weight=sample_weight,
            batch_size=batch_size,
            epochs=epochs,
            shuffle=False,
            verbose=0,
            callbacks=[recorder] if skip else [],
        )
        models[skip] = model
    return models[False], models[True], recorder.logs


def assert_same_training(plain, skipping):
    for actual, expected in zip(skipping.get_weights(), plain.get_weights()):
        np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-6)
    assert int(skipping.optimizer.iterations.numpy()) == int(
        plain.optimizer.iterations.numpy()
    )


def dense_classifier(skip, regularizer=None):
    return AdaptiveSequential(
        [
            keras.Input((6,)),
            keras.layers.Dense(16, activation="tanh", kernel_regularizer=regularizer),
            keras.layers.Dense(NUM_CLASSES),
        ],
        max_accumulation_steps=3,
        skip_masked=skip,
    )


def classification_data(num_samples=208, seed=1):
    # 13 batches of 16: the last window of an epoch is left open (partial).
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((num_samples, 6)).astype("float32")
    y = ((x[:, 0] > 0) + 2 * (x[:, 1] > 0)).astype("int32")
    return x, y


@pytest.mark.slow
@JIT
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_same_weights_with_weights_regulariser_and_partial_window(optimizer, jit_compile):
    x, y = classification_data()
    weights = np.random.default_rng(2).uniform(0, 2, len(x)).astype("float32")
    weights[::7] = 0.0
    plain, skipping, logs = fit_both(
        lambda skip: dense_classifier(skip, keras.regularizers.L2(0.01)),
        lambda: dict(
            optimizer=keras.optimizers.SGD(0.5)
            if optimizer == "sgd"
            else keras.optimizers.Adam(0.05),
            loss=SparseASSoftmaxCrossentropy(delta=0.3),
            jit_compile=jit_compile,
        ),
        x,
        y,
        sample_weight=weights,
        epochs=3,
    )
    assert_same_training(plain, skipping)
    # Skipping did happen: some batches went backward on a sub-batch.
    assert min(log["backward_fraction"] for log in logs) < 1.0
    assert min(log["sub_batch_size"] for log in logs) < 16


@pytest.mark.slow
@JIT
def test_sequences_with_ignore_class_and_per_sample_weights(jit_compile):
    rng = np.random.default_rng(3)
    tokens = rng.integers(1, 20, (96, 5)).astype("int32")
    y = (tokens % NUM_CLASSES).astype("int32")
    y[:, 3:][rng.random((96, 2)) < 0.5] = -1  # Padding, ignored.
    weights = rng.uniform(0.5, 1.5, 96).astype("float32")

    def build(skip):
        return AdaptiveSequential(
            [
                keras.Input((5,), dtype="int32"),
                keras.layers.Embedding(20, 8),
                keras.layers.Dense(NUM_CLASSES),
            ],
            max_accumulation_steps=2,
            skip_masked=skip,
        )

    plain, skipping, logs = fit_both(
        build,
        lambda: dict(
            optimizer=keras.optimizers.Adam(0.1),
            loss=SparseASSoftmaxCrossentropy(delta=0.3, ignore_class=-1),
            jit_compile=jit_compile,
        ),
        tokens,
        y,
        sample_weight=weights,
        epochs=6,
    )
    assert_same_training(plain, skipping)
    assert min(log["backward_fraction"] for log in logs) < 1.0


@pytest.mark.slow
@JIT
def test_multilabel_samples(jit_compile):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((128, 6)).astype("float32")
    # Every sample has a positive and a negative label, so it can be masked.
    y = np.stack([x[:, 0] > 0, x[:, 0] <= 0, x[:, 1] > 0], -1).astype("float32")
    plain, skipping, logs = fit_both(
        lambda skip: AdaptiveSequential(
            [keras.Input((6,)), keras.layers.Dense(3)], skip_masked=skip
        ),
        lambda: dict(
            optimizer=keras.optimizers.Adam(0.1),
            loss=MultiLabelASSoftmaxCrossentropy(delta=0.1),
            jit_compile=jit_compile,
        ),
        x,
        y,
        epochs=6,
    )
    assert_same_training(plain, skipping)
    assert min(log["backward_fraction"] for log in logs) < 1.0


def test_a_sample_needs_backward_while_any_counted_position_is_unmasked():
    masked = np.array([[True, True], [True, False], [False, False], [True, False]])
    counted = np.array([[True, True], [True, True], [False, False], [True, False]])
    needs = keras.ops.convert_to_numpy(needs_backward(masked, counted))
    # Row 2 counts nothing; row 3's unmasked position does not count.
    np.testing.assert_array_equal(needs, [False, True, False, False])


BATCH = 32
# Samples that need a backward pass, per batch: every size of the ladder
# (32, 16, 8, 4, 2, 1 and none), and after the busy batch (20 > 32 / 2) a
# batch without a selection pass.
NEEDED = [0, 1, 2, 3, 5, 9, 17, 20, 4, 2]


def reference_sub_batch_sizes(needed_counts, batch_size, exact):
    """The sub-batch of each batch, by the rule in plain Python: a selection
    pass when the last batch needed at most half, then (`exact`) the needed
    samples themselves or the smallest of 32, 16, ..., 1 that holds them (0
    for none)."""
    sizes, last_needed = [], 0
    for needed in needed_counts:
        if last_needed * 2 > batch_size:
            sizes.append(batch_size)
        elif needed == 0 or exact:
            sizes.append(needed)
        else:
            sizes.append(min(s for s in (32, 16, 8, 4, 2, 1) if s >= needed))
        last_needed = needed
    return sizes


def fit_scripted(build, x, y, jit_compile):
    """`fit_both` for one epoch of `scripted_batches` at delta 0.5; also
    returns the skipping run's sub-batch sizes."""
    plain, skipping, logs = fit_both(
        build,
        lambda: dict(
            optimizer=keras.optimizers.SGD(0.01),
            loss=SparseASSoftmaxCrossentropy(delta=0.5),
            jit_compile=jit_compile,
        ),
        x,
        y,
        epochs=1,
        batch_size=BATCH,
    )
    return plain, skipping, logs, [int(log["sub_batch_size"]) for log in logs]


def runs_eagerly(jit_compile):
    """Whether the training step branches in Python, and so takes a
    sub-batch of exactly the needed samples: PyTorch's steps, and JAX's
    without jit (a TensorFlow step is a graph unless `run_eagerly`)."""
    backend = keras.backend.backend()
    return backend == "torch" or (backend == "jax" and not jit_compile)


def scripted_batches(needed_counts, seed=0):
    """Inputs that are the logits: a sample that needs no backward pass is
    sure of its target, the others are uniform; shuffled within a batch."""
    rng = np.random.default_rng(seed)
    x = np.zeros((len(needed_counts) * BATCH, NUM_CLASSES), "float32")
    y = rng.integers(0, NUM_CLASSES, len(x)).astype("int32")
    for batch, needed in enumerate(needed_counts):
        rows = batch * BATCH + rng.permutation(BATCH)[needed:]
        x[rows, y[rows]] = 20.0
    return x, y


@pytest.mark.slow
@JIT
def test_every_ladder_size_and_a_batch_with_nothing_to_learn(jit_compile, monkeypatch):
    x, y = scripted_batches(NEEDED)
    fetches = []
    fetch = PassChooser._fetch
    monkeypatch.setattr(
        PassChooser, "_fetch", staticmethod(lambda values: fetches.append(1) or fetch(values))
    )
    # The independent reference says which samples need a backward pass.
    _, _, keep, _ = reference.sparse_as_softmax(y, x, 0.5)
    needed = (keep.sum(-1) > 1).reshape(len(NEEDED), BATCH).sum(-1)
    np.testing.assert_array_equal(needed, NEEDED)

    def build(skip):
        inputs = keras.Input((NUM_CLASSES,))
        outputs = keras.layers.Dense(
            NUM_CLASSES,
            kernel_initializer="identity",
            kernel_regularizer=keras.regularizers.L2(0.01),
        )(inputs)
        return AdaptiveModel(inputs, outputs, max_accumulation_steps=1, skip_masked=skip)

    plain, skipping, logs, sizes = fit_scripted(build, x, y, jit_compile)
    assert sizes == reference_sub_batch_sizes(NEEDED, BATCH, runs_eagerly(jit_compile))
    # A compiled step's pass is chosen on the host with one synchronisation
    # per step, and one more for the first step's choice.
    assert len(fetches) == (0 if runs_eagerly(jit_compile) else len(NEEDED) + 1)
    # The empty batch still applied the regulariser's gradient, as the
    # unskipped step does.
    assert_same_training(plain, skipping)
    np.testing.assert_allclose(
        logs[-1]["backward_fraction"], np.mean(sizes) / BATCH, rtol=1e-6
    )


@pytest.mark.slow
@JIT
def test_no_backward_leaves_batch_norm_statistics_alone(jit_compile):
    # Every sample is masked from the start: the selection pass runs in
    # inference mode and nothing goes through a training forward pass.
    x, y = scripted_batches([0, 0, 0])
    model = AdaptiveSequential(
        [
            keras.Input((NUM_CLASSES,)),
            keras.layers.BatchNormalization(),
            keras.layers.Dropout(0.5),
            keras.layers.Dense(NUM_CLASSES, kernel_initializer="identity"),
        ],
        skip_masked=True,
    )
    model.compile(
        optimizer="sgd", loss=SparseASSoftmaxCrossentropy(delta=0.5), jit_compile=jit_compile
    )
    history = model.fit(x * 10, y, batch_size=BATCH, shuffle=False, verbose=0)
    assert history.history["backward_fraction"] == [0.0]
    np.testing.assert_array_equal(model.layers[0].moving_mean.numpy(), 0.0)
    np.testing.assert_array_equal(model.layers[0].moving_variance.numpy(), 1.0)


def test_masked_means_the_same_for_the_loss_and_the_counts():
    # delta 1 keeps every class, but p_t rounds to 1: loss and gradient 0.
    y, logits = np.array([0]), np.array([[30.0, 0.0, 0.0]], "float32")
    loss = SparseASSoftmaxCrossentropy(delta=1.0)
    assert float(loss(y, logits)) == 0.0
    assert [int(n) for n in loss.masked_counts(y, logits)] == [1, 1]
    assert int(sparse_as_softmax_mask(y, logits, delta=1.0)[1]) == 1


@pytest.mark.parametrize("skip", [True, "auto", "buffer"])
def test_settings_are_saved_and_checked(tmp_path, skip):
    model = dense_classifier(skip=skip)
    model.compile(optimizer="adam", loss=SparseASSoftmaxCrossentropy())
    model.save(tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras")
    assert loaded.skip_masked == skip and type(loaded.skip_masked) is type(skip)
    assert isinstance(loaded.skipping_costs, SkippingCosts) is (skip == "auto")
    assert "backward_fraction" in [m.name for m in loaded.metrics]
    assert (getattr(loaded, "sample_buffer", None) is not None) is (skip == "buffer")
    with pytest.raises(TypeError, match='`skip_masked` must be True, False, "auto" or "buffer"'):
        dense_classifier(skip="yes")


class ScriptedCosts(SkippingCosts):
    """`SkippingCosts` on a clock that advances by `seconds(key)` for each
    step, `key` the pass the step ran, or by `compile_seconds` per
    compilation for a step that compiled; `keys` lists the passes that ran."""

    def __init__(self, seconds, compile_seconds=0.0):
        self.now, self.seconds, self.compile_seconds = 0.0, seconds, compile_seconds
        self.keys = []
        super().__init__(clock=lambda: self.now)

    def begin_step(self):
        if self._key is not None:
            compiling = self.compile_seconds * self._compilations
            self.now += compiling if self._compilations else self.seconds(self._key)
        super().begin_step()

    def ran(self, key, compilations=0):
        self.keys.append(key)
        super().ran(key, compilations)


def run_scripted(costs, pattern):
    """`SkippingCosts` choosing on `costs(key)` for a sequence of steps
    whose last batch's pass key is `pattern[i]`; the keys that ran."""
    scripted, ran = ScriptedCosts(costs), []
    for predicted in pattern:
        scripted.begin_step()
        ran.append(predicted if scripted.skips(predicted) else 0)
        scripted.ran(ran[-1])
    return ran


def test_auto_rule_with_scripted_costs():
    cheap = lambda key: 1.0 if key == 0 else 0.4  # noqa: E731
    dear = lambda key: 1.0 if key == 0 else 1.5  # noqa: E731
    # Each pass runs twice before it is measured (its first run compiles);
    # then the cheaper one runs.
    assert run_scripted(cheap, [5] * 8) == [5, 5, 0, 0, 5, 5, 5, 5]
    assert run_scripted(dear, [5] * 8) == [5, 5, 0, 0, 0, 0, 0, 0]
    # A new size is measured on its own (the masked ratio changed).
    assert run_scripted(dear, [5] * 6 + [6] * 4)[6:] == [6, 6, 0, 0]
    # The pass left aside runs again, sooner when the two are close, and
    # measuring it again costs at most 1 % over the cheaper pass's time.
    for costs, aside in [(dear, 5), (cheap, 0), (lambda key: 1.0 if key == 0 else 1.05, 5)]:
        ran = run_scripted(costs, [5] * 1000)
        reruns = ran[4:].count(aside)
        assert reruns >= 2
        spent = sum(costs(key) for key in ran[4:])
        cheaper = min(costs(0), costs(5)) * len(ran[4:])
        assert spent <= cheaper * (1 + SkippingCosts.EXPLORATION_SHARE) + max(costs(0), costs(5))
    assert run_scripted(lambda key: 1.0 if key == 0 else 1.05, [5] * 1000)[4:].count(5) > 100


def run_pass_chooser(needed_per_step, costs, batch_size=64):
    """`PassChooser` over scripted selection counts, without a model: the
    keys of the passes that ran."""

    def select(batch):
        needed = needed_per_step[batch[0]]
        return None, None, np.array([ladder_index(needed, batch_size), needed, batch_size])

    chooser = PassChooser(
        select,
        lambda branch: lambda batch, selection: batch[0],
        lambda args, step: np.array(
            [batch_size if step is None else needed_per_step[step], batch_size]
        ),
        costs,
    )
    for step in range(len(needed_per_step)):
        chooser(np.full(batch_size, step))  # A batch: its step's number.
    return costs.keys


def test_auto_compiles_a_size_once_it_pays():
    # The whole batch costs 1 s; a selection pass 0.5 s, then a training pass
    # over `key`'s rows 0.3 s plus 0.7 s times their share of the batch (as
    # `SELECTION_SHARE_PRIOR` and `FIXED_SHARE_PRIOR` assume until measured);
    # every compilation 20 s. After 10 full batches, each batch needs 5
    # samples (key 4: 8 rows of 64): 0.1125 s saved a step, against two
    # compilations (the selection pass and the size).
    assert (SELECTION_SHARE_PRIOR, FIXED_SHARE_PRIOR) == (0.5, 0.3)
    seconds = lambda key: 1.0 if key == 0 else 0.8 + 0.7 * 2.0 ** (1 - key)  # noqa: E731
    saving, cost = seconds(0) - seconds(4), 2 * 20.0
    assert saving == pytest.approx(0.1125)
    for stretch in (100, 400, 2000):
        costs = ScriptedCosts(seconds, compile_seconds=20.0)
        keys = run_pass_chooser([64] * 10 + [5] * stretch, costs)
        if 4 not in keys:
            # Not compiled while what it would have saved is below its cost.
            assert stretch * saving < cost
            continue
        # Compiled (the selection pass with it: no step ran a selection pass
        # before) once what it would have saved reached the cost, counted
        # from the second step after the first that needed 5 samples (until
        # a selection pass is compiled, the counts are read one step late).
        assert set(keys[: keys.index(4)]) == {0}
        waited = keys.index(4) - 11
        assert cost <= waited * saving < cost + saving, waited
        # Ski rental: at most twice the better of the two choices in hindsight
        # (compile at once, or never), exploration steps aside.
        spent = sum(seconds(key) for key in keys[10:]) + cost
        best = min(cost + stretch * seconds(4), stretch * seconds(0))
        assert spent <= 2 * best
    assert keys[-5:] == [4] * 5
    # With the end of `fit` near, it compiles nothing: what it would save
    # over the steps left no longer repays the cost.
    for stretch, compiles in ((2000, True), (400, False)):
        costs = ScriptedCosts(seconds, compile_seconds=20.0)
        costs.remaining_steps = 10 + stretch
        keys = run_pass_chooser([64] * 10 + [5] * stretch, costs)
        assert set(keys) == ({0, 4} if compiles else {0})


@pytest.mark.parametrize("auto", [True, False])
def test_whole_batch_steps_read_their_counts_once(monkeypatch, auto):
    # Each step trains the whole batch (no batch needs a selection pass).
    # `skip_masked=True` reads each step's counts after it; `"auto"`, until
    # it compiles a selection pass, one step late, so that the host does not
    # wait for a step before it starts the next. One read a step either way,
    # and one more for the first step's choice, from the state.
    events = []
    fetch = PassChooser._fetch

    def read(values):
        counts = fetch(values)
        events.append(("read", int(counts[0])))
        return counts

    monkeypatch.setattr(PassChooser, "_fetch", staticmethod(read))
    chooser = PassChooser(
        select=None,
        compile_step=lambda branch: lambda batch, selection: events.append(("step", batch[0]))
        or batch[0],
        read_counts=lambda args, step: np.array([64 if step is None else 60 + step, 64]),
        costs=ScriptedCosts(lambda key: 1.0) if auto else None,
    )
    for step in range(4):
        chooser(np.full(64, step))
    first = [("read", 64)]  # The first step's choice, from the state.
    if auto:
        expected = first + [("step", 0), ("step", 1), ("read", 60), ("step", 2), ("read", 61)]
        expected += [("step", 3), ("read", 62)]
    else:
        expected = first + [("step", 0), ("read", 60), ("step", 1), ("read", 61)]
        expected += [("step", 2), ("read", 62), ("step", 3), ("read", 63)]
    assert events == expected


def test_auto_estimates_a_new_size_from_the_measured_ones():
    # A selection pass 0.2 s, then a training pass 0.4 s plus 0.6 s times its
    # rows' share. With B/2 and B/4 measured (keys 2 and 3), B/16 (key 5) is
    # estimated through them: 0.1125 s a step saved over B/4, against one
    # compilation of 2 s.
    seconds = lambda key: 1.0 if key == 0 else 0.6 + 0.6 * 2.0 ** (1 - key)  # noqa: E731
    costs = ScriptedCosts(seconds, compile_seconds=2.0)
    steps = [(0, 1), (0, 0), (0, 0), (2, 2), (2, 0), (2, 0), (3, 1), (3, 0), (3, 0)]
    for key, compilations in steps:  # Each compiling step, then two runs.
        costs.begin_step()
        costs.ran(key, compilations)
    costs.begin_step()
    saving = seconds(3) - seconds(5)
    assert saving == pytest.approx(0.1125)
    paid = [costs.pays_to_compile(5, 3) for _ in range(20)]
    assert paid.index(True) + 1 == math.ceil(2.0 / saving)


@pytest.mark.slow
@JIT
@pytest.mark.parametrize("skipping_pays", [True, False])
def test_auto_skips_while_it_pays_and_trains_the_same(jit_compile, skipping_pays):
    # Every batch has 2 samples that need a backward pass: the whole batch
    # costs 1 s and skipping 0.2 s or 3 s a step, on a scripted clock.
    x, y = scripted_batches([2] * 12)
    seconds = lambda key: 1.0 if key == 0 else (0.2 if skipping_pays else 3.0)  # noqa: E731

    def build(skip):
        inputs = keras.Input((NUM_CLASSES,))
        outputs = keras.layers.Dense(NUM_CLASSES, kernel_initializer="identity")(inputs)
        model = AdaptiveModel(
            inputs, outputs, max_accumulation_steps=1, skip_masked="auto" if skip else False
        )
        if skip:
            model.skipping_costs = ScriptedCosts(seconds)
        return model

    plain, auto, _, sizes = fit_scripted(build, x, y, jit_compile)
    # Both passes are measured first, then the cheaper one runs.
    assert sizes[4:] == [2 if skipping_pays else BATCH] * 8
    assert_same_training(plain, auto)


@pytest.mark.slow
@JIT
def test_resume_inside_a_window(jit_compile, tmp_path):
    x, y = classification_data(64)

    def make():
        keras.utils.set_random_seed(0)
        model = AdaptiveSequential(
            [keras.Input((6,)), keras.layers.Dense(8, activation="tanh"), keras.layers.Dense(NUM_CLASSES)],
            max_accumulation_steps=3,
            accumulation_lambda=3.0,
            skip_masked=True,
        )
        model.compile(
            optimizer=keras.optimizers.Adam(0.05),
            loss=SparseASSoftmaxCrossentropy(delta=0.3),
            jit_compile=jit_compile,
        )
        return model

    def fit(model, callbacks=()):
        model.fit(x, y, batch_size=8, epochs=3, shuffle=False, verbose=0, callbacks=list(callbacks))

    reference_model = make()
    fit(reference_model)
    backup = keras.callbacks.BackupAndRestore(str(tmp_path / "backup"))
    interrupted = make()
    with pytest.raises(RuntimeError, match="interrupted"):
        fit(interrupted, [backup, CrashAt(epoch=2, batch=4)])  # Inside a window of 3.
    resumed = make()
    fit(resumed, [backup])
    assert_same_training(reference_model, resumed)
