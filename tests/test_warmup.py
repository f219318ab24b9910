"""DeltaWarmup: delta moves inside compiled `fit` on every backend."""

import keras
import numpy as np
import pytest

from keras_as_softmax import DeltaWarmup
from keras_as_softmax import MultiLabelASSoftmaxCrossentropy
from keras_as_softmax import SparseASSoftmaxCrossentropy
from tests import reference
from tests.helpers import JIT


def frozen_model_and_data(seed=0):
    """A model that does not learn (learning rate 0) and targets that it
    mostly predicts already, so the loss depends on delta alone."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((32, 8)).astype("float32")
    keras.utils.set_random_seed(seed)
    model = keras.Sequential(
        [
            keras.Input((8,)),
            keras.layers.Dense(
                5, kernel_initializer=keras.initializers.RandomNormal(stddev=1.0)
            ),
        ]
    )
    predicted = np.argmax(model.predict(x, verbose=0), axis=-1)
    y = np.where(rng.random(32) < 0.7, predicted, rng.integers(0, 5, 32))
    return model, x, y.astype("int32")


@JIT
def test_delta_moves_inside_fit(jit_compile):
    model, x, y = frozen_model_and_data()
    loss = SparseASSoftmaxCrossentropy(delta=0.1)
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss=loss, jit_compile=jit_compile)
    # One batch per epoch: each epoch's loss is that batch's loss.
    history = model.fit(
        x, y, batch_size=32, epochs=5, verbose=0,
        callbacks=[DeltaWarmup(initial_delta=1.0, warmup_steps=3)],
    ).history
    expected_deltas = [1.0, 0.7, 0.4, 0.1, 0.1]
    np.testing.assert_allclose(history["as_softmax_delta"], expected_deltas, rtol=1e-6)
    logits = model.predict(x, verbose=0)
    expected_losses = [
        reference.sparse_as_softmax(y, logits, d)[0].mean() for d in expected_deltas
    ]
    # The losses computed inside the compiled step used the scheduled deltas.
    np.testing.assert_allclose(history["loss"], expected_losses, rtol=1e-5)
    assert np.all(np.diff(history["loss"][:4]) < 0)
    masked_ratio = [
        np.mean(reference.sparse_as_softmax(y, logits, d)[2].sum(-1) == 1)
        for d in expected_deltas
    ]
    assert np.all(np.diff(masked_ratio) >= 0) and masked_ratio[-1] > masked_ratio[0]
    # After fit the loss is back on its own delta and the model as it was.
    assert loss.delta_variable is None
    assert "as_softmax_delta" not in [metric.name for metric in model.metrics]


def test_warmup_fraction_of_all_batches():
    model, x, y = frozen_model_and_data()
    model.compile(optimizer=keras.optimizers.SGD(0.0),
                  loss=SparseASSoftmaxCrossentropy(delta=0.1))
    # 2 batches per epoch, 4 epochs: the warm-up spans 4 batches.
    history = model.fit(
        x, y, batch_size=16, epochs=4, verbose=0,
        callbacks=[DeltaWarmup(warmup_fraction=0.5)],
    ).history
    # The epoch logs show the delta of each epoch's last batch (steps 1, 3, 5, 7).
    np.testing.assert_allclose(
        history["as_softmax_delta"], [0.775, 0.325, 0.1, 0.1], rtol=1e-6
    )


@pytest.mark.slow
def test_several_as_losses_in_a_dict(tmp_path):
    inputs = keras.Input((8,))
    hidden = keras.layers.Dense(16, activation="relu")(inputs)
    model = keras.Model(
        inputs,
        {"classes": keras.layers.Dense(5, name="classes")(hidden),
         "labels": keras.layers.Dense(4, name="labels")(hidden),
         "score": keras.layers.Dense(1, name="score")(hidden)},
    )
    model.compile(
        optimizer="adam",
        loss={"classes": SparseASSoftmaxCrossentropy(delta=0.2, name="classes_as"),
              "labels": MultiLabelASSoftmaxCrossentropy(delta=0.3, name="labels_as"),
              "score": "mse"},
        jit_compile=True,
    )
    rng = np.random.default_rng(1)
    x = rng.standard_normal((32, 8)).astype("float32")
    targets = {"classes": rng.integers(0, 5, 32),
               "labels": (rng.random((32, 4)) < 0.4).astype("float32"),
               "score": rng.standard_normal((32, 1)).astype("float32")}
    history = model.fit(x, targets, batch_size=16, epochs=3, verbose=0,
                        callbacks=[DeltaWarmup(warmup_steps=2)]).history
    np.testing.assert_allclose(history["classes_as_delta"], [0.6, 0.2, 0.2], rtol=1e-6)
    np.testing.assert_allclose(history["labels_as_delta"], [0.65, 0.3, 0.3], rtol=1e-6)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_allclose(
        loaded.predict(x, verbose=0)["classes"], model.predict(x, verbose=0)["classes"],
        rtol=1e-6, atol=1e-6,
    )


def test_model_without_as_loss():
    model, x, y = frozen_model_and_data()
    model.compile(optimizer="sgd",
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    with pytest.raises(ValueError, match="needs a model compiled with an AS-Softmax loss"):
        model.fit(x, y, epochs=1, verbose=0, callbacks=[DeltaWarmup(warmup_steps=2)])


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({}, ValueError, "exactly one of"),
        ({"warmup_steps": 3, "warmup_fraction": 0.5}, ValueError, "exactly one of"),
        ({"warmup_steps": 0}, ValueError, "`warmup_steps` must be a positive integer"),
        ({"warmup_fraction": 1.5}, ValueError, r"`warmup_fraction` must be in \(0, 1\]"),
    ],
)
def test_bad_arguments(kwargs, error, message):
    with pytest.raises(error, match=message):
        DeltaWarmup(**kwargs)


@JIT
def test_later_fits_see_their_own_delta(jit_compile):
    model, x, y = frozen_model_and_data()
    loss = SparseASSoftmaxCrossentropy(delta=0.1)
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss=loss, jit_compile=jit_compile)
    logits = model.predict(x, verbose=0)
    for _ in range(2):  # A second warm-up starts again from initial_delta.
        history = model.fit(
            x, y, batch_size=32, epochs=2, verbose=0,
            callbacks=[DeltaWarmup(initial_delta=1.0, warmup_steps=4)],
        ).history
        np.testing.assert_allclose(history["as_softmax_delta"], [1.0, 0.775], rtol=1e-6)
    # Without a warm-up, training is back on the loss's delta.
    history = model.fit(x, y, batch_size=32, epochs=1, verbose=0).history
    np.testing.assert_allclose(
        history["loss"], [reference.sparse_as_softmax(y, logits, 0.1)[0].mean()],
        rtol=1e-5,
    )


class Subclassed(keras.Model):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.dense = keras.layers.Dense(5)

    def call(self, inputs):
        return self.dense(inputs)


def test_subclassed_model_that_is_already_built():
    _, x, y = frozen_model_and_data()
    model = Subclassed()
    model(x)  # Built, so Keras locks its state.
    model.compile(optimizer="sgd", loss=SparseASSoftmaxCrossentropy(delta=0.1))
    history = model.fit(
        x, y, batch_size=8, epochs=2, verbose=0,
        callbacks=[DeltaWarmup(initial_delta=1.0, warmup_steps=4)],
    ).history
    np.testing.assert_allclose(history["as_softmax_delta"], [0.325, 0.1], rtol=1e-6)
