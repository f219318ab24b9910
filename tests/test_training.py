"""AS-Softmax losses inside `model.fit`, `evaluate` and `.keras` saving."""

import keras
import numpy as np
import pytest

from keras_as_softmax import ASSoftmaxCrossentropy
from keras_as_softmax import SparseASSoftmaxCrossentropy
from keras_as_softmax import sparse_as_softmax_mask
from tests import reference
from tests.helpers import JIT

NUM_CLASSES = 5


def classification_data(num_samples=512, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((num_samples, 16)).astype("float32")
    y = np.argmax(x @ rng.standard_normal((16, NUM_CLASSES)), axis=-1)
    return x, y.astype("int32")


def classifier(seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.Input((16,)),
            keras.layers.Dense(32, activation="relu"),
            keras.layers.Dense(NUM_CLASSES),
        ]
    )


@pytest.mark.slow
@JIT
@pytest.mark.parametrize("one_hot", [False, True], ids=["sparse", "one_hot"])
def test_fit_learns(jit_compile, one_hot):
    x, y = classification_data()
    if one_hot:
        loss, targets = ASSoftmaxCrossentropy(delta=0.1), np.eye(NUM_CLASSES)[y]
    else:
        loss, targets = SparseASSoftmaxCrossentropy(delta=0.1), y
    model = classifier()
    model.compile(
        optimizer=keras.optimizers.Adam(1e-2),
        loss=loss,
        metrics=["categorical_accuracy" if one_hot else "sparse_categorical_accuracy"],
        jit_compile=jit_compile,
    )
    history = model.fit(x, targets, batch_size=64, epochs=8, verbose=0).history
    losses = history["loss"]
    assert np.all(np.isfinite(losses))
    assert losses[-1] < 0.5 * losses[0]
    accuracy = history["categorical_accuracy" if one_hot else "sparse_categorical_accuracy"]
    assert accuracy[-1] > 0.85
    # AS-Softmax is at work: most learned samples are now masked, and the
    # reported loss is the AS loss, well below softmax cross-entropy.
    logits = model.predict(x, verbose=0)
    _, num_masked, num_counted = sparse_as_softmax_mask(y, logits, delta=0.1)
    assert int(num_masked) > 0.3 * int(num_counted)
    as_loss = reference.sparse_as_softmax(y, logits, 0.1)[0].mean()
    np.testing.assert_allclose(
        model.evaluate(x, targets, batch_size=len(x), verbose=0, return_dict=True)["loss"],
        as_loss,
        rtol=1e-4, atol=1e-6,
    )
    assert as_loss < 0.8 * reference.softmax_crossentropy(y, logits).mean()


def token_data(num_samples=64, length=12, vocabulary=30, seed=0):
    """Padded token sequences (id 0 = padding) and per-token class ids."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(1, vocabulary, size=(num_samples, length))
    lengths = rng.integers(3, length + 1, size=num_samples)
    padding = np.arange(length)[None, :] >= lengths[:, None]
    tokens = np.where(padding, 0, tokens)
    targets = np.where(padding, -1, tokens % NUM_CLASSES)
    return tokens.astype("int32"), targets.astype("int32"), ~padding


@pytest.mark.slow
@JIT
def test_token_model_with_keras_mask_and_ignore_class(jit_compile):
    tokens, targets, valid = token_data()
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((None,), dtype="int32"),
            keras.layers.Embedding(30, 16, mask_zero=True),
            keras.layers.Dense(NUM_CLASSES),
        ]
    )
    model.compile(
        optimizer=keras.optimizers.Adam(2e-2),
        loss=SparseASSoftmaxCrossentropy(delta=0.1, ignore_class=-1),
        jit_compile=jit_compile,
    )
    history = model.fit(tokens, targets, batch_size=16, epochs=5, verbose=0)
    assert history.history["loss"][-1] < 0.5 * history.history["loss"][0]
    # One batch: the reported loss is the reference mean over real tokens.
    logits = model.predict(tokens, batch_size=len(tokens), verbose=0)
    ref_loss = reference.sparse_as_softmax(targets, logits, 0.1, ignore_class=-1)[0]
    evaluated = model.evaluate(tokens, targets, batch_size=len(tokens), verbose=0)
    np.testing.assert_allclose(evaluated, ref_loss.sum() / valid.sum(), rtol=1e-4)


def test_save_and_load_restores_the_loss(tmp_path):
    x, y = classification_data(num_samples=128)
    model = classifier()
    loss = SparseASSoftmaxCrossentropy(delta=0.25, ignore_class=-1, name="as_loss")
    model.compile(optimizer="adam", loss=loss)
    model.fit(x, y, epochs=1, verbose=0)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded.loss, SparseASSoftmaxCrossentropy)
    assert loaded.loss.get_config() == loss.get_config()
    np.testing.assert_allclose(
        loaded.evaluate(x, y, verbose=0), model.evaluate(x, y, verbose=0), rtol=1e-6
    )
    # Training goes on after loading.
    loaded.fit(x, y, epochs=1, verbose=0)
