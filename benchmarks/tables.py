"""The comparison's numbers and its markdown table.

A run is the record `benchmarks.comparison.train_once` returns: per epoch its
logs, fit seconds, training seconds and optimizer updates. From the runs of
every method and seed this module computes the columns (best validation
metric, steady-state ms per batch, compilation, time to the target, ...) as
`mean ± std` over the seeds, and prints them as a markdown table.
"""

import keras
import numpy as np

from benchmarks.startup import device_description

AS_SOFTMAX = "AS-Softmax"
AS_SPEED = "AS-Speed"
AS_SKIPPING = "AS-Speed + skipping"
# The main job's and `benchmarks.as_speed`'s further skipping settings.
AS_SOFTMAX_SKIPPING = "AS-Softmax + skipping"
AS_AUTO_SKIPPING = "AS-Speed + auto skipping"
AS_BUFFER_SKIPPING = "AS-Speed + buffer skipping"
# `benchmarks.as_speed`'s pruning rows (`--prune-masked`).
AS_PRUNING = "AS-Speed + pruning"
AS_PRUNING_SKIPPING = "AS-Speed + pruning + skipping"
# Window 1: pruning's own effect against AS-Softmax (AS-Speed's windows halve
# the updates).
AS_SOFTMAX_PRUNING = "AS-Softmax + pruning"
AS_SOFTMAX_PRUNING_SKIPPING = "AS-Softmax + pruning + skipping"
# The buffer's window: at 75-90 % masked its stretches span 4-10 batches.
BUFFER_WINDOW = 8
# The target: this fraction of the reference method's best validation metric.
TARGET_FRACTION = 0.995


def mean_spread(values, fmt):
    """`mean ± std` over seeds, or `-` when there is nothing to report."""
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:{fmt}}"
    return f"{np.mean(values):{fmt}} ± {np.std(values):{fmt}}"


def _steady_seconds(run, epochs=None):
    """Median training seconds of `epochs` (indices; default every epoch
    after the first, which compiles), or None when there is none."""
    if epochs is None:
        epochs = range(1, len(run["rows"]))
    seconds = [run["rows"][i]["train_seconds"] for i in epochs]
    return float(np.median(seconds)) if seconds else None


def ms_per_batch(run, epochs=None):
    """Steady-state ms per training batch of one run: an epoch's training
    seconds per batch, median over `epochs` (as in `_steady_seconds`)."""
    seconds = _steady_seconds(run, epochs)
    return None if seconds is None else 1000 * seconds / run["steps_per_epoch"]


def compile_seconds(run):
    """First epoch's training seconds minus a steady epoch's: compilation
    and warm-up."""
    steady = _steady_seconds(run)
    return None if steady is None else run["rows"][0]["train_seconds"] - steady


def time_to_target(run, target):
    """Fit seconds until the end of the first epoch whose validation metric
    reaches `target`; None if none does."""
    for row in run["rows"]:
        if row[run["monitor"]] >= target:
            return row["seconds"]
    return None


def target_per_seed(methods, results):
    """`(reference name, [target per seed])`: `TARGET_FRACTION` of the
    reference method's best validation metric in each seed."""
    reference = next(method.name for method in methods if method.reference)
    return reference, [TARGET_FRACTION * run["best"] for run in results[reference]]


def _ratios(numerators, denominators):
    """Per seed `numerator / denominator`, None where either is missing."""
    return [
        None if a is None or not b else a / b
        for a, b in zip(numerators, denominators)
    ]


# What the less obvious columns of `summary` mean, printed under a table.
COLUMN_NOTES = {
    "ms/batch": "steady-state training time per batch: an epoch's training "
    "time (validation left out) / its batches, median over the epochs after "
    "the first",
    "speedup": f"{AS_SOFTMAX}'s ms/batch / this method's, per seed",
    "compile s": "first epoch's training time minus a steady epoch's "
    "(compilation and warm-up)",
    "wall s": "fit time, compilation and validation included",
    "s to target": "fit seconds until the end of the first epoch that reaches "
    "the target, over the seeds that reach it",
    "reached": "seeds that reach the target",
    "to-target speedup": "the reference's s to target / this method's, per seed",
    "final masked": "fraction of training samples whose AS-Softmax loss is 0 "
    "after training (the sample is already learned)",
    "backward": "mean over the epochs of the fraction of each batch's samples "
    "back-propagated (skipping methods only)",
    "pruned": "mean over the epochs of the fraction of the training samples "
    "left out (pruning methods only; their ms/batch is an epoch's time over "
    "the full data's batches)",
    "forgetting": "mean over the epochs after the first of the share of the "
    "previously masked samples an epoch kept that needed a gradient again",
}


