"""Saves trained models on this process's backend, for `test_saving.py` to
load on another.

Usage: `KERAS_BACKEND=jax python -m tests.saving_check OUT_DIR`. Writes one
`.keras` file per model in `MODELS` and `expected.json`: what the loading
side must find (predictions on `inputs()`, loss configs, AS-Speed settings
and state, optimizer steps).
"""

import json
import os
import sys

import keras
import numpy as np

from keras_as_softmax import AdaptiveModel
from keras_as_softmax import AdaptiveSequential
from keras_as_softmax import ASSoftmaxCrossentropy
from keras_as_softmax import DeltaWarmup
from keras_as_softmax import MultiLabelASSoftmaxCrossentropy
from keras_as_softmax import SparseASSoftmaxCrossentropy

NUM_CLASSES = 4


@keras.saving.register_keras_serializable(package="keras_as_softmax_tests")
class Classifier(AdaptiveModel, keras.Model):
    """A subclassed `AdaptiveModel` with a constructor argument of its own."""

    def __init__(self, units=8, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.hidden = keras.layers.Dense(units, activation="tanh")
        self.logits = keras.layers.Dense(NUM_CLASSES)

    def call(self, inputs):
        return self.logits(self.hidden(inputs))

    def get_config(self):
        return {**super().get_config(), "units": self.units}


def inputs(num_samples=24, seed=3):
    return np.random.default_rng(seed).standard_normal((num_samples, 6)).astype("float32")


def targets(kind, x):
    ids = np.argmax(x[:, :NUM_CLASSES], axis=-1).astype("int32")
    if kind == "one_hot":
        return np.eye(NUM_CLASSES, dtype="float32")[ids]
    if kind == "multilabel":
        return (x[:, :NUM_CLASSES] > 0.2).astype("float32")
    return ids


def functional():
    x = keras.Input((6,))
    hidden = keras.layers.Dense(8, activation="tanh")(x)
    model = AdaptiveModel(x, keras.layers.Dense(NUM_CLASSES)(hidden),
                          max_accumulation_steps=3, accumulation_lambda=3.0,
                          name="functional")
    loss = SparseASSoftmaxCrossentropy(
        delta=0.25, ignore_class=-1, reduction="sum", name="sparse_as"
    )
    return model, loss, "sparse"


def subclassed():
    model = Classifier(units=5, max_accumulation_steps=3, accumulation_lambda=3.0,
                       name="subclassed")
    return model, MultiLabelASSoftmaxCrossentropy(delta=0.3, name="multi_as"), "multilabel"


def sequential():
    model = AdaptiveSequential(
        [keras.Input((6,)), keras.layers.Dense(8, activation="tanh"),
         keras.layers.Dense(NUM_CLASSES, activation="softmax")],
        max_accumulation_steps=3, accumulation_lambda=3.0, name="sequential",
    )
    loss = ASSoftmaxCrossentropy(delta=0.35, from_logits=False, name="one_hot_as")
    return model, loss, "one_hot"


def plain():
    model = keras.Sequential(
        [keras.Input((6,)), keras.layers.Dense(NUM_CLASSES)], name="plain"
    )
    return model, SparseASSoftmaxCrossentropy(delta=0.15, dtype="bfloat16"), "sparse"


MODELS = {"functional": functional, "subclassed": subclassed,
          "sequential": sequential, "plain": plain}


def save_all(out_dir):
    x = inputs()
    expected = {}
    for name, build in MODELS.items():
        keras.utils.set_random_seed(0)
        model, loss, kind = build()
        model.compile(optimizer=keras.optimizers.Adam(0.01), loss=loss)
        # 3 batches: windows 2 and an open one of 3 (delta is not 1, but
        # lambda 3 asks for 3 whatever is masked), applied when `fit` ends.
        # The warm-up leaves nothing behind in the saved model.
        model.fit(x, targets(kind, x), batch_size=8, shuffle=False, verbose=0,
                  callbacks=[DeltaWarmup(warmup_steps=2)])
        if isinstance(model, AdaptiveModel):
            # One more batch opens a window: saved open, it must load open.
            model.train_on_batch(x[:8], targets(kind, x[:8]))
        model.save(os.path.join(out_dir, f"{name}.keras"))
        record = {
            "class": type(model).__name__,
            "kind": kind,
            "predictions": model.predict(x, verbose=0).tolist(),
            "loss": model.loss.get_config(),
            "iterations": int(model.optimizer.iterations.numpy()),
        }
        if isinstance(model, AdaptiveModel):
            state = model.gradient_accumulator
            record["settings"] = [model.max_accumulation_steps, model.accumulation_lambda]
            record["state"] = [int(v.numpy()) for v in
                               (state.window, state.micro_step, state.updates)]
            record["gradients"] = [g.numpy().tolist() for g in state.gradients]
        expected[name] = record
    expected["backend"] = keras.backend.backend()
    with open(os.path.join(out_dir, "expected.json"), "w") as f:
        json.dump(expected, f)


if __name__ == "__main__":
    save_all(sys.argv[1])
