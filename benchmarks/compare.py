"""The main job: softmax cross-entropy vs AS-Softmax vs AS-Speed (+ skipping).

Trains the same model with the same seeds and budget once per method: Keras's
`SparseCategoricalCrossentropy`; `SparseASSoftmaxCrossentropy`; the same AS
loss with `AdaptiveModel` (AS-Speed: gradient accumulation); AS-Softmax +
skipping (`AdaptiveModel(max_accumulation_steps=1, skip_masked=True)`: only
the samples the loss does not mask are back-propagated); AS-Speed + auto
skipping (`skip_masked="auto"`: skipping while it measures cheaper); and
AS-Speed + buffer skipping (`skip_masked="buffer"`: the unmasked samples of
several batches in one pass per update). AS-Speed + skipping
(`skip_masked=True` with AS-Speed's window) runs only when `--methods`
names it. `--baselines` adds Keras's label smoothing and focal loss,
sparsemax, 1.5-entmax and top-k softmax. Prints a line per epoch, then a
table (best validation accuracy, epoch of the best, steady-state ms per
batch and its speedup over AS-Softmax, wall time, time to the target and
how many seeds reach it, optimizer updates, final masked ratio, backward
fraction; mean ± std over seeds; the target is 99.5 % of softmax CE's best
validation accuracy in the same seed) and saves a plot. Uses the GPU when
the backend sees one.

Data sets (`--dataset`), each an example's data and model, with their
default budgets (`--epochs`, `--batch-size`, `--train-size` override them):
  fashion_mnist  Fashion-MNIST, small CNN (examples/fashion_mnist.py): the
                 first 1000 training images, 10 epochs, batch 128, the first
                 1000 test images validate (default)
  digits         scikit-learn's bundled 8x8 digits, small CNN
                 (examples/digits.py): 30 epochs, batch 32
  wordnet        WordNet glosses -> 45 lexicographer classes
                 (examples/wordnet_text.py): 30 epochs, batch 32

    python -m benchmarks.compare [--dataset fashion_mnist] [--backend jax]
        [--seeds 3] [--epochs N] [--batch-size N] [--train-size N]
        [--delta 0.1] [--baselines] [--max-accumulation-steps 2]
"""

from benchmarks import comparison  # First: reads `--backend` before Keras loads.

from benchmarks import tables
from examples import datasets
from examples import digits
from examples import fashion_mnist
from examples import wordnet_text

# `--dataset`: the example whose `task(*load_data(quick, train_size))` it is.
EXAMPLES = {"digits": digits, "fashion_mnist": fashion_mnist, "wordnet": wordnet_text}


# `--dataset`'s budget unless the command line gives one: epochs, batch
# size, training samples (None: all); and the validation samples (None: all).
BUDGETS = {"fashion_mnist": (10, 128, 1000, 1000), "digits": (30, 32, None, None),
           "wordnet": (30, 32, None, None)}


def parser(description=__doc__):
    """The comparison's command line with `--dataset`, every skipping
    setting compared."""
    parser = comparison.parser(description, epochs=None, batch_size=None)
    parser.add_argument("--dataset", default="fashion_mnist", choices=tuple(EXAMPLES))
    # `skip_masked=True` with AS-Speed's window only by `--methods`: the
    # buffer is AS-Speed's skipping mode, window 1 the per-batch one.
    parser.set_defaults(skipping_settings=True, left_out=(tables.AS_SKIPPING,))
    return parser


def parse_args(parser):
    """`comparison.parse_args`, with `--dataset`'s budget where the command
    line gives none."""
    args = comparison.parse_args(parser)
    epochs, batch_size, train_size, _ = BUDGETS[args.dataset]
    args.epochs = args.epochs or epochs
    args.batch_size = args.batch_size or batch_size
    if not args.quick:
        args.train_size = args.train_size or train_size
    return args


def task(args):
    """The task of `--dataset`, with `--quick`, `--train-size` and the
    budget's validation samples applied."""
    example = EXAMPLES[args.dataset]
    # (WordNet's data also gives its vocabulary, which its task takes.)
    train, validation, *rest = example.load_data(args.quick, args.train_size)
    if not args.quick:
        validation = datasets.first(validation, BUDGETS[args.dataset][3])
    return example.task(train, validation, *rest)


if __name__ == "__main__":
    args = parse_args(parser())
    comparison.main(task(args), args)
