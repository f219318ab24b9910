"""Per-batch cost of `AdaptiveModel` against a plain `keras.Model`, same loss.

Both models train with `SparseASSoftmaxCrossentropy` and `jit_compile=True`
on the backend that `KERAS_BACKEND` names. `AdaptiveModel` runs with window 1
(`max_accumulation_steps=1`: an update every batch, so the work is the same
and the difference is AS-Speed's bookkeeping) and with its default maximum 2.
Each configuration trains for several timed epochs after a warm-up epoch; the
table gives the median time per batch and the ratio to the plain model
measured in the same run.

    KERAS_BACKEND=jax python -m benchmarks.adaptive_overhead [--quick]

`--quick` (256 samples, one timed epoch, the MLP only) is a smoke test.
"""

import argparse
import os
import platform
import statistics
import time

import keras
import numpy as np

from keras_as_softmax import AdaptiveModel
from keras_as_softmax import SparseASSoftmaxCrossentropy


class EpochTimer(keras.callbacks.Callback):
    def on_train_begin(self, logs=None):
        self.seconds = []

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self._start)


def build(kind, architecture, max_accumulation_steps=None):
    keras.utils.set_random_seed(0)
    if architecture == "cnn":
        inputs = keras.Input((28, 28, 1))
        h = keras.layers.Conv2D(16, 3, activation="relu")(inputs)
        h = keras.layers.MaxPooling2D()(h)
        h = keras.layers.Conv2D(32, 3, activation="relu")(h)
        h = keras.layers.GlobalAveragePooling2D()(h)
    else:
        inputs = keras.Input((64,))
        h = keras.layers.Dense(128, activation="relu")(inputs)
    outputs = keras.layers.Dense(10)(h)
    if kind == "plain":
        return keras.Model(inputs, outputs)
    return AdaptiveModel(
        inputs, outputs, max_accumulation_steps=max_accumulation_steps
    )


def time_per_batch(model, x, y, batch_size, epochs):
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=SparseASSoftmaxCrossentropy(delta=0.1),
        jit_compile=True,
    )
    timer = EpochTimer()
    model.fit(x, y, batch_size=batch_size, epochs=epochs + 1, verbose=0,
              callbacks=[timer])
    batches = int(np.ceil(len(x) / batch_size))
    return statistics.median(timer.seconds[1:]) / batches  # Epoch 0 compiles.


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tiny run (tests)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=5, help="timed epochs")
    args = parser.parse_args()
    epochs = 1 if args.quick else args.epochs
    num_samples = 256 if args.quick else 8192
    rng = np.random.default_rng(0)
    y = rng.integers(0, 10, num_samples).astype("int32")
    data = {
        "cnn": rng.standard_normal((num_samples, 28, 28, 1)).astype("float32"),
        "mlp": rng.standard_normal((num_samples, 64)).astype("float32"),
    }
    print(
        f"backend {keras.backend.backend()}, keras {keras.__version__}, "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; "
        f"batch {args.batch_size}, {num_samples} samples, jit_compile=True"
    )
    print(f"{'model':<6} {'configuration':<28} {'ms/batch':>9} {'ratio':>7}")
    # The quick mode (a test of this script) leaves out the CNN: compiling
    # its steps takes most of a quick run on PyTorch.
    for architecture in ("mlp",) if args.quick else ("mlp", "cnn"):
        x = data[architecture]
        configurations = [
            ("keras.Model", build("plain", architecture)),
            ("AdaptiveModel, window 1", build("adaptive", architecture, 1)),
            ("AdaptiveModel, max window 2", build("adaptive", architecture, 2)),
        ]
        baseline = None
        for name, model in configurations:
            seconds = time_per_batch(model, x, y, args.batch_size, epochs)
            baseline = baseline or seconds
            print(
                f"{architecture:<6} {name:<28} {1000 * seconds:>9.3f} "
                f"{seconds / baseline:>7.3f}"
            )


if __name__ == "__main__":
    main()
