"""AS-Speed on real data: ms per batch, and time to a target accuracy.

Trains an example's model (`--dataset digits`, the main job's small CNN on
scikit-learn's bundled digits; `fashion_mnist`; `wordnet`) with softmax
cross-entropy, AS-Softmax, AS-Speed (`AdaptiveModel`: gradient accumulation),
AS-Speed + skipping (`AdaptiveModel(skip_masked=True)`: only the samples
the loss does not mask are back-propagated; the further skipping settings)
and AS-Speed + pruning and AS-Softmax + pruning (window 1), alone and with
skipping (`--prune-masked`, 0.5 by default: `AdaptiveModel(prune_masked=...)`
leaves out that fraction of the samples masked when last seen), for several
seeds, through the comparison (`benchmarks.comparison`): the same models, training, timing and
target as the main job and the examples. Within a seed the methods train
one after another, their order rotated by one per seed, so that they see
the same machine load.

The first table gives, per method, mean ± std over seeds: steady-state ms per
batch and its speedup over AS-Softmax, the compilation overhead (first
epoch's training time minus a steady epoch's), the time to the target (99.5 %
of softmax CE's best validation accuracy in the same seed), how many seeds
reach it and the time-to-target speedup over softmax CE, the best validation
accuracy, optimizer updates, the backward fraction, and the pruning rows'
pruned fraction and forgetting rate. The next ones give, per
seed, ms per batch of AS-Softmax and of AS-Speed + skipping (then of each
pruning + skipping method) in the epochs (after the first) where that method masks
at least `--steady-masked` (75 %) of its training samples (with pruning, the
left out ones count as masked: they were when last seen), and their ratio.
`--methods` runs some of the methods only. The tables are markdown,
followed by the command that reproduces them; the examples' plot is saved
too (`--plot`, by default `<task name>.png` here).

    python -m benchmarks.as_speed --backend jax [--dataset digits] [--seeds 3] [--quick]
        [--prune-masked 0.5]
"""

from benchmarks import comparison  # First: reads `--backend` before Keras loads.

import os  # noqa: E402
import platform  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks import compare  # noqa: E402  (the tasks of `--dataset`)
from benchmarks import tables  # noqa: E402

COLUMNS = ("ms/batch", "speedup", "compile s", "s to target", "reached",
           "to-target speedup", "best", "updates", "backward", "pruned", "forgetting")


def masked_fraction(row):
    """The fraction of the training samples masked in an epoch: those the
    loss masked, plus, with pruning, those left out (masked when last seen)."""
    pruned = row.get("pruned_fraction", 0.0)
    return pruned + (1.0 - pruned) * row["masked_ratio"]


def masked_epochs(run, threshold):
    """Indices of the epochs after the first whose training samples are at
    least `threshold` masked (`masked_fraction`)."""
    return [
        i for i, row in enumerate(run["rows"])
        if i > 0 and masked_fraction(row) >= threshold
    ]


def print_masked_table(results, threshold, method):
    """Per seed: ms per batch of AS-Softmax and of `method` (a skipping
    method) in the epochs where `method` masks at least `threshold`."""
    print(
        f"\nms per batch once {method} masks >= {threshold:.0%} of its "
        "training samples (epochs after the first; AS-Softmax back-propagates "
        "every sample, whatever it masks)"
    )
    rows, ratios = [], []
    pairs = zip(results[tables.AS_SOFTMAX], results[method])
    for seed, (plain, skipping) in enumerate(pairs):
        epochs = masked_epochs(skipping, threshold)
        if not epochs:
            rows.append([seed, 0, "-", "-", "-", "-", "-"])
            continue
        plain_ms = tables.ms_per_batch(plain, epochs)
        skipping_ms = tables.ms_per_batch(skipping, epochs)
        ratios.append(plain_ms / skipping_ms)
        picked = [skipping["rows"][i] for i in epochs]
        rows.append([
            seed,
            len(epochs),
            f"{np.mean([masked_fraction(row) for row in picked]):.1%}",
            f"{np.mean([row['backward_fraction'] for row in picked]):.2f}",
            f"{plain_ms:.2f}",
            f"{skipping_ms:.2f}",
            f"{ratios[-1]:.2f}",
        ])
    header = ["seed", "epochs", "masked", "backward", f"{tables.AS_SOFTMAX} ms/batch",
              f"{method} ms/batch", "ratio"]
    print("\n".join(tables.markdown_table(header, rows)))
    print(f"ratio ({tables.AS_SOFTMAX} / {method}), mean ± std over "
          f"the seeds that have such epochs: {tables.mean_spread(ratios, '.2f')}")


def command(args):
    """The command line that reproduces this run."""
    budget = ["--quick"] if args.quick else [f"--seeds {args.seeds}",
                                             f"--epochs {args.epochs}"]
    return " ".join([
        "python -m benchmarks.as_speed",
        f"--backend {keras.backend.backend()}",
        f"--dataset {args.dataset}",
        *budget,
        f"--batch-size {args.batch_size}",
        f"--delta {args.delta}",
        f"--max-accumulation-steps {args.max_accumulation_steps}",
        f"--steady-masked {args.steady_masked}",
        f"--prune-masked {args.prune_masked}",
        *([f"--train-size {args.train_size}"] if args.train_size else []),
        *(["--baselines"] if args.baselines else []),
        *([f"--methods '{args.methods}'"] if args.methods else []),
    ])


def main():
    parser = compare.parser(__doc__)
    parser.add_argument("--steady-masked", type=float, default=0.75,
                        help="the masked ratio from which the second table "
                        "measures (default 0.75)")
    parser.add_argument("--prune-masked", type=float, default=0.5,
                        help="adds AS-Speed + pruning rows, alone and with "
                        "skipping, leaving out this fraction of the samples "
                        "masked when last seen (default 0.5; 0: no such rows)")
    args = compare.parse_args(parser)
    task = compare.task(args)
    methods = comparison.prepare(task, args)
    results = comparison.train_all(task, methods, args)
    print(
        f"\nmachine: {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs; keras {keras.__version__}"
    )
    comparison.report(task, methods, results, args, COLUMNS)
    for method in (tables.AS_SKIPPING, tables.AS_PRUNING_SKIPPING,
                   tables.AS_SOFTMAX_PRUNING_SKIPPING):
        if tables.AS_SOFTMAX in results and method in results:
            print_masked_table(results, args.steady_masked, method)
    print(f"\nreproduce: {command(args)}")


if __name__ == "__main__":
    main()
