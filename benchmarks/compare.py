"""The main job: softmax cross-entropy vs AS-Softmax vs AS-Speed (+ skipping).

Trains the same model with the same seeds and budget once per method: Keras's
`SparseCategoricalCrossentropy`; `SparseASSoftmaxCrossentropy`; the same AS
loss with `AdaptiveModel` (AS-Speed: gradient accumulation); and with
`AdaptiveModel(skip_masked=True)` (AS-Speed + skipping: only the samples the
loss does not mask are back-propagated). `--baselines` adds Keras's label
smoothing and focal loss, sparsemax, 1.5-entmax and top-k softmax. Prints a
line per epoch, then a table (best validation accuracy, epoch of the best,
steady-state ms per batch and its speedup over AS-Softmax, wall time, time to
the target and how many seeds reach it, optimizer updates, final masked
ratio, backward fraction; mean ± std over seeds; the target is 99.5 % of
softmax CE's best validation accuracy in the same seed) and saves a plot.
Uses the GPU when the backend sees one.

Data sets (`--dataset`), each an example's data and model:
  digits         scikit-learn's bundled 8x8 digits, small CNN (default; a few
                 minutes on a CPU; examples/digits.py)
  fashion_mnist  Fashion-MNIST, small CNN (examples/fashion_mnist.py)
  wordnet        WordNet glosses -> 45 lexicographer classes
                 (examples/wordnet_text.py)

    python -m benchmarks.compare [--dataset digits] [--backend jax] [--seeds 3]
        [--epochs 30] [--batch-size 32] [--delta 0.1] [--baselines]
        [--max-accumulation-steps 2]
"""

from benchmarks import comparison  # First: reads `--backend` before Keras loads.

from examples import digits
from examples import fashion_mnist
from examples import wordnet_text

# `--dataset`: the example whose `task(*load_data(quick, train_size))` it is.
EXAMPLES = {"digits": digits, "fashion_mnist": fashion_mnist, "wordnet": wordnet_text}


def parser(description=__doc__):
    """The comparison's command line with `--dataset`."""
    parser = comparison.parser(description, epochs=30, batch_size=32)
    parser.add_argument("--dataset", default="digits", choices=tuple(EXAMPLES))
    return parser


def task(args):
    """The task of `--dataset`, with `--quick` and `--train-size` applied."""
    example = EXAMPLES[args.dataset]
    return example.task(*example.load_data(args.quick, args.train_size))


if __name__ == "__main__":
    args = comparison.parse_args(parser())
    comparison.main(task(args), args)