def summary(methods, results):
    """`{method name: {column: cell}}`: every column the tables can show,
    each cell `mean ± std` over the seeds."""
    reference, target = target_per_seed(methods, results)
    base_ms = [ms_per_batch(run) for run in results[AS_SOFTMAX]]
    base_time = [time_to_target(run, t) for run, t in zip(results[reference], target)]
    cells = {}
    for name, runs in results.items():
        ms = [ms_per_batch(run) for run in runs]
        to_target = [time_to_target(run, t) for run, t in zip(runs, target)]
        cells[name] = {
            "best": mean_spread([r["best"] for r in runs], ".4f"),
            "epoch of best": mean_spread([r["best_epoch"] for r in runs], ".1f"),
            "ms/batch": mean_spread(ms, ".2f"),
            "speedup": mean_spread(_ratios(base_ms, ms), ".2f"),
            "compile s": mean_spread([compile_seconds(r) for r in runs], ".1f"),
            "wall s": mean_spread([r["seconds"] for r in runs], ".1f"),
            "s to target": mean_spread(to_target, ".1f"),
            "reached": f"{sum(t is not None for t in to_target)}/{len(runs)}",
            "to-target speedup": mean_spread(_ratios(base_time, to_target), ".2f"),
            "updates": mean_spread([r["updates"] for r in runs], ".0f"),
            "final masked": mean_spread([r["masked"] for r in runs], ".1%"),
            "backward": mean_spread([r["backward"] for r in runs], ".2f"),
            "pruned": mean_spread([r.get("pruned") for r in runs], ".2f"),
            "forgetting": mean_spread([r.get("forgetting") for r in runs], ".3f"),
        }
    return cells


def markdown_table(header, rows):
    """The lines of a markdown table, padded so that its columns line up;
    the first column is aligned left, the others right."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows)]

    def line(cells):
        padded = [f"{cells[0]:<{widths[0]}}"]
        padded += [f"{cell:>{width}}" for cell, width in zip(cells[1:], widths[1:])]
        return "| " + " | ".join(padded) + " |"

    rule = "|" + "|".join(
        "-" * (w + 2) if i == 0 else "-" * (w + 1) + ":" for i, w in enumerate(widths)
    ) + "|"
    return [line(header), rule, *(line([str(c) for c in row]) for row in rows)]


TABLE_COLUMNS = ("best", "epoch of best", "ms/batch", "speedup", "wall s",
                 "s to target", "reached", "updates", "final masked", "backward")


def print_table(task, methods, results, args, columns=TABLE_COLUMNS):
    """Prints a markdown table of `columns` (keys of `summary`'s cells), one row
    per method, mean ± std over the seeds; then the target and what the
    columns mean."""
    monitor = next(iter(results.values()))[0]["monitor"]
    print(
        f"\n{task.title}; backend {keras.backend.backend()} on {device_description()}; "
        f"{args.seeds} seed(s), {args.epochs} epochs, batch {args.batch_size}, "
        f"delta {args.delta}, max accumulation steps {args.max_accumulation_steps}; "
        "mean ± std over seeds"
    )
    cells = summary(methods, results)
    header = ["method", *(f"best {monitor}" if c == "best" else c for c in columns)]
    rows = [[name, *(row[c] for c in columns)] for name, row in cells.items()]
    print("\n".join(markdown_table(header, rows)))
    reference, target = target_per_seed(methods, results)
    print(
        f"target: {TARGET_FRACTION:.1%} of {reference}'s best {monitor} in the same "
        f"seed ({mean_spread(target, '.4f')})"
    )
    for column in columns:
        if column in COLUMN_NOTES:
            print(f"{column}: {COLUMN_NOTES[column]}.")
