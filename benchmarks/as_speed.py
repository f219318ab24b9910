"""AS-Speed on real data: ms per batch, and time to a target accuracy.

Trains an example's model (`--dataset digits`, the main job's small CNN on
scikit-learn's bundled digits; `fashion_mnist`; `wordnet`) with softmax
cross-entropy, AS-Softmax, AS-Speed (`AdaptiveModel`: gradient accumulation)
and AS-Speed + skipping (`AdaptiveModel(skip_masked=True)`: only the samples
the loss does not mask are back-propagated), for several seeds, through the
examples' harness (`examples/harness.py`): the same models, training, timing
and target as the examples. Within a seed the methods train one after
another, their order rotated by one per seed, so that they see the same
machine load.

The first table gives, per method, mean ± std over seeds: steady-state ms per
batch and its speedup over AS-Softmax, the compilation overhead (first
epoch's training time minus a steady epoch's), the time to the target (99.5 %
of softmax CE's best validation accuracy in the same seed), how many seeds
reach it and the time-to-target speedup over softmax CE, the best validation
accuracy, optimizer updates and the backward fraction. The second gives, per
seed, ms per batch of AS-Softmax and of AS-Speed + skipping in the epochs
(after the first) where AS-Speed + skipping masks at least `--steady-masked`
(75 %) of its training samples, and their ratio. Both tables are markdown,
followed by the command that reproduces them; the examples' plot is saved
too (`--plot`, by default `<task name>.png` here).

    python benchmarks/as_speed.py --backend jax [--dataset digits] [--seeds 3] [--quick]
"""

import os
import platform
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))), "examples"))
import harness  # noqa: E402  First: `--backend` must be read before Keras loads.

import keras  # noqa: E402
import numpy as np  # noqa: E402

import compare  # noqa: E402  (examples/compare.py: the tasks of `--dataset`)

COLUMNS = ("ms/batch", "speedup", "compile s", "s to target", "reached",
           "to-target speedup", "best", "updates", "backward")


def masked_epochs(run, threshold):
    """Indices of the epochs after the first whose training masked ratio is
    at least `threshold`."""
    return [
        i for i, row in enumerate(run["rows"])
        if i > 0 and row["masked_ratio"] >= threshold
    ]


def print_masked_table(results, threshold):
    """Per seed: ms per batch of AS-Softmax and AS-Speed + skipping in the
    epochs where AS-Speed + skipping masks at least `threshold`."""
    print(
        f"\nms per batch once AS-Speed + skipping masks >= {threshold:.0%} of its "
        "training samples (epochs after the first; AS-Softmax back-propagates "
        "every sample, whatever it masks)"
    )
    rows, ratios = [], []
    pairs = zip(results[harness.AS_SOFTMAX], results[harness.AS_SKIPPING])
    for seed, (plain, skipping) in enumerate(pairs):
        epochs = masked_epochs(skipping, threshold)
        if not epochs:
            rows.append([seed, 0, "-", "-", "-", "-", "-"])
            continue
        plain_ms = harness.ms_per_batch(plain, epochs)
        skipping_ms = harness.ms_per_batch(skipping, epochs)
        ratios.append(plain_ms / skipping_ms)
        picked = [skipping["rows"][i] for i in epochs]
        rows.append([
            seed,
            len(epochs),
            f"{np.mean([row['masked_ratio'] for row in picked]):.1%}",
            f"{np.mean([row['backward_fraction'] for row in picked]):.2f}",
            f"{plain_ms:.2f}",
            f"{skipping_ms:.2f}",
            f"{ratios[-1]:.2f}",
        ])
    header = ["seed", "epochs", "masked", "backward", f"{harness.AS_SOFTMAX} ms/batch",
              f"{harness.AS_SKIPPING} ms/batch", "ratio"]
    print("\n".join(harness.markdown_table(header, rows)))
    print(f"ratio ({harness.AS_SOFTMAX} / {harness.AS_SKIPPING}), mean ± std over "
          f"the seeds that have such epochs: {harness.mean_spread(ratios, '.2f')}")


def command(args):
    """The command line that reproduces this run."""
    budget = ["--quick"] if args.quick else [f"--seeds {args.seeds}",
                                             f"--epochs {args.epochs}"]
    return " ".join([
        "python benchmarks/as_speed.py",
        f"--backend {keras.backend.backend()}",
        f"--dataset {args.dataset}",
        *budget,
        f"--batch-size {args.batch_size}",
        f"--delta {args.delta}",
        f"--max-accumulation-steps {args.max_accumulation_steps}",
        f"--steady-masked {args.steady_masked}",
        *([f"--train-size {args.train_size}"] if args.train_size else []),
        *(["--baselines"] if args.baselines else []),
    ])


def main():
    parser = harness.parser(__doc__, epochs=30, batch_size=32)
    parser.add_argument("--dataset", default="digits", choices=tuple(compare.TASKS))
    parser.add_argument("--steady-masked", type=float, default=0.75,
                        help="the masked ratio from which the second table "
                        "measures (default 0.75)")
    args = parser.parse_args()
    task, methods = harness.prepare(compare.TASKS[args.dataset], args)
    results = harness.train_all(task, methods, args)
    print(
        f"\nmachine: {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs; keras {keras.__version__}"
    )
    harness.report(task, methods, results, args, COLUMNS)
    print_masked_table(results, args.steady_masked)
    print(f"\nreproduce: {command(args)}")


if __name__ == "__main__":
    main()
