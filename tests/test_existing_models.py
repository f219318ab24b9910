"""`adaptive(model)`: AS-Speed for a model that already exists.

A converted model must train exactly as the same model built as an
`AdaptiveModel` from the start, keep what it had, and save and load as the
conversion. keras-hub tasks: `tests/test_keras_hub.py`.
"""

import keras
import numpy as np
import pytest

from keras_as_softmax import AdaptiveModel
from keras_as_softmax import AdaptiveSequential
from keras_as_softmax import SparseASSoftmaxCrossentropy
from keras_as_softmax import adaptive

NUM_CLASSES = 4
RNG = np.random.default_rng(0)
X = RNG.standard_normal((48, 6)).astype("float32")
Y = RNG.integers(0, NUM_CLASSES, len(X)).astype("int32")


def layers():
    keras.utils.set_random_seed(0)
    return [keras.layers.Dense(8, activation="tanh"), keras.layers.Dense(NUM_CLASSES)]


def functional(cls=keras.Model, **kwargs):
    inputs = keras.Input((6,))
    hidden, logits = layers()
    return cls(inputs, logits(hidden(inputs)), **kwargs)


@keras.saving.register_keras_serializable(package="test_existing_models")
class Subclassed(keras.Model):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.hidden, self.logits = layers()

    def call(self, inputs):
        return self.logits(self.hidden(inputs))


@keras.saving.register_keras_serializable(package="test_existing_models")
class AdaptiveSubclassed(AdaptiveModel, Subclassed):
    pass


ROUTES = {
    # route: (the model to convert, the same model built as an AdaptiveModel)
    "functional": (functional, lambda **kw: functional(AdaptiveModel, **kw)),
    "sequential": (
        lambda: keras.Sequential([keras.Input((6,)), *layers()]),
        lambda **kw: AdaptiveSequential([keras.Input((6,)), *layers()], **kw),
    ),
    "subclassed": (Subclassed, AdaptiveSubclassed),
}
SETTINGS = dict(max_accumulation_steps=3, accumulation_lambda=3.0)


def compile_and_fit(model, jit_compile, epochs=2):
    model.compile(
        optimizer=keras.optimizers.Adam(0.05),
        loss=SparseASSoftmaxCrossentropy(delta=0.3),
        jit_compile=jit_compile,
    )
    return model.fit(X, Y, batch_size=8, epochs=epochs, shuffle=False, verbose=0).history


@pytest.mark.slow
@pytest.mark.parametrize(
    "route, jit_compile",
    # The conversion changes no step: one compiled route is enough (and
    # `torch.compile` costs half a minute per model on a CPU).
    [(route, False) for route in ROUTES] + [("functional", True)],
)
def test_converted_model_trains_as_an_adaptive_model(route, jit_compile):
    make, make_adaptive = ROUTES[route]
    model = make()
    model(X[:1])
    converted = adaptive(model, **SETTINGS)
    assert converted is model and isinstance(model, AdaptiveModel)
    assert isinstance(model, type(make()))
    history = compile_and_fit(model, jit_compile)
    expected = make_adaptive(**SETTINGS)
    expected_history = compile_and_fit(expected, jit_compile)
    for key in ("loss", "masked_ratio", "accumulation_steps", "optimizer_updates"):
        np.testing.assert_allclose(history[key], expected_history[key], rtol=1e-5)
    # Lambda 3 asks for the largest window, which grows by one per window:
    # 12 batches in windows of 2, 3, 3, 3 and an open one applied at the end.
    assert history["optimizer_updates"][-1] == int(model.optimizer.iterations.numpy()) == 5
    for actual, wanted in zip(model.get_weights(), expected.get_weights()):
        np.testing.assert_allclose(actual, wanted, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("route", ROUTES)
def test_converted_model_saves_and_loads_as_converted(route, tmp_path):
    make, _ = ROUTES[route]
    model = adaptive(make(), **SETTINGS)
    compile_and_fit(model, jit_compile=False, epochs=1)  # Windows 2, 3, 1 (open).
    model.save(tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras")
    assert type(loaded) is type(model)
    assert (loaded.max_accumulation_steps, loaded.accumulation_lambda) == (3, 3.0)
    assert loaded.loss.get_config() == model.loss.get_config()
    assert int(loaded.optimizer.iterations.numpy()) == 3
    assert int(loaded.gradient_accumulator.updates.numpy()) == 3
    np.testing.assert_allclose(
        loaded.predict(X, verbose=0), model.predict(X, verbose=0), atol=1e-6
    )
    history = loaded.fit(X, Y, batch_size=8, shuffle=False, verbose=0).history
    assert history["optimizer_updates"] == [5]  # Two windows of 3.


def test_converting_a_model_that_was_trained_resets_its_steps():
    model = functional()
    model.compile(optimizer="sgd", loss=SparseASSoftmaxCrossentropy(delta=0.3))
    model.fit(X, Y, batch_size=8, verbose=0)
    adaptive(model, **SETTINGS)
    history = model.fit(X, Y, batch_size=8, shuffle=False, verbose=0).history
    assert history["accumulation_steps"] == [3]
    assert int(model.optimizer.iterations.numpy()) == 6 + 3  # Windows 2, 3, 1.


def test_bad_conversions_raise_and_leave_the_model_as_it_was():
    with pytest.raises(TypeError, match="`adaptive` takes a `keras.Model`; received Dense"):
        adaptive(keras.layers.Dense(2))
    model = functional()
    with pytest.raises(ValueError, match="max_accumulation_steps"):
        adaptive(model, max_accumulation_steps=0)
    assert type(model) is type(functional()) and not isinstance(model, AdaptiveModel)
    adaptive(model)
    with pytest.raises(ValueError, match="already trains with AS-Speed"):
        adaptive(model)
    with pytest.raises(TypeError, match=r"call `keras_as_softmax.adaptive\(model"):
        AdaptiveModel(functional())
