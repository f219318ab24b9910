"""Fashion-MNIST, small CNN: AS-Softmax, then softmax vs AS-Softmax vs AS-Speed.

60000 training images of clothes (28x28, 10 classes); the 10000 test images
serve as validation. The model, two convolution blocks, dropout and one
hidden dense layer, trains once with AS-Speed + skipping, as any Keras model
trains; then the comparison trains it with the same seeds and budget with softmax
CE, AS-Softmax, AS-Speed and AS-Speed + skipping, and reports best test
accuracy, its epoch, steady-state ms per batch, wall time and time to the
target, optimizer updates, the final masked ratio and the backward
fraction; it saves `fashion_mnist.png`.

Data: `keras.datasets.fashion_mnist` when online, else Debian's
`dataset-fashion-mnist` (`apt-get install dataset-fashion-mnist`).

    python -m examples.fashion_mnist [--backend jax] [--seeds 3] [--epochs 15]
    python -m examples.fashion_mnist --quick      # 2000 images, CPU smoke test
"""

from benchmarks import comparison  # First: reads `--backend` before Keras loads.

import keras

import keras_as_softmax
from examples import datasets
from keras_as_softmax import SparseASSoftmaxCrossentropy


def load_data(quick=False, train_size=None):
    """`(x_train, y_train), (x_test, y_test)`: 28x28x1 images in [0, 1] and
    their class ids (2000 / 500 when `quick`; `train_size`: the first N)."""
    train, test = datasets.fashion_mnist()
    if quick:
        train, test = datasets.first(train, 2000), datasets.first(test, 500)
    return datasets.first(train, train_size), test


def build_model():
    """Two convolution blocks, dropout, a hidden dense layer; 10 logits."""
    inputs = keras.Input((28, 28, 1))
    h = keras.layers.Conv2D(32, 3, activation="relu")(inputs)
    h = keras.layers.MaxPooling2D()(h)
    h = keras.layers.Conv2D(64, 3, activation="relu")(h)
    h = keras.layers.MaxPooling2D()(h)
    h = keras.layers.Flatten()(h)
    h = keras.layers.Dropout(0.3)(h)
    h = keras.layers.Dense(128, activation="relu")(h)
    return keras.Model(inputs, keras.layers.Dense(10)(h))


def task(train, test):
    """This example as the comparison's task (the test images validate)."""
    return comparison.Task("fashion_mnist", "Fashion-MNIST, small CNN", train, test,
                           build=build_model, num_classes=10)


if __name__ == "__main__":
    args = comparison.parse_args(comparison.parser(__doc__, epochs=15, batch_size=128))
    (x_train, y_train), (x_test, y_test) = load_data(args.quick, args.train_size)

    # AS-Speed + skipping: `adaptive` makes the model an `AdaptiveModel` in
    # place, which back-propagates only the samples the loss does not mask.
    keras.utils.set_random_seed(0)
    model = keras_as_softmax.adaptive(
        build_model(), max_accumulation_steps=args.max_accumulation_steps, skip_masked=True)
    model.compile(optimizer="adam", loss=SparseASSoftmaxCrossentropy(delta=args.delta),
                  metrics=["accuracy"])
    logs = model.fit(x_train, y_train, batch_size=args.batch_size, epochs=args.epochs,
                     verbose=2).history
    accuracy = model.evaluate(x_test, y_test, verbose=0, return_dict=True)["accuracy"]
    print(f"AS-Speed + skipping: test accuracy {accuracy:.4f} after {args.epochs} epochs; "
          f"last epoch: {logs['masked_ratio'][-1]:.0%} masked, "
          f"{logs['backward_fraction'][-1]:.0%} back-propagated\n")

    # The comparison: the same model, seeds and budget with each method.
    comparison.main(task((x_train, y_train), (x_test, y_test)), args)
