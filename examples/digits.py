"""Digits, small CNN: AS-Softmax, then softmax vs AS-Softmax vs AS-Speed.

scikit-learn's bundled 8x8 digits (1437 training and 360 validation
images, 10 classes) and a small CNN: the main job's task
(`python -m benchmarks.compare`, which also takes `--dataset`). First the
model trains once with AS-Softmax, as any Keras model trains; then the
comparison trains it with the same seeds and budget with softmax CE,
AS-Softmax, AS-Speed and AS-Speed + skipping, prints a table and saves
`digits.png`. A few minutes on a CPU.

    python -m examples.digits [--backend jax] [--seeds 3] [--epochs 30]
    python -m examples.digits --quick      # 400 images, CPU smoke test
"""

from benchmarks import comparison  # First: reads `--backend` before Keras loads.

import keras

from examples import datasets
from keras_as_softmax import SparseASSoftmaxCrossentropy


def load_data(quick=False, train_size=None):
    """`(x_train, y_train), (x_val, y_val)`: 8x8x1 images in [0, 1] and their
    class ids (400 / 100 images when `quick`; `train_size`: the first N)."""
    train, validation = datasets.digits()
    if quick:
        train, validation = datasets.first(train, 400), datasets.first(validation, 100)
    return datasets.first(train, train_size), validation


def build_model():
    """Two convolutions, max pooling, a hidden dense layer; 10 logits (the
    losses take logits: no softmax)."""
    return keras.Sequential([
        keras.Input((8, 8, 1)),
        keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
        keras.layers.Conv2D(64, 3, padding="same", activation="relu"),
        keras.layers.MaxPooling2D(),
        keras.layers.Flatten(),
        keras.layers.Dense(128, activation="relu"),
        keras.layers.Dense(10),
    ])


def task(train, validation):
    """This example as the comparison's task."""
    return comparison.Task("digits", "digits (scikit-learn), small CNN", train, validation,
                           build=build_model, num_classes=10)


if __name__ == "__main__":
    args = comparison.parse_args(comparison.parser(__doc__, epochs=30, batch_size=32))
    (x_train, y_train), (x_val, y_val) = load_data(args.quick, args.train_size)

    # AS-Softmax: integer class ids, logits.
    keras.utils.set_random_seed(0)
    model = build_model()
    model.compile(optimizer="adam", loss=SparseASSoftmaxCrossentropy(delta=args.delta),
                  metrics=["accuracy"])
    history = model.fit(x_train, y_train, batch_size=args.batch_size, epochs=args.epochs,
                        validation_data=(x_val, y_val), verbose=2)
    best = max(history.history["val_accuracy"])
    print(f"AS-Softmax: best validation accuracy {best:.4f} after {args.epochs} epochs\n")

    # The comparison: the same model, seeds and budget with each method.
    comparison.main(task((x_train, y_train), (x_val, y_val)), args)
