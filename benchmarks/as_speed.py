"""AS-Speed on real data: time and optimizer updates to a target accuracy.

Trains the same small CNN on scikit-learn's bundled digits (8x8 images, 10
classes) with softmax cross-entropy, AS-Softmax, and AS-Softmax + AS-Speed
(`AdaptiveModel`), on the backend that `KERAS_BACKEND` names, for several
seeds. The target is each seed's best softmax validation accuracy; the table
gives, as mean ± standard deviation over seeds, the wall time and optimizer
updates until validation accuracy first reaches it, how many seeds reached
it, and the best validation accuracy.

    KERAS_BACKEND=jax python benchmarks/as_speed.py [--seeds 3] [--quick]
"""

import argparse
import time

import keras
import numpy as np

from keras_as_softmax import AdaptiveModel
from keras_as_softmax import SparseASSoftmaxCrossentropy

METHODS = ("softmax", "AS-Softmax", "AS-Softmax + AS-Speed")


def load_digits_split(seed=0):
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.images / 16.0).astype("float32")[..., None]
    y = digits.target.astype("int32")
    order = np.random.default_rng(seed).permutation(len(x))
    split = int(0.8 * len(x))
    train, val = order[:split], order[split:]
    return (x[train], y[train]), (x[val], y[val])


def build(method, seed, delta):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((8, 8, 1))
    h = keras.layers.Conv2D(32, 3, padding="same", activation="relu")(inputs)
    h = keras.layers.Conv2D(64, 3, padding="same", activation="relu")(h)
    h = keras.layers.MaxPooling2D()(h)
    h = keras.layers.Flatten()(h)
    h = keras.layers.Dense(128, activation="relu")(h)
    outputs = keras.layers.Dense(10)(h)
    if method == "softmax":
        model = keras.Model(inputs, outputs)
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    elif method == "AS-Softmax":
        model = keras.Model(inputs, outputs)
        loss = SparseASSoftmaxCrossentropy(delta=delta)
    else:
        model = AdaptiveModel(inputs, outputs)
        loss = SparseASSoftmaxCrossentropy(delta=delta)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=loss,
        metrics=["sparse_categorical_accuracy"],
        jit_compile=True,
    )
    return model


class Trace(keras.callbacks.Callback):
    """Wall time, optimizer updates and validation accuracy after each epoch."""

    def on_train_begin(self, logs=None):
        self.start = time.perf_counter()
        self.epochs = []

    def on_epoch_end(self, epoch, logs=None):
        self.epochs.append(
            (
                time.perf_counter() - self.start,
                int(self.model.optimizer.iterations.numpy()),
                float(logs["val_sparse_categorical_accuracy"]),
            )
        )


def run(method, seed, args, data):
    (x, y), validation = data
    model = build(method, seed, args.delta)
    trace = Trace()
    model.fit(
        x, y, batch_size=args.batch_size, epochs=args.epochs,
        validation_data=validation, verbose=0, callbacks=[trace],
    )
    return trace.epochs


def to_target(epochs, target):
    for seconds, updates, accuracy in epochs:
        if accuracy >= target - 1e-9:
            return seconds, updates
    return None


def mean_std(values, fmt):
    if not values:
        return "-"
    return f"{np.mean(values):{fmt}} ± {np.std(values):{fmt}}"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--delta", type=float, default=0.1)
    parser.add_argument("--quick", action="store_true", help="a tiny run (tests)")
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.epochs = 1, 2
    data = load_digits_split()
    results = {method: [] for method in METHODS}
    for seed in range(args.seeds):
        for method in METHODS:
            results[method].append(run(method, seed, args, data))
            print(f"seed {seed} {method}: best val acc "
                  f"{max(a for _, _, a in results[method][-1]):.4f}", flush=True)
    print(
        f"\nbackend {keras.backend.backend()}, digits, {args.seeds} seeds, "
        f"{args.epochs} epochs, batch {args.batch_size}, delta {args.delta}; "
        "target: each seed's best softmax validation accuracy"
    )
    header = (f"{'method':<24} {'reached':>7} {'seconds to target':>19} "
              f"{'updates to target':>19} {'best val acc':>16} {'total updates':>15} "
              f"{'total seconds':>15}")
    print(header)
    targets = [max(a for _, _, a in epochs) for epochs in results["softmax"]]
    for method in METHODS:
        reached = [to_target(e, t) for e, t in zip(results[method], targets)]
        reached = [r for r in reached if r is not None]
        best = [max(a for _, _, a in e) for e in results[method]]
        total = [e[-1][1] for e in results[method]]
        seconds = [e[-1][0] for e in results[method]]
        print(
            f"{method:<24} {len(reached):>4}/{args.seeds:<2} "
            f"{mean_std([r[0] for r in reached], '.1f'):>19} "
            f"{mean_std([r[1] for r in reached], '.0f'):>19} "
            f"{mean_std(best, '.4f'):>16} {mean_std(total, '.0f'):>15} "
            f"{mean_std(seconds, '.1f'):>15}"
        )


if __name__ == "__main__":
    main()
