"""The main job: softmax cross-entropy vs AS-Softmax vs AS-Speed (+ skipping).

Trains the same model with the same seeds and budget once per method: Keras's
`SparseCategoricalCrossentropy`; `SparseASSoftmaxCrossentropy`; the same AS
loss with `AdaptiveModel` (AS-Speed: gradient accumulation); and with
`AdaptiveModel(skip_masked=True)` (AS-Speed + skipping: only the samples the
loss does not mask are back-propagated). `--baselines` adds Keras's label
smoothing and focal loss. Prints a line per epoch, then a table (best
validation accuracy, epoch of the best, steady-state ms per batch and its
speedup over AS-Softmax, wall time, time to the target and how many seeds
reach it, optimizer updates, final masked ratio, backward fraction; mean ±
std over seeds; the target is 99.5 % of softmax CE's best validation accuracy
in the same seed) and saves a plot. Uses the GPU when the backend sees one.

Data sets (`--dataset`):
  digits         scikit-learn's bundled 8x8 digits, small CNN (default; a few
                 minutes on a CPU)
  fashion_mnist  Fashion-MNIST, small CNN (examples/fashion_mnist.py)
  wordnet        WordNet glosses -> 45 lexicographer classes
                 (examples/wordnet_text.py)

    python examples/compare.py [--dataset digits] [--backend jax] [--seeds 3]
        [--epochs 30] [--batch-size 32] [--delta 0.1] [--baselines]
        [--max-accumulation-steps 2]
"""

import harness  # First: `--backend` must be read before Keras loads.

import keras

import datasets
import fashion_mnist
import wordnet_text


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


TASKS = {
    "digits": digits_task,
    "fashion_mnist": fashion_mnist.task,
    "wordnet": wordnet_text.task,
}


def main():
    parser = harness.parser(__doc__, epochs=30, batch_size=32)
    parser.add_argument("--dataset", default="digits", choices=tuple(TASKS))
    args = parser.parse_args()
    harness.main(TASKS[args.dataset], args)


if __name__ == "__main__":
    main()
