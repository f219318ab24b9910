"""Fashion-MNIST, small CNN: softmax vs AS-Softmax vs AS-Speed (+ skipping).

Trains the same CNN (two convolution blocks, one hidden dense layer) with the
same seeds and budget once per method (softmax CE, AS-Softmax, AS-Speed,
AS-Speed + skipping), and reports best test accuracy (the 10000 test images
serve as validation), its epoch, steady-state ms per batch, wall time and
time to the target, optimizer updates, the final masked ratio and the
backward fraction; saves `fashion_mnist.png`.

Data: `keras.datasets.fashion_mnist` when online, else Debian's
`dataset-fashion-mnist` (`apt-get install dataset-fashion-mnist`).

    python examples/fashion_mnist.py [--backend jax] [--seeds 3] [--epochs 15]
    python examples/fashion_mnist.py --quick      # 2000 images, CPU smoke test
"""

import harness  # First: `--backend` must be read before Keras loads.

import keras

import datasets


def task(quick=False):
    """The Fashion-MNIST task (a 2000/500 slice when `quick`)."""
    train, test = datasets.fashion_mnist()
    if quick:
        train = tuple(a[:2000] for a in train)
        test = tuple(a[:500] for a in test)

    def build(seed):
        inputs = keras.Input((28, 28, 1))
        h = keras.layers.Conv2D(32, 3, activation="relu")(inputs)
        h = keras.layers.MaxPooling2D()(h)
        h = keras.layers.Conv2D(64, 3, activation="relu")(h)
        h = keras.layers.MaxPooling2D()(h)
        h = keras.layers.Flatten()(h)
        h = keras.layers.Dropout(0.3)(h)
        h = keras.layers.Dense(128, activation="relu")(h)
        return inputs, keras.layers.Dense(10)(h)

    return harness.Task(
        name="fashion_mnist",
        title="Fashion-MNIST, small CNN",
        kind="single",
        train=train,
        validation=test,
        build=build,
        metrics=harness.accuracy,
        num_classes=10,
    )


if __name__ == "__main__":
    args = harness.parser(__doc__, epochs=15, batch_size=128).parse_args()
    harness.main(task, args)
