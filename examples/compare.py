"""The main job: softmax cross-entropy vs AS-Softmax vs AS-Softmax + AS-Speed.

Trains the same model with the same seeds and budget once per loss: Keras's
`SparseCategoricalCrossentropy`, `SparseASSoftmaxCrossentropy`, and the same
AS loss with `AdaptiveModel` (AS-Speed); `--baselines` adds Keras's label
smoothing and focal loss. Prints a line per epoch, then a table (best
validation accuracy, epoch of the best, wall time, optimizer updates, final
masked ratio; mean ± std over seeds) and saves a plot. Uses the GPU when the
backend sees one.

Data sets (`--dataset`):
  digits         scikit-learn's bundled 8x8 digits, small CNN (default; about
                 a minute on a CPU)
  fashion_mnist  Fashion-MNIST, small CNN (examples/fashion_mnist.py)
  wordnet        WordNet glosses -> 45 lexicographer classes
                 (examples/wordnet_text.py)

    python examples/compare.py [--dataset digits] [--backend jax] [--seeds 3]
        [--epochs 30] [--batch-size 32] [--delta 0.1] [--baselines]
"""

import harness  # First: `--backend` must be read before Keras loads.

import keras

import datasets


def digits_task(quick=False):
    """scikit-learn's digits (1437 / 360 images) with a small CNN."""
    train, validation = datasets.digits()
    if quick:
        train, validation = (tuple(a[:400] for a in train),
                             tuple(a[:100] for a in validation))

    def build(seed):
        inputs = keras.Input((8, 8, 1))
        h = keras.layers.Conv2D(32, 3, padding="same", activation="relu")(inputs)
        h = keras.layers.Conv2D(64, 3, padding="same", activation="relu")(h)
        h = keras.layers.MaxPooling2D()(h)
        h = keras.layers.Flatten()(h)
        h = keras.layers.Dense(128, activation="relu")(h)
        return inputs, keras.layers.Dense(10)(h)

    return harness.Task(
        name="digits",
        title="digits (scikit-learn), small CNN",
        kind="single",
        train=train,
        validation=validation,
        build=build,
        metrics=harness.accuracy,
        num_classes=10,
    )


def main():
    parser = harness.parser(__doc__, epochs=30, batch_size=32)
    parser.add_argument("--dataset", default="digits",
                        choices=("digits", "fashion_mnist", "wordnet"))
    args = parser.parse_args()
    if args.dataset == "fashion_mnist":
        import fashion_mnist

        make_task = fashion_mnist.task
    elif args.dataset == "wordnet":
        import wordnet_text

        make_task = wordnet_text.task
    else:
        make_task = digits_task
    harness.main(make_task, args)


if __name__ == "__main__":
    main()
