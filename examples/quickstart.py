"""Quickstart: softmax cross-entropy vs AS-Softmax on scikit-learn's digits.

Trains the same small MLP, with the same seed and budget, once with Keras's
`SparseCategoricalCrossentropy` and once with `SparseASSoftmaxCrossentropy`,
and prints a table. Runs in well under a minute on a CPU.

    python examples/quickstart.py [--epochs 30] [--delta 0.1] [--seed 0]
"""

import argparse
import time

import keras
import numpy as np

from keras_as_softmax import SparseASSoftmaxCrossentropy
from keras_as_softmax import sparse_as_softmax_mask


def load_digits_split(seed):
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise SystemExit(
            "This example needs scikit-learn: pip install scikit-learn"
        )
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype("float32")
    order = np.random.default_rng(seed).permutation(len(x))
    x, y = x[order], y[order].astype("int32")
    split = int(0.8 * len(x))
    return (x[:split], y[:split]), (x[split:], y[split:])


def build_model(seed):
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.Input((64,)),
            keras.layers.Dense(128, activation="relu"),
            keras.layers.Dense(10),
        ]
    )


def train(name, loss, data, epochs, seed):
    (x_train, y_train), (x_val, y_val) = data
    model = build_model(seed)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=loss,
        metrics=["sparse_categorical_accuracy"],
    )
    start = time.perf_counter()
    history = model.fit(
        x_train,
        y_train,
        batch_size=32,
        epochs=epochs,
        validation_data=(x_val, y_val),
        verbose=0,
    )
    seconds = time.perf_counter() - start
    val_acc = history.history["val_sparse_categorical_accuracy"]
    best = int(np.argmax(val_acc))
    print(f"  {name}: best val acc {val_acc[best]:.4f} at epoch {best + 1}")
    return model, val_acc[best], best + 1, seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--delta", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    data = load_digits_split(args.seed)
    print(f"Backend: {keras.backend.backend()}; digits, {args.epochs} epochs")
    runs = {
        "softmax CE": keras.losses.SparseCategoricalCrossentropy(
            from_logits=True
        ),
        f"AS-Softmax d={args.delta}": SparseASSoftmaxCrossentropy(
            delta=args.delta
        ),
    }
    rows = []
    for name, loss in runs.items():
        model, acc, epoch, seconds = train(name, loss, data, args.epochs, args.seed)
        x_train, y_train = data[0]
        logits = model.predict(x_train, verbose=0)
        _, masked, counted = sparse_as_softmax_mask(
            y_train, logits, delta=args.delta
        )
        rows.append((name, acc, epoch, seconds, int(masked) / int(counted)))

    print()
    print(f"{'loss':<20} {'best val acc':>12} {'epoch':>6} {'time s':>7} "
          f"{'masked':>7}")
    for name, acc, epoch, seconds, masked_ratio in rows:
        print(f"{name:<20} {acc:>12.4f} {epoch:>6d} {seconds:>7.1f} "
              f"{masked_ratio:>7.1%}")
    print("\n'masked': training samples whose AS-Softmax loss is 0 at the end.")


if __name__ == "__main__":
    main()
